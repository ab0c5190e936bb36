"""ERP side of a reconcile: the mapping's facts computed exactly like the stream, by the SELECTs of
``cdc.mapping.snapshot_sql.facts_trees`` (lookups, filter, reservations, safety stock, price validity,
rounding).

Stock: the stock SELECT is split in two. Its per-row part (sku, location, qty, safety — lookups and the
filter included) runs in the ERP and is streamed out; its GROUP BY part (sum, floor, safety, clamp) runs
in DuckDB on those rows. A GROUP BY of millions of (sku, location) groups is several times slower in the
ERP (PostgreSQL: 7–12 s for 3M groups vs ≈ 1 s in DuckDB) and would load the production database. The
per-row part also gives the warehouse of rows no location takes, for the "not mapped" label.
Prices: the price SELECT (a window over validity dates) runs whole in the ERP.

PostgreSQL: ``COPY (SELECT ...) TO STDOUT WITH (FORMAT csv)`` through a pipe straight into pyarrow's CSV
reader with explicit column types (no per-row Python); the stock batches stream into DuckDB's aggregation
while the ERP still produces them. A value the typed columns cannot hold exactly (more than 6 places, an
exponent) makes the rows be read again as text, cast by DuckDB.
MySQL: an unbuffered cursor read with fetchmany into Arrow chunks, then the same aggregation.
Everything is read in one consistent snapshot whose ERP log position is returned.

Every SELECT here is a sqlglot tree until it is written for the database that runs it; a text about to
run on the ERP is checked to be exactly one SELECT first (``cdc.mapping.safe_sql.checked``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from sqlglot import exp

from cdc.mapping.safe_sql import checked, write
from cdc.mapping.snapshot_sql import facts_trees
from reconciler.progress import Progress, Quiet

# every fact value (stock count, price) as DECIMAL(18,8): exact, 64-bit (fast), and prices' up to 8 places
VALUE = "DECIMAL(18,8)"
# per-row quantities: DECIMAL(18,6) is an int64 in Arrow and DuckDB; a value it cannot hold exactly
# (more places, an exponent) makes the reader fail and the rows are read again as text (see _read)
QTY = pa.decimal128(18, 6)
ROWS_TABLE = "erp_stock_rows"


@dataclass
class ErpSnapshot:
    position: str | None
    started_at: float
    rows: int = 0
    seconds: float = 0.0
    read_seconds: float = 0.0  # inside the ERP's snapshot transaction (stock aggregated on the way)


@dataclass
class StockPlan:
    rows_sql: str   # run by the ERP: sku, location or warehouse, qty[, safety]
    columns: list[str]
    location: exp.Expression | None  # DuckDB: the location from the warehouse, when the ERP sends it
    warehouses: list[str]     # those the location CASE maps
    facts: exp.Select  # run by DuckDB on ROWS_TABLE (sku, location, qty[, safety]): sku, location, available


def plan_stock(select: exp.Select, dialect: str) -> StockPlan:
    """Split facts_trees' stock SELECT (``SELECT … FROM (<per-row SELECT>) AS r … GROUP BY …``) into
    the per-row SELECT for the ERP and the aggregation for DuckDB.

    When the location is a CASE on the warehouse (always, from facts_trees), the ERP sends the warehouse
    and DuckDB applies the CASE: the same literals mapped, each lookup evaluated once per row, and the
    warehouses of rows no location takes are at hand for the "not mapped" label. A constant safety
    (no per-SKU safety stock) is folded into the aggregation instead of being sent per row."""
    outer = select.copy()
    src = outer.args["from_"].this
    if not isinstance(src, exp.Subquery) or not isinstance(src.this, exp.Select):
        raise ValueError(f"unexpected stock SELECT shape: {outer.sql()[:200]}")
    inner = src.this.copy()
    columns = list(inner.named_selects)
    if columns[:4] != ["sku", "location", "qty", "safety"]:
        raise ValueError(f"unexpected stock SELECT columns {columns}")
    selects = list(inner.expressions)
    safety = selects[3].this
    if isinstance(safety, exp.Literal):
        del selects[3]
        columns.remove("safety")
        for col in list(outer.find_all(exp.Column)):
            if col.name == "safety":
                agg = col.parent
                (agg if isinstance(agg, exp.Max) else col).replace(safety.copy())
    location, warehouses = None, []
    case = selects[1].this
    if isinstance(case, exp.Case) and case.this is not None:
        subject = case.this
        if isinstance(subject, exp.Cast) and subject.to.is_type(exp.DataType.Type.BINARY):
            # facts_trees' MySQL CASE compares bytes (exact, like the stream); DuckDB compares exactly
            # anyway, and the warehouse is wanted as text
            subject = subject.this
        selects[1] = subject.copy().as_("warehouse")
        columns[1] = "warehouse"
        location = case.copy()
        location.set("this", exp.column("warehouse"))
        warehouses = [w.this.name for w in case.args.get("ifs") or []]
    inner.set("expressions", selects)  # through set(): the nodes' parents must be right for generation
    outer.set("from_", exp.From(this=exp.to_table(ROWS_TABLE).as_("r")))
    return StockPlan(write(inner, dialect), columns, location, warehouses, outer)


# reading ------------------------------------------------------------------------------------------------
def _pg_read(conn: Any, query: str, names: list[str], types: dict[str, pa.DataType], progress: Progress,
             block_size: int, consume: Callable[[pa.RecordBatchReader], None] | None = None) -> pa.Table:
    """COPY ... TO STDOUT written into a pipe by a thread while pyarrow parses the other end. With
    ``consume``, the parsed batches are handed to it as a stream (returns an empty table)."""
    query = checked(conn, query, "postgres")  # one SELECT: COPY (...) cannot be closed early by it
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
            read_options = pacsv.ReadOptions(column_names=names, block_size=block_size)
            # COPY writes NULL as an empty field and '' as "": keep them apart
            convert_options = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                                   quoted_strings_can_be_null=False)
            if consume is None:
                table = pacsv.read_csv(f, read_options=read_options, convert_options=convert_options)
            else:
                consume(pacsv.open_csv(f, read_options=read_options, convert_options=convert_options))
                table = pa.schema([(n, types[n]) for n in names]).empty_table()
    except BaseException as e:
        t.join()  # the writer fails on the closed pipe: its error is the consequence, not the cause
        if error and not isinstance(error[0], BrokenPipeError | OSError):
            raise error[0] from None
        if not error and isinstance(e, pa.ArrowInvalid) and "Empty CSV" in str(e):  # no rows at all
            empty = pa.schema([(n, types[n]) for n in names]).empty_table()
            if consume is not None:
                consume(empty.to_reader())
            return empty
        raise
    t.join()
    if error:
        raise error[0]
    progress.add(table.num_rows)
    return table


def _mysql_read(conn: Any, query: str, names: list[str], progress: Progress, chunk: int) -> pa.Table:
    import pymysql.cursors

    batches = []
    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute(checked(conn, query, "mysql"))
        while rows := cur.fetchmany(chunk):
            cols = list(zip(*rows, strict=True))
            batches.append(pa.table({n: pa.array([_text(v) for v in c], pa.string())
                                     for n, c in zip(names, cols, strict=True)}))
            progress.add(len(rows))
    if not batches:
        return pa.table({n: pa.array([], pa.string()) for n in names})
    return pa.concat_tables(batches)


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes | bytearray) else str(v)


def _read(conn: Any, dialect: str, query: str, names: list[str], typed: dict[str, pa.DataType],
          progress: Progress, chunk_rows: int) -> tuple[pa.Table, bool]:
    """The rows of ``query``; True when ``typed`` columns came typed (else all are text)."""
    if dialect != "postgres":
        return _mysql_read(conn, query, names, progress, chunk_rows), False
    text = dict.fromkeys(names, pa.string())
    block = max(1 << 20, min(chunk_rows * 64, 64 << 20))
    try:
        return _pg_read(conn, query, names, {**text, **typed}, progress, block), True
    except pa.ArrowInvalid:  # a value the typed column cannot hold exactly: read it as text
        progress.count = 0
        return _pg_read(conn, query, names, text, progress, block), False


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


def _aggregate(con: duckdb.DuckDBPyConnection, plan: StockPlan, rows: Any, *, typed: bool,
               unmapped_only: bool = False) -> None:
    """facts_trees' GROUP BY part on ``rows`` (a table or a stream of the per-row columns) into
    erp_facts; with ``unmapped_only``, the SKUs of rows no location takes into erp_unmapped instead."""
    decimal = exp.DataType.build("DECIMAL(38,10)")
    cols: list[exp.Expression] = [
        exp.cast(exp.column(c), decimal).as_(c) if c in ("qty", "safety") and not typed else exp.column(c)
        for c in plan.columns
    ]
    if plan.location is not None:
        cols.append(plan.location.copy().as_("location"))
    view = exp.Create(this=exp.to_table(ROWS_TABLE), kind="VIEW", replace=True,
                      expression=exp.select(*cols).from_("_erp_rows"),
                      properties=exp.Properties(expressions=[exp.TemporaryProperty()]))
    con.register("_erp_rows", rows)
    con.execute(write(view, "duckdb"))
    try:
        if not unmapped_only:
            facts = exp.select(exp.Literal.string("stock"), "sku", "location",
                               exp.cast(exp.column("available"), exp.DataType.build(VALUE)), exp.Null())
            con.execute(write(exp.insert(facts.from_(plan.facts.subquery()), "erp_facts"), "duckdb"))
        elif plan.location is not None:
            # SKUs the ERP holds only in warehouses no location takes
            con.execute(f"""
                INSERT INTO erp_unmapped
                SELECT sku, string_agg(DISTINCT coalesce(warehouse, 'NULL'), ',' ORDER BY
                                       coalesce(warehouse, 'NULL'))
                FROM {ROWS_TABLE}
                WHERE location IS NULL AND sku IS NOT NULL AND trim(sku) <> ''
                  AND sku NOT IN (SELECT sku FROM erp_facts WHERE kind = 'stock')
                GROUP BY sku""")
    finally:
        con.execute(f"DROP VIEW {ROWS_TABLE}")
        con.unregister("_erp_rows")


def _stream_stock(conn: Any, con: duckdb.DuckDBPyConnection, plan: StockPlan, types: dict[str, pa.DataType],
                  progress: Progress, block_size: int) -> pa.Table:
    """PostgreSQL: DuckDB aggregates the batches while COPY still produces them (the ERP's work and ours
    overlap); returns the rows no location takes (usually none), kept aside on the way."""
    mapped = pa.array(plan.warehouses, pa.string())
    idx = plan.columns.index("warehouse")
    kept: list[pa.RecordBatch] = []
    schema: list[pa.Schema] = []

    def consume(reader: pa.RecordBatchReader) -> None:
        schema.append(reader.schema)

        def batches() -> Any:
            for b in reader:
                progress.add(b.num_rows)
                wh = b.column(idx)  # dictionary-encoded: the test runs per distinct warehouse
                known = pc.take(pc.is_in(wh.dictionary, value_set=mapped), wh.indices)
                unmapped = pc.invert(pc.fill_null(known, False))
                if pc.any(unmapped).as_py():
                    kept.append(b.filter(unmapped))
                yield b

        _aggregate(con, plan, pa.RecordBatchReader.from_batches(reader.schema, batches()), typed=True)

    _pg_read(conn, plan.rows_sql, plan.columns, types, progress, block_size, consume)
    return pa.Table.from_batches(kept, schema=schema[0])


def snapshot_erp(conn: Any, dialect: str, con: duckdb.DuckDBPyConnection, cfg: Any, *,
                 chunk_rows: int = 100_000, progress: bool | None = None,
                 now: float | None = None) -> ErpSnapshot:
    """Fill ``erp_facts(kind, sku, scope, value, currency)`` and ``erp_unmapped(sku, warehouses)``.
    ``now``: the instant price validity windows are evaluated at (default: the ERP's clock)."""
    snap = ErpSnapshot(position=None, started_at=time.time())
    started = time.monotonic()
    selects = facts_trees(cfg, dialect, now=now)
    plan = plan_stock(selects["stock"], dialect) if "stock" in selects else None

    def prog(label: str) -> Progress:
        return Progress(label, enabled=progress) if progress is not False else Quiet(label)

    # the tables below are sets: letting DuckDB write them in any order saves a third of the time
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"CREATE OR REPLACE TABLE erp_facts (kind VARCHAR, sku VARCHAR, scope VARCHAR, "
                f"value {VALUE}, currency VARCHAR)")
    con.execute("CREATE OR REPLACE TABLE erp_unmapped (sku VARCHAR, warehouses VARCHAR)")
    block = max(1 << 20, min(chunk_rows * 64, 64 << 20))
    snap.position = _begin(conn, dialect)
    try:
        prices = None
        if plan is not None:
            p = prog("ERP stock rows")
            # a few warehouses over millions of rows: dictionary-encoded, the location CASE runs per
            # distinct warehouse
            types = {**dict.fromkeys(plan.columns, pa.string()), "qty": QTY, "safety": QTY,
                     "warehouse": pa.dictionary(pa.int32(), pa.string())}
            rows = None
            if dialect == "postgres" and plan.location is not None:
                try:
                    rows = _stream_stock(conn, con, plan, {c: types[c] for c in plan.columns}, p, block)
                    typed = True
                except (pa.ArrowInvalid, duckdb.Error):  # a value the typed columns cannot hold exactly
                    con.execute("DELETE FROM erp_facts")
                    p.count = 0
            if rows is None:
                rows, _ = _read(conn, dialect, plan.rows_sql, plan.columns, {}, p, chunk_rows)
                typed = False  # all text: DuckDB casts the numbers
                _aggregate(con, plan, rows, typed=typed)
            if rows.num_rows:
                _aggregate(con, plan, rows, typed=typed, unmapped_only=True)
            p.done()
            snap.rows += p.count
        if "price" in selects:
            names = ["sku", "price_list", "amount", "currency", "compare_at"]
            p = prog("ERP prices")
            prices, _ = _read(conn, dialect, write(selects["price"], dialect), names, {}, p, chunk_rows)
            p.done()
            snap.rows += p.count
    finally:
        with conn.cursor() as cur:
            cur.execute("COMMIT")
    snap.read_seconds = time.monotonic() - started

    if prices is not None:
        con.register("_erp_prices", prices)
        con.execute(f"""INSERT INTO erp_facts SELECT 'price', sku, price_list, CAST(amount AS {VALUE}),
                                                     nullif(currency, '')
                        FROM _erp_prices""")
        con.unregister("_erp_prices")
        con.execute("DELETE FROM erp_unmapped WHERE sku IN (SELECT sku FROM erp_facts WHERE kind = 'price')")
    snap.seconds = time.monotonic() - started
    return snap
