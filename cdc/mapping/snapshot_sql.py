"""The snapshot / reconcile SELECTs: for a mapping and a dialect, one SELECT per fact kind giving the facts
directly, computed by the ERP database with the same rules the stream uses (``lookup()`` becomes a
correlated subquery):

- stock: ``sku, location, available``: a (sku, location) without counted rows is absent (the stream
  holds ``available: 0`` for it);
- price: ``sku, price_list, amount, currency, compare_at``: a (sku, list) without a valid line is absent.

Validity windows compare with ``now`` written as a local timestamp of ``prices.timezone`` (default: the
database's CURRENT_TIMESTAMP; use a session in that zone for timestamptz columns).
"""

from __future__ import annotations

from datetime import datetime

from sqlglot import exp

from cdc.mapping.compiled import CompiledMapping, PriceRules, StockRules
from cdc.mapping.model import MappingSpec, PriceMapping
from cdc.mapping.rules import Rule
from cdc.mapping.schema_check import table_sql


def facts_select(
    mapping: MappingSpec | CompiledMapping, dialect: str, now: float | None = None
) -> dict[str, str]:
    """{"stock": sql, "price": sql} (only the kinds the mapping maps) for postgres, mysql or duckdb."""
    b = SnapshotSQL(CompiledMapping.of(mapping), dialect)
    out: dict[str, str] = {}
    if b.m.stock is not None:
        out["stock"] = b.stock(b.m.stock)
    if b.m.prices is not None:
        out["price"] = b.price(b.m.prices, now)
    return out


