"""The snapshot / reconcile SELECTs: for a mapping and a dialect, one SELECT per fact kind giving the facts
directly, computed by the ERP database with the same rules the stream uses (``lookup()`` becomes a
correlated subquery):

- stock: ``sku, location, available``: a (sku, location) without counted rows is absent (the stream
  holds ``available: 0`` for it);
- price: ``sku, price_list, amount, currency, compare_at``: a (sku, list) without a valid line is absent.

Validity windows compare with ``now`` written as a local timestamp of ``prices.timezone`` (default: the
database's CURRENT_TIMESTAMP; use a session in that zone for timestamptz columns).

Every SELECT is built as one sqlglot tree — names and values from the config (locations, warehouses,
price lists) are string literals of the tree, escaped by the dialect's generator — and only then written
as SQL; no SQL text is assembled or edited. Before an ERP runs one, ``cdc.mapping.safe_sql.checked``
makes sure it is exactly one SELECT.
"""

from __future__ import annotations

from datetime import datetime

import sqlglot
from sqlglot import exp

from cdc.mapping.compiled import CompiledMapping, PriceRules, StockRules
from cdc.mapping.model import MappingSpec, PriceMapping
from cdc.mapping.rules import Rule
from cdc.mapping.safe_sql import write
from cdc.mapping.schema_check import table_tree


def facts_trees(mapping: MappingSpec | CompiledMapping, dialect: str,
                now: float | None = None) -> dict[str, exp.Select]:
    """{"stock": tree, "price": tree} (only the kinds the mapping maps) for postgres, mysql or duckdb."""
    b = SnapshotSQL(CompiledMapping.of(mapping), dialect)
    out: dict[str, exp.Select] = {}
    if b.m.stock is not None:
        out["stock"] = b.stock(b.m.stock)
    if b.m.prices is not None:
        out["price"] = b.price(b.m.prices, now)
    return out


def facts_select(
    mapping: MappingSpec | CompiledMapping, dialect: str, now: float | None = None
) -> dict[str, str]:
    """{"stock": sql, "price": sql} (only the kinds the mapping maps) for postgres, mysql or duckdb."""
    return {k: write(t, dialect) for k, t in facts_trees(mapping, dialect, now).items()}


# the order among a (sku, list)'s valid lines: the latest valid_from (none: last), the lowest amount
_ORDER = "amount, COALESCE(currency, '')"
_ORDER_VALID_FROM = "CASE WHEN vfrom IS NULL THEN 1 ELSE 0 END, vfrom DESC, amount, COALESCE(currency, '')"


def _str(v: object) -> exp.Literal:
    return exp.Literal.string(str(v))


def _num(v: int | float) -> exp.Literal:
    return exp.Literal.number(v)


