"""Classify every difference between the ERP facts and a shop's facts (DuckDB FULL OUTER JOIN), leaving out
keys whose change is still in flight.

In flight (never reported as drift):
* pending in the outbox for that sink (want > done) just before or just after the shop listing — a key
  delivered *while* the shop was being listed was pending before it;
* written to the outbox after the reconcile started (version > the outbox's max version read before the
  ERP snapshot): this covers every fact whose ERP position is newer than the snapshot's position, and
  changes the pipeline read late.
Changes committed in the ERP before the snapshot but not yet read by the pipeline are handled by waiting
for the outbox's position to reach the snapshot's (see run.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

DRIFT_KINDS = ("stock_mismatch", "price_mismatch", "missing_in_shop", "not_in_erp", "not_mapped")
HEALABLE = ("stock_mismatch", "price_mismatch", "missing_in_shop")

DRIFT_TABLE = """
CREATE TABLE IF NOT EXISTS drift (
    sink VARCHAR, drift VARCHAR, fact_kind VARCHAR, sku VARCHAR, scope VARCHAR,
    erp_value DECIMAL(38,4), shop_value DECIMAL(38,4), erp_currency VARCHAR, shop_currency VARCHAR,
    severity DOUBLE, note VARCHAR)"""


@dataclass
class SinkDiff:
    sink: str
    erp_keys: int = 0
    shop_keys: int = 0
    in_flight: int = 0  # differences left out because the key was in flight
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    healed: int = 0
    heal_refused: str | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def load_in_flight(con: duckdb.DuckDBPyConnection, keys: Iterable[tuple[str, str, str]]) -> int:
    uniq = set(keys)
    cols = list(zip(*uniq, strict=True)) if uniq else [(), (), ()]
    table = pa.table({n: pa.array(list(c), pa.string()) for n, c in zip(("kind", "sku", "scope"), cols,
                                                                          strict=True)})
    con.register("_inflight", table)
    con.execute("CREATE OR REPLACE TABLE in_flight AS SELECT DISTINCT * FROM _inflight")
    con.unregister("_inflight")
    return len(uniq)


# classification ------------------------------------------------------------------------------------------
def classify(con: duckdb.DuckDBPyConnection, sink: str, *, kinds: list[str],
             locations: list[str] | None = None, price_lists: list[str] | None = None) -> SinkDiff:
    """Compare ``erp_facts`` (restricted to what this sink carries) with ``shop_facts``; append the drift
    to ``drift`` and return the counts.

    One FULL OUTER JOIN yields only the differing keys (usually a small share); everything after it —
    the labels, in-flight keys, the ERP's other keys of the same SKU — works on those few rows."""
    con.execute(DRIFT_TABLE)
    # the sink's kinds, locations and price lists (config values) are bound parameters, never SQL text;
    # the SQL below is fixed text
    params: dict[str, Any] = {"kinds": list(kinds)}
    where = ["list_contains($kinds, kind)"]
    if locations:
        where.append("(kind <> 'stock' OR list_contains($locations, scope))")
        params["locations"] = list(locations)
    if price_lists:
        where.append("(kind <> 'price' OR list_contains($price_lists, scope))")
        params["price_lists"] = list(price_lists)
    e_where, s_where = " AND ".join(where), where[0]
    e = f"(SELECT * FROM erp_facts WHERE {e_where})"  # inlined, not CTEs: a CTE used twice is copied
    s = f"(SELECT * FROM shop_facts WHERE {s_where})"
    kind_params = {f"kind{i}": k for i, k in enumerate(kinds)}
    con.execute(_differing_keys_sql(e, s, list(kind_params)), {**params, **kind_params})
    res = SinkDiff(sink)
    s_params = {"kinds": params["kinds"]}
    res.erp_keys = con.execute(f"SELECT count(*) FROM erp_facts WHERE {e_where}", params).fetchone()[0]  # type: ignore[index]
    res.shop_keys = con.execute(f"SELECT count(*) FROM shop_facts WHERE {s_where}", s_params).fetchone()[0]  # type: ignore[index]
    res.in_flight = con.execute("SELECT count(*) FROM d SEMI JOIN in_flight f ON f.kind = d.fact_kind "
                                "AND f.sku = d.sku AND f.scope = d.scope").fetchone()[0]  # type: ignore[index]
    con.execute("""
        INSERT INTO drift
        SELECT $sink, drift, fact_kind, sku, scope, erp_value, shop_value, erp_currency, shop_currency,
               severity, note
        FROM d ANTI JOIN in_flight f ON f.kind = d.fact_kind AND f.sku = d.sku AND f.scope = d.scope""",
                {"sink": sink})
    res.counts = dict.fromkeys(DRIFT_KINDS, 0)
    for kind, n in con.execute("SELECT drift, count(*) FROM drift WHERE sink = $sink GROUP BY drift",
                               {"sink": sink}).fetchall():
        res.counts[kind] = n
    return res


