"""A mapping compiled once: every rule of ``lookups:``, ``stock:`` and ``prices:`` parsed, compiled for
streamed rows and transpiled for every dialect (cdc.mapping.rules), and the whole checked (declared
lookups, shop locations of the safety stock, the time zone). A RuleError names the YAML path of the
first problem.

Config validation compiles one; the normalizer evaluates its rules on streamed rows and snapshot_sql
writes them into SELECTs, neither compiles anything itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from cdc.mapping.model import LookupMapping, MappingSpec, PriceMapping, StockMapping
from cdc.mapping.rules import Rule, RuleError, identifier_path
from cdc.sources.registry import plugin_for

STOCK_FIELDS = ("sku", "warehouse", "quantity", "reserved", "filter", "safety_stock_per_sku")
PRICE_FIELDS = ("sku", "price_list", "amount", "currency", "compare_at", "valid_from", "valid_to", "filter")


def table_name(name: str, default_schema: str = "public", dialect: str | None = None,
               path: str = "table") -> str:
    """``schema.table`` of a mapped table, each part as the database stores it; an unqualified name is in
    ``default_schema``. A name written as SQL (``"OITM"``, ``sales."OITM"``, ``oitm``) is read as
    ``dialect`` reads it: quoted parts exactly, unquoted ones folded as the database folds them
    (PostgreSQL: to lower case). A name that is not SQL identifier syntax is taken as written, each
    dot-separated part one name."""
    parts = identifier_path(name, dialect)
    if parts is None:
        return name if "." in name else f"{default_schema}.{name}"
    if len(parts) > 2:
        raise RuleError(f"{path}: {name!r}: write schema.table or table (a database/catalog part is not "
                        f"supported)")
    if any("." in p for p in parts):
        raise RuleError(f"{path}: {name!r}: a table or schema name holding '.' is not supported")
    return ".".join(parts) if len(parts) == 2 else f"{default_schema}.{parts[0]}"


def column_name(name: str, dialect: str | None) -> str:
    """A column named in the config outside rules (``key:``): ``"ItemCode"`` exactly, an unquoted name as
    ``dialect`` folds it, a name that is not SQL identifier syntax as written."""
    parts = identifier_path(name, dialect)
    return parts[0] if parts is not None and len(parts) == 1 else name


def source_dialect(spec: MappingSpec) -> str | None:
    """The sqlglot dialect of the spec's ``source:`` (how its database reads names); None without one."""
    source: Any = getattr(spec, "source", None)
    return None if source is None else plugin_for(source.kind).dialect(source)


def default_schema(spec: MappingSpec) -> str:
    """Where the unqualified tables of a mapping are, as the ``source:`` the spec was loaded with says
    (erpsync's Config is a MappingSpec with a source): the PostgreSQL schema, the MySQL database; a spec
    without a source: ``public``."""
    source: Any = getattr(spec, "source", None)  # one of the registered databases' settings
    if source is None:
        return "public"
    return plugin_for(source.kind).default_schema(source)


class CompiledLookup:
    """``lookups.<name>``: its table (qualified), key column and compiled value / filter rules."""

    __slots__ = ("columns", "filter", "key", "name", "src", "table", "value")

    def __init__(self, name: str, spec: LookupMapping, default_schema: str,
                 dialect: str | None = None) -> None:
        path = f"lookups.{name}"
        self.name, self.key = name, column_name(spec.key, dialect)
        self.table = table_name(spec.table, default_schema, dialect, f"{path}.table")
        self.value = Rule(spec.value, f"{path}.value", dialect)
        self.filter = Rule(spec.filter, f"{path}.filter", dialect) if spec.filter else None
        for r in (self.value, self.filter):
            if r is not None and r.lookups:
                raise RuleError(f"{r.path}: a lookup's own rules cannot call lookup()")
        self.src = f"{self.table}:{self.key}"  # the lookup's source (table, key) in the reverse index
        self.columns: list[str] = list(
            dict.fromkeys([self.key, *self.value.columns, *(self.filter.columns if self.filter else [])])
        )


KeyFn = Callable[[dict[str, Any]], Any]  # a compiled expression on one row


class LookupCall(NamedTuple):
    """One ``lookup(name, expr)`` in a block's rules: the lookup's name, its ``src`` and the compiled key
    expression (on the block's row)."""

    name: str
    src: str
    key: KeyFn