class SnapshotSQL:
    """The SQL trees of one compiled mapping for one dialect. ``lookup_sql`` renders a ``lookup()`` call
    as the correlated subquery the snapshot uses (schema checks run rules with it too)."""

    def __init__(self, mapping: CompiledMapping, dialect: str) -> None:
        self.m, self.d = mapping, dialect
        self._seq = 0
        # the dialect's own "/" (PostgreSQL: typed, MySQL: NULL on zero) and GREATEST (NULLs ignored or
        # not), as its parser builds them: written for the dialect, they are its plain operators
        div = self.q("1 / 1")
        self._div_flags = {k: div.args.get(k) for k in ("typed", "safe")}
        self._greatest_flags = {"ignore_nulls": self.q("GREATEST(1, 0)").args.get("ignore_nulls")}

    def q(self, static: str) -> exp.Expression:
        """A fixed fragment of the SELECTs (never config or data) as the dialect reads it (its NULL
        ordering, its operators)."""
        return sqlglot.parse_one(static, read=self.d)

    def lookup_sql(self, name: str, key: exp.Expression) -> exp.Expression:
        lk = self.m.lookups[name]
        self._seq += 1
        alias = f"lk{self._seq}"
        cond: exp.Expression = exp.EQ(this=exp.column(lk.key, alias, quoted=True), expression=key.copy())
        if lk.filter is not None:
            cond = exp.and_(cond, exp.paren(lk.filter.sql_tree(alias)))
        tbl = table_tree(lk.table).as_(alias)
        return exp.select(lk.value.sql_tree(alias)).from_(tbl).where(cond).subquery()

    def r(self, rule: Rule) -> exp.Expression:
        return rule.sql_tree("t", self.lookup_sql)

    def text(self, rule: Rule) -> exp.Expression:
        return exp.Cast(this=self.r(rule), to=exp.DataType.build("text"))

    def case(self, subject: exp.Expression, mapping: dict[str, str] | dict[str, int]) -> exp.Case:
        if self.d == "mysql":
            # MySQL's default collations ignore case and trailing spaces ('wh-mad ' = 'WH-MAD'); the
            # stream's map look-up is exact, so compare bytes (a binary string has no PAD SPACE)
            subject = exp.Cast(this=subject, to=exp.DataType.build("binary"))
        ifs = [exp.If(this=_str(k), true=_num(v) if isinstance(v, int) else _str(v))
               for k, v in mapping.items()]
        return exp.Case(this=subject, ifs=ifs)

    def div(self, a: exp.Expression, b: exp.Expression) -> exp.Div:
        return exp.Div(this=a, expression=b, **self._div_flags)

    def stock(self, block: StockRules) -> exp.Select:
        m, r = block.spec, block.rules
        def or0(rule: Rule) -> exp.Expression:
            return exp.Coalesce(this=self.r(rule), expressions=[_num(0)])

        qty = or0(r["quantity"])
        if "reserved" in r:
            qty = exp.Sub(this=qty, expression=or0(r["reserved"]))
        safety = or0(r["safety_stock_per_sku"]) if "safety_stock_per_sku" in r else _num(0)
        loc_safety: exp.Expression
        if isinstance(m.safety_stock, dict):
            by_loc = {k: int(v) for k, v in m.safety_stock.items()}
            loc_safety = exp.Coalesce(this=self.case(exp.column("location"), by_loc), expressions=[_num(0)])
        else:
            loc_safety = _num(int(m.safety_stock))
        inner = exp.select(
            self.text(r["sku"]).as_("sku"),
            self.case(self.text(r["warehouse"]), m.locations).as_("location"),
            qty.as_("qty"),
            safety.as_("safety"),
        ).from_(table_tree(block.table).as_("t"))
        if "filter" in r:
            inner = inner.where(exp.paren(self.r(r["filter"])))
        available = exp.Greatest(
            this=exp.Sub(this=self.q("FLOOR(SUM(qty) - MAX(safety))"), expression=loc_safety),
            expressions=[_num(0)], **self._greatest_flags,
        )
        return (
            exp.select("sku", "location", available.as_("available"))
            .from_(inner.subquery("r"))
            .where(self.q("sku IS NOT NULL AND TRIM(sku) <> '' AND location IS NOT NULL"))
            .group_by("sku", "location")
        )

    def rounded(self, m: PriceMapping, rule: Rule) -> exp.Expression:
        p = int(m.rounding.places)

        def x() -> exp.Expression:
            return exp.paren(self.r(rule))

        def scaled(fn: type[exp.Floor] | type[exp.Ceil]) -> exp.Expression:
            return fn(this=exp.Mul(this=x(), expression=_num(10**p)))

        negative = exp.LT(this=x(), expression=_num(0))
        if m.rounding.mode == "half_up":
            expr: exp.Expression = exp.Round(this=x(), decimals=_num(p))
        elif m.rounding.mode in ("floor", "ceiling"):
            expr = self.div(scaled(exp.Floor if m.rounding.mode == "floor" else exp.Ceil), _num(10**p))
        else:  # down: toward zero, up: away from it
            toward = m.rounding.mode == "down"
            case = exp.Case(ifs=[exp.If(this=negative, true=scaled(exp.Ceil if toward else exp.Floor))],
                            default=scaled(exp.Floor if toward else exp.Ceil))
            expr = self.div(case, _num(10**p))
        dtype = exp.DataType(this=exp.DataType.Type.DECIMAL,
                             expressions=[exp.DataTypeParam(this=_num(38)), exp.DataTypeParam(this=_num(p))])
        return exp.Cast(this=expr, to=dtype)

    def now(self, block: PriceRules, now: float | None) -> exp.Expression:
        if now is None:
            return exp.CurrentTimestamp()
        local = datetime.fromtimestamp(now, block.tz).replace(tzinfo=None)
        # MySQL: DATETIME(6), a plain DATETIME would drop the microseconds
        to = exp.DataType.build("datetime(6)", dialect="mysql") if self.d == "mysql" else \
            exp.DataType.build("timestamp")
        return exp.Cast(this=_str(local.isoformat(sep=" ", timespec="microseconds")), to=to)

    def price(self, block: PriceRules, now: float | None) -> exp.Select:
        m, r = block.spec, block.rules
        plist: exp.Expression = self.text(r["price_list"])
        if m.list_map:
            plist = self.case(plist, m.list_map)
        cols = [
            self.text(r["sku"]).as_("sku"),
            plist.as_("price_list"),
            self.rounded(m, r["amount"]).as_("amount"),
            self.text(r["currency"]).as_("currency"),
            (self.rounded(m, r["compare_at"]) if "compare_at" in r else exp.Null()).as_("compare_at"),
        ]
        conds = [self.q("sku IS NOT NULL AND TRIM(sku) <> '' AND price_list IS NOT NULL "
                        "AND amount IS NOT NULL")]
        order = _ORDER
        if "valid_from" in r:
            cols.append(self.r(r["valid_from"]).as_("vfrom"))
            conds.append(exp.paren(exp.or_(
                self.q("vfrom IS NULL"), exp.LTE(this=exp.column("vfrom"), expression=self.now(block, now)))))
            order = _ORDER_VALID_FROM
        if "valid_to" in r:
            cols.append(self.r(r["valid_to"]).as_("vto"))
            conds.append(exp.paren(exp.or_(
                self.q("vto IS NULL"), exp.GT(this=exp.column("vto"), expression=self.now(block, now)))))
        lines = exp.select(*cols).from_(table_tree(block.table).as_("t"))
        if "filter" in r:
            lines = lines.where(exp.paren(self.r(r["filter"])))
        rn = self.q(f"ROW_NUMBER() OVER (PARTITION BY sku, price_list ORDER BY {order})")
        fields = ["sku", "price_list", "amount", "currency", "compare_at"]
        ranked = exp.select(*fields, rn.as_("rn")).from_(lines.subquery("l")).where(exp.and_(*conds))
        return exp.select(*fields).from_(ranked.subquery("v")).where(self.q("rn = 1"))