def _differing_keys_sql(e: str, s: str, kind_params: list[str]) -> str:
    """DuckDB: table ``d`` of the keys where ``e`` (ERP facts) and ``s`` (shop facts) differ, labelled
    with their drift kind, severity and a note for the report. ``kind_params``: the names of the bound
    parameters holding the fact kinds (one join each)."""
    # one join per fact kind, on (sku, scope): a third key to hash costs a third more
    joins = " UNION ALL ".join(f"""
            SELECT ${kind}::VARCHAR AS fact_kind, coalesce(e.sku, s.sku) AS sku,
                   coalesce(e.scope, s.scope) AS scope, e.value AS erp_value, s.value AS shop_value,
                   e.currency AS erp_currency, s.currency AS shop_currency,
                   e.sku IS NOT NULL AS in_erp, s.sku IS NOT NULL AS in_shop
            FROM (SELECT * FROM {e} WHERE kind = ${kind}) e
                 FULL OUTER JOIN (SELECT * FROM {s} WHERE kind = ${kind}) s
                 ON e.sku = s.sku AND e.scope = s.scope
            WHERE e.sku IS NULL OR s.sku IS NULL OR e.value IS DISTINCT FROM s.value
               OR (e.currency IS NOT NULL AND s.currency IS NOT NULL AND e.currency <> s.currency)"""
                           for kind in kind_params)
    return f"""
        CREATE OR REPLACE TEMP TABLE d AS
        WITH jr AS MATERIALIZED (  -- the few differing keys, used twice below
            {joins}
        ),
        -- keys the shop lists more than once, among the differing ones: their whole spread
        dup AS (
            SELECT s.kind, s.sku, s.scope, max(s.value) AS hi, min(s.value) AS lo
            FROM {s} s SEMI JOIN jr ON s.kind = jr.fact_kind AND s.sku = jr.sku AND s.scope = jr.scope
            GROUP BY ALL HAVING count(*) > 1
        ),
        j AS MATERIALIZED (
            SELECT fact_kind, jr.sku, jr.scope, any_value(erp_value) AS erp_value,
                   coalesce(any_value(dup.hi), max(shop_value)) AS shop_value,
                   coalesce(any_value(dup.lo), min(shop_value)) AS shop_min,
                   any_value(erp_currency) AS erp_currency, max(shop_currency) AS shop_currency,
                   bool_or(in_erp) AS in_erp, bool_or(in_shop) AS in_shop
            FROM jr LEFT JOIN dup ON dup.kind = jr.fact_kind AND dup.sku = jr.sku AND dup.scope = jr.scope
            GROUP BY fact_kind, jr.sku, jr.scope
        ),
        -- (kind, sku) the ERP feeds, among the SKUs the shop lists where the ERP has no key
        fed AS (SELECT DISTINCT kind, sku FROM {e} e
                WHERE sku IN (SELECT sku FROM j WHERE NOT in_erp)),
        k AS (
            SELECT j.*, fed.sku IS NOT NULL AS sku_mapped, un.sku IS NOT NULL AS unmapped, un.warehouses
            FROM j LEFT JOIN fed ON fed.kind = j.fact_kind AND fed.sku = j.sku
                   LEFT JOIN erp_unmapped un ON un.sku = j.sku
        ), c AS (
            SELECT *, CASE
                WHEN in_erp AND in_shop THEN fact_kind || '_mismatch'
                WHEN in_erp THEN 'missing_in_shop'
                -- the ERP feeds this SKU elsewhere but has no row here: the stream would say 0
                WHEN sku_mapped AND fact_kind = 'stock' THEN
                    CASE WHEN shop_value = 0 THEN NULL ELSE 'stock_mismatch' END
                WHEN unmapped THEN 'not_mapped'
                ELSE 'not_in_erp' END AS drift
            FROM k
        )
        SELECT drift, fact_kind, sku, scope,
               CASE WHEN drift = 'stock_mismatch' THEN coalesce(erp_value, 0) ELSE erp_value END AS erp_value,
               shop_value, erp_currency, shop_currency,
               CASE WHEN fact_kind = 'stock' THEN
                        abs(coalesce(shop_value, 0) - coalesce(erp_value, 0))
                        -- the shop showing more than the ERP has means overselling: worse
                        * CASE WHEN coalesce(shop_value, 0) > coalesce(erp_value, 0) THEN 2 ELSE 1 END
                    WHEN erp_value IS NULL OR shop_value IS NULL THEN 100
                    ELSE 100 * abs(shop_value - erp_value) / greatest(abs(erp_value), 0.01) END::DOUBLE
                   AS severity,
               CASE WHEN drift = 'not_mapped' THEN 'ERP warehouses ' || warehouses || ' map to no location'
                    WHEN shop_min IS DISTINCT FROM shop_value THEN 'listed more than once in the shop'
                    WHEN drift = 'price_mismatch' AND erp_value = shop_value THEN 'currency differs'
                    END AS note
        FROM c WHERE drift IS NOT NULL"""


def items(con: duckdb.DuckDBPyConnection, sink: str | None = None) -> list[dict[str, Any]]:
    q = "SELECT * FROM drift" + (" WHERE sink = $sink" if sink else "") + " ORDER BY severity DESC, sku"
    cur = con.execute(q, {"sink": sink} if sink else {})
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
