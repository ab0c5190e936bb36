"""ERP side of a reconcile: the mapping's rules transpiled into one SELECT, streamed out of the ERP in
chunks into DuckDB, then summed per (sku, location) exactly like cdc.normalize does on the stream:
sum of quantity over rows whose warehouse maps to the location, floor, minus safety stock, clamp at 0;
rows with a NULL/blank SKU ignored.

PostgreSQL: ``COPY (SELECT ...) TO STDOUT WITH (FORMAT csv)`` through a pipe into pyarrow's streaming CSV
reader (no per-row Python). MySQL: an unbuffered cursor read with fetchmany into Arrow batches.
The ERP position (pg_current_wal_lsn() / binlog file:offset) is read inside the snapshot's transaction.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
from sqlglot import exp

from cdc.normalize import table_name
from cdc.rules import Rule
from cdc.schema_check import table_sql
from reconciler.progress import Progress, Quiet

COLUMNS = ["sku", "scope", "val", "currency"]  # raw row: sku, warehouse / price list, quantity / amount


@dataclass
class ErpSnapshot:
    position: str | None
    started_at: float
    rows: int = 0
    seconds: float = 0.0


def _cast(rule: Rule, to: str, dialect: str) -> str:
    node = exp.Cast(this=rule.tree.copy(), to=exp.DataType.build(to))
    return node.sql(dialect=dialect, identify=True)


def stock_select(mapping: Any, dialect: str, default_schema: str | None) -> str:
    """The SELECT giving (sku, warehouse, quantity) text columns for every row of the stock table."""
    sku = Rule(mapping.sku, "stock.sku")
    wh = Rule(mapping.warehouse, "stock.warehouse")
    qty = Rule(mapping.quantity, "stock.quantity")
    table = table_name(mapping.table, default_schema) if dialect == "postgres" and default_schema else \
        mapping.table
    return (f"SELECT {_cast(sku, 'text', dialect)}, {_cast(wh, 'text', dialect)}, "
            f"{qty.sql(dialect)}, NULL FROM {table_sql(table, dialect)}")


def price_select(mapping: Any, dialect: str, default_schema: str | None) -> str:
    """(sku, price_list, amount, currency) for a ``prices:`` mapping (fields as in DESIGN.md)."""
    rules = [Rule(getattr(mapping, f), f"prices.{f}") for f in ("sku", "price_list", "amount", "currency")]
    table = table_name(mapping.table, default_schema) if dialect == "postgres" and default_schema else \
        mapping.table
    cols = [_cast(rules[0], "text", dialect), _cast(rules[1], "text", dialect), rules[2].sql(dialect),
            _cast(rules[3], "text", dialect)]
    return f"SELECT {', '.join(cols)} FROM {table_sql(table, dialect)}"


_RAW = "CREATE OR REPLACE TABLE {t} (sku VARCHAR, scope VARCHAR, val VARCHAR, currency VARCHAR)"


def _pg_copy(conn: Any, query: str, con: duckdb.DuckDBPyConnection, table: str, progress: Progress,
             block_size: int) -> None:
    """COPY ... TO STDOUT into a pipe, read back by pyarrow's streaming CSV reader, batch by batch."""
    r, w = os.pipe()
    error: list[BaseException] = []
    cur = conn.cursor()

    def produce() -> None:
        try:
            with os.fdopen(w, "wb", buffering=1 << 20) as f:
                cur.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv)", f)
        except BaseException as e:  # surfaced on the reading side
            error.append(e)

    t = threading.Thread(target=produce, name="erp-copy", daemon=True)
    t.start()
    try:
        with os.fdopen(r, "rb") as f:
            reader = pacsv.open_csv(
                f,
                read_options=pacsv.ReadOptions(column_names=COLUMNS, block_size=block_size),
                convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(COLUMNS, pa.string()),
                                                     strings_can_be_null=True))
            for batch in reader:
                con.register("_batch", batch)
                con.execute(f"INSERT INTO {table} SELECT * FROM _batch")
                con.unregister("_batch")
                progress.add(batch.num_rows)
    except (pa.ArrowInvalid, OSError):
        t.join()
        if error:
            raise error[0] from None
        raise
    t.join()
    if error:
        raise error[0]


def _mysql_fetch(conn: Any, query: str, con: duckdb.DuckDBPyConnection, table: str, progress: Progress,
                 chunk: int) -> None:
    import pymysql.cursors

    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute(query)
        while True:
            rows = cur.fetchmany(chunk)
            if not rows:
                break
            cols = list(zip(*rows, strict=True))
            batch = pa.table({name: pa.array([None if v is None else str(v) for v in col], pa.string())
                              for name, col in zip(COLUMNS, cols, strict=True)})
            con.register("_batch", batch)
            con.execute(f"INSERT INTO {table} SELECT * FROM _batch")
            con.unregister("_batch")
            progress.add(len(rows))