class SnapshotSQL:
    """The SQL of one compiled mapping for one dialect. ``lookup_sql`` renders a ``lookup()`` call as the
    correlated subquery the snapshot uses (schema checks run rules with it too)."""

    def __init__(self, mapping: CompiledMapping, dialect: str) -> None:
        self.m, self.d = mapping, dialect
        self._seq = 0

    def lookup_sql(self, name: str, key: exp.Expression) -> exp.Expression:
        lk = self.m.lookups[name]
        self._seq += 1
        alias = f"lk{self._seq}"
        cond: exp.Expression = exp.EQ(this=exp.column(lk.key, alias, quoted=True), expression=key.copy())
        if lk.filter is not None:
            cond = exp.and_(cond, exp.paren(lk.filter.sql_tree(alias)))
        tbl = exp.to_table(table_sql(lk.table, self.d), dialect=self.d).as_(alias)
        return exp.select(lk.value.sql_tree(alias)).from_(tbl).where(cond).subquery()

    def r(self, rule: Rule) -> str:
        return rule.sql(self.d, "t", self.lookup_sql)

    def text(self, rule: Rule) -> str:
        node = exp.Cast(this=rule.sql_tree("t", self.lookup_sql), to=exp.DataType.build("text"))
        return node.sql(dialect=self.d, identify=True)

    def case(self, subject: str, mapping: dict[str, str]) -> str:
        whens = " ".join(f"WHEN {_lit(k)} THEN {_lit(v)}" for k, v in mapping.items())
        if self.d == "mysql":
            # MySQL's default collations ignore case and trailing spaces ('wh-mad ' = 'WH-MAD'); the
            # stream's map look-up is exact, so compare bytes (a binary string has no PAD SPACE)
            subject = f"CAST({subject} AS BINARY)"
        return f"CASE {subject} {whens} END"

    def table(self, name: str) -> str:
        return f"{table_sql(name, self.d)} AS t"

    def stock(self, block: StockRules) -> str:
        m, r = block.spec, block.rules
        qty = f"COALESCE({self.r(r['quantity'])}, 0)"
        if "reserved" in r:
            qty += f" - COALESCE({self.r(r['reserved'])}, 0)"
        safety = f"COALESCE({self.r(r['safety_stock_per_sku'])}, 0)" if "safety_stock_per_sku" in r else "0"
        where = f" WHERE ({self.r(r['filter'])})" if "filter" in r else ""
        if isinstance(m.safety_stock, dict):
            loc_safety = (
                f"COALESCE({self.case('location', {k: str(v) for k, v in m.safety_stock.items()})}, 0)"
            )
            loc_safety = (
                loc_safety.replace("THEN '", "THEN ").replace("' WHEN", " WHEN").replace("' END", " END")
            )
        else:
            loc_safety = str(m.safety_stock)
        inner = (
            f"SELECT {self.text(r['sku'])} AS sku, {self.case(self.text(r['warehouse']), m.locations)} "
            f"AS location, {qty} AS qty, {safety} AS safety FROM {self.table(block.table)}{where}"
        )
        return (
            f"SELECT sku, location, GREATEST(FLOOR(SUM(qty) - MAX(safety)) - {loc_safety}, 0) AS available "
            f"FROM ({inner}) AS r WHERE sku IS NOT NULL AND TRIM(sku) <> '' AND location IS NOT NULL "
            f"GROUP BY sku, location"
        )

    def rounded(self, m: PriceMapping, rule: Rule) -> str:
        x, p = f"({self.r(rule)})", m.rounding.places
        scale = f"{10**p}"
        expr = {
            "half_up": f"ROUND({x}, {p})",
            "floor": f"FLOOR({x} * {scale}) / {scale}",
            "ceiling": f"CEIL({x} * {scale}) / {scale}",
            "down": f"CASE WHEN {x} < 0 THEN CEIL({x} * {scale}) ELSE FLOOR({x} * {scale}) END / {scale}",
            "up": f"CASE WHEN {x} < 0 THEN FLOOR({x} * {scale}) ELSE CEIL({x} * {scale}) END / {scale}",
        }[m.rounding.mode]
        return f"CAST({expr} AS DECIMAL(38, {p}))"

    def price(self, block: PriceRules, now: float | None) -> str:
        m, r = block.spec, block.rules
        plist = self.text(r["price_list"])
        if m.list_map:
            plist = self.case(plist, m.list_map)
        cmp = self.rounded(m, r["compare_at"]) if "compare_at" in r else "NULL"
        cols = [
            f"{self.text(r['sku'])} AS sku",
            f"{plist} AS price_list",
            f"{self.rounded(m, r['amount'])} AS amount",
            f"{self.text(r['currency'])} AS currency",
            f"{cmp} AS compare_at",
        ]
        conds = ["sku IS NOT NULL", "TRIM(sku) <> ''", "price_list IS NOT NULL", "amount IS NOT NULL"]
        if now is None:
            now_sql = "CURRENT_TIMESTAMP"
        else:
            local = datetime.fromtimestamp(now, block.tz).replace(tzinfo=None)
            now_sql = f"TIMESTAMP '{local.isoformat(sep=' ', timespec='microseconds')}'"
        order = []
        if "valid_from" in r:
            cols.append(f"{self.r(r['valid_from'])} AS vfrom")
            conds.append(f"(vfrom IS NULL OR vfrom <= {now_sql})")
            order += ["CASE WHEN vfrom IS NULL THEN 1 ELSE 0 END", "vfrom DESC"]
        if "valid_to" in r:
            cols.append(f"{self.r(r['valid_to'])} AS vto")
            conds.append(f"(vto IS NULL OR vto > {now_sql})")
        order += ["amount", "COALESCE(currency, '')"]
        where = f" WHERE ({self.r(r['filter'])})" if "filter" in r else ""
        lines = f"SELECT {', '.join(cols)} FROM {self.table(block.table)}{where}"
        ranked = (
            f"SELECT sku, price_list, amount, currency, compare_at, ROW_NUMBER() OVER (PARTITION BY sku, "
            f"price_list ORDER BY {', '.join(order)}) AS rn FROM ({lines}) AS l WHERE {' AND '.join(conds)}"
        )
        return f"SELECT sku, price_list, amount, currency, compare_at FROM ({ranked}) AS v WHERE rn = 1"


def _lit(v: str) -> str:
    return "'" + str(v).replace("'", "''") + "'"