class RuleBlock:
    """A ``stock:`` or ``prices:`` block: its table and the rules of the fields it sets, compiled.

    ``kind`` is the fact kind it gives (``stock`` / ``price``), ``path`` its YAML block."""

    kind = ""
    path = ""
    fields: tuple[str, ...] = ()
    numeric_fields: tuple[str, ...] = ()  # the rules the ERP must compute as numbers (schema check)

    def __init__(
        self, spec: StockMapping | PriceMapping, default_schema: str, lookups: dict[str, CompiledLookup],
        dialect: str | None = None,
    ) -> None:
        self.table = table_name(spec.table, default_schema, dialect, f"{self.path}.table")
        self.key: list[str] | None = [column_name(k, dialect) for k in spec.key] if spec.key else spec.key
        self.rules: dict[str, Rule] = {
            f: Rule(getattr(spec, f), f"{self.path}.{f}", dialect)
            for f in self.fields if getattr(spec, f) is not None
        }
        self.columns: list[str] = _columns(self.rules.values())
        # undeclared names are refused by CompiledMapping once every block is compiled
        self.lookup_calls: tuple[LookupCall, ...] = tuple(
            LookupCall(name, lookups[name].src, fn)
            for r in self.rules.values()
            for name, fn in r.lookups
            if name in lookups
        )
        self.uses_lookups = any(r.lookups for r in self.rules.values())
        # lookup() calls on the same key expression share one compiled function (see rules.Rule): each
        # distinct key is evaluated once per row, for the row's deps and for the keys to preload
        self.dep_keys: tuple[tuple[str, KeyFn], ...] = tuple(
            dict.fromkeys((c.src, c.key) for c in self.lookup_calls)
        )
        self.lookup_names: list[str] = list(dict.fromkeys(c.name for c in self.lookup_calls))
        self.preload_keys: tuple[tuple[KeyFn, tuple[str, ...]], ...] = _names_by_key(self.lookup_calls)

    @property
    def numeric(self) -> list[Rule]:
        return [self.rules[f] for f in self.numeric_fields if f in self.rules]


class StockRules(RuleBlock):
    kind, path, fields, numeric_fields = "stock", "stock", STOCK_FIELDS, ("quantity", "reserved")

    def __init__(self, spec: StockMapping, default_schema: str, lookups: dict[str, CompiledLookup],
                 dialect: str | None = None) -> None:
        super().__init__(spec, default_schema, lookups, dialect)
        self.spec = spec
        if isinstance(spec.safety_stock, dict):
            bad = sorted(set(spec.safety_stock) - set(spec.locations.values()))
            if bad:
                raise RuleError(f"stock.safety_stock: {bad[0]!r} is not a shop location of stock.locations")


class PriceRules(RuleBlock):
    kind, path, fields, numeric_fields = "price", "prices", PRICE_FIELDS, ("amount", "compare_at")

    def __init__(self, spec: PriceMapping, default_schema: str, lookups: dict[str, CompiledLookup],
                 dialect: str | None = None) -> None:
        super().__init__(spec, default_schema, lookups, dialect)
        self.spec = spec
        try:
            self.tz = ZoneInfo(spec.timezone)
        except Exception:
            raise RuleError(f"prices.timezone: unknown time zone {spec.timezone!r}") from None


class CompiledMapping:
    """The mapping's lookups, stock and prices blocks, compiled; ``tables``: every table it reads."""

    def __init__(self, spec: MappingSpec, default_schema: str = "public", dialect: str | None = None) -> None:
        """``dialect``: how the source database reads names (unquoted ones folded as it folds them);
        None: every name as written."""
        self.spec = spec
        self.default_schema = default_schema
        self.lookups: dict[str, CompiledLookup] = {
            name: CompiledLookup(name, lm, default_schema, dialect) for name, lm in spec.lookups.items()
        }
        self.stock = StockRules(spec.stock, default_schema, self.lookups, dialect) if spec.stock else None
        self.prices = PriceRules(spec.prices, default_schema, self.lookups, dialect) if spec.prices else None
        for block in self.blocks:
            for rule in block.rules.values():
                for name in rule.lookup_names:
                    if name not in self.lookups:
                        raise RuleError(f"{rule.path}: lookup {name!r} is not declared under lookups:")

    @classmethod
    def of(cls, mapping: MappingSpec | CompiledMapping) -> CompiledMapping:
        """``mapping`` itself when compiled already, else it compiled in its source's default schema."""
        if isinstance(mapping, CompiledMapping):
            return mapping
        return cls(mapping, default_schema(mapping), source_dialect(mapping))

    @property
    def blocks(self) -> list[RuleBlock]:
        """The blocks it maps: stock, then prices."""
        return [b for b in (self.stock, self.prices) if b is not None]

    @property
    def tables(self) -> list[str]:
        """Every table the source must publish/stream; lookup tables first so a snapshot resolves keys
        before the rows that use them arrive."""
        out = [lk.table for lk in self.lookups.values()] + [b.table for b in self.blocks]
        return list(dict.fromkeys(out))


def _names_by_key(calls: Iterable[LookupCall]) -> tuple[tuple[KeyFn, tuple[str, ...]], ...]:
    """Each distinct key expression with the lookups it is the key of."""
    by_key: dict[KeyFn, dict[str, None]] = {}
    for c in calls:
        by_key.setdefault(c.key, {})[c.name] = None
    return tuple((fn, tuple(names)) for fn, names in by_key.items())


def _columns(rules: Iterable[Rule]) -> list[str]:
    return list(dict.fromkeys(c for r in rules for c in r.columns))