def _begin(conn: Any, dialect: str) -> str | None:
    """Open a consistent read and return the ERP log position it corresponds to."""
    with conn.cursor() as cur:
        if dialect == "postgres":
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute("SELECT pg_current_wal_lsn()::text")
            return str(cur.fetchone()[0])
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        try:
            cur.execute("SHOW MASTER STATUS")
            row = cur.fetchone()
        except Exception:
            row = None
        return f"{row[0]}:{row[1]}" if row else None


def snapshot_erp(conn: Any, dialect: str, con: duckdb.DuckDBPyConnection, *, stock: Any,
                 prices: Any = None, default_schema: str | None = "public", chunk_rows: int = 100_000,
                 progress: bool | None = None) -> ErpSnapshot:
    """Fill ``erp_facts(kind, sku, scope, value, currency)`` and ``erp_unmapped(sku, warehouses)``."""
    snap = ErpSnapshot(position=None, started_at=time.time())
    started = time.monotonic()
    pos = _begin(conn, dialect)
    snap.position = pos
    try:
        jobs = [("erp_stock_rows", stock_select(stock, dialect, default_schema), "ERP stock")]
        if prices is not None:
            jobs.append(("erp_price_rows", price_select(prices, dialect, default_schema), "ERP prices"))
        for table, query, label in jobs:
            con.execute(_RAW.format(t=table))
            prog = Progress(label, enabled=progress) if progress is not False else Quiet(label)
            if dialect == "postgres":
                _pg_copy(conn, query, con, table, prog, block_size=max(1 << 20, chunk_rows * 40))
            else:
                _mysql_fetch(conn, query, con, table, prog, chunk_rows)
            prog.done()
            snap.rows += prog.count
    finally:
        with conn.cursor() as cur:
            cur.execute("COMMIT")
    _aggregate(con, stock, has_prices=prices is not None)
    snap.seconds = time.monotonic() - started
    return snap


def _aggregate(con: duckdb.DuckDBPyConnection, stock: Any, *, has_prices: bool) -> None:
    locmap = pa.table({"warehouse": list(stock.locations), "location": list(stock.locations.values())})
    con.register("_locmap", locmap)
    con.execute("CREATE OR REPLACE TABLE erp_locmap AS SELECT * FROM _locmap")
    con.unregister("_locmap")
    safety = int(stock.safety_stock)
    # DECIMAL(18,6): exact sums (a DOUBLE could floor 2.9999999 to 2) on 64-bit integers, which DuckDB
    # sums far faster than 128-bit ones; blank SKUs contribute nothing
    con.execute(f"""
        CREATE OR REPLACE TABLE erp_facts AS
        SELECT 'stock' AS kind, r.sku, l.location AS scope,
               greatest(floor(sum(TRY_CAST(r.val AS DECIMAL(18,6)))) - {safety}, 0)::DECIMAL(38,4) AS value,
               NULL::VARCHAR AS currency
        FROM erp_stock_rows r JOIN erp_locmap l ON r.scope = l.warehouse
        WHERE r.sku IS NOT NULL AND trim(r.sku) <> ''
        GROUP BY r.sku, l.location""")
    # SKUs the ERP holds only in warehouses no location takes (usually none: a cheap filter first)
    con.execute("""
        CREATE OR REPLACE TABLE erp_unmapped AS
        SELECT sku, string_agg(DISTINCT coalesce(scope, 'NULL'), ',') AS warehouses
        FROM erp_stock_rows r
        WHERE sku IS NOT NULL AND trim(sku) <> ''
          AND (scope IS NULL OR scope NOT IN (SELECT warehouse FROM erp_locmap))
          AND sku NOT IN (SELECT sku FROM erp_facts)
        GROUP BY sku""")
    if has_prices:
        # a price key appears once per (sku, price list); if the ERP holds several rows, the last wins on
        # the stream, so any one of them is as good here — differing duplicates show up as drift
        con.execute("""
            INSERT INTO erp_facts
            SELECT 'price', sku, scope, max(TRY_CAST(val AS DECIMAL(38,4))), max(currency)
            FROM erp_price_rows WHERE sku IS NOT NULL AND trim(sku) <> '' AND scope IS NOT NULL
            GROUP BY sku, scope""")
        con.execute("DELETE FROM erp_unmapped WHERE sku IN (SELECT sku FROM erp_facts WHERE kind = 'price')")
