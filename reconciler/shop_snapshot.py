"""Shop side of a reconcile: the sink's listing into DuckDB as Arrow, in large typed chunks and one load."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa

from reconciler.erp_snapshot import VALUE
from reconciler.progress import Progress, Quiet

SCHEMA = pa.schema([("kind", pa.string()), ("sku", pa.string()), ("scope", pa.string()),
                    ("value", pa.decimal128(18, 8)), ("currency", pa.string())])


class CannotList(RuntimeError):
    """The sink has no way to list the shop (e.g. a webhook without list_url)."""


def _chunks(facts: Iterable[Any], chunk_rows: int) -> Iterable[pa.RecordBatch]:
    """Sink.snapshot() facts → record batches of SCHEMA, ``chunk_rows`` at a time: plain Python lists per
    column (the cheapest per-fact work), converted by Arrow once per chunk."""
    kind: list[str] = []
    sku: list[str] = []
    scope: list[str] = []
    value: list[int | Decimal | None] = []
    cur: list[str | None] = []
    for f in facts:
        v = f.value
        kind.append(f.kind)
        sku.append(f.sku)
        scope.append(f.key.scope)
        if f.kind == "stock":
            value.append(int(v["available"]))
            cur.append(None)
        else:
            amount = v.get("amount")
            value.append(None if amount is None else Decimal(str(amount)))
            cur.append(v.get("currency") or None)
        if len(kind) >= chunk_rows:
            yield pa.record_batch([kind, sku, scope, value, cur], schema=SCHEMA)
            kind, sku, scope, value, cur = [], [], [], [], []
    if kind:
        yield pa.record_batch([kind, sku, scope, value, cur], schema=SCHEMA)


def snapshot_shop(sink: Any, con: duckdb.DuckDBPyConnection, *, chunk_rows: int = 100_000,
                  progress: bool | None = None) -> int:
    """Make ``shop_facts(kind, sku, scope, value, currency)`` the sink's listing; returns the number of
    facts listed.

    A sink may offer ``snapshot_arrow()`` (record batches or tables with kind, sku, scope, value — any
    type DuckDB casts to a number — and currency) to skip per-fact Python objects; otherwise its
    ``snapshot()`` facts are gathered into Arrow chunks."""
    prog = Progress(f"shop {sink.name}", enabled=progress) if progress is not False else Quiet()
    fast = getattr(sink, "snapshot_arrow", None)
    batches: list[pa.RecordBatch | pa.Table] = []
    try:
        for b in fast() if fast is not None else _chunks(sink.snapshot(), chunk_rows):
            batches.append(b)
            prog.add(b.num_rows)
    except NotImplementedError as e:
        raise CannotList(str(e)) from None
    prog.done()
    if batches:
        tables = [b if isinstance(b, pa.Table) else pa.Table.from_batches([b]) for b in batches]
        listing = pa.concat_tables(tables, promote_options="permissive")
    else:
        listing = SCHEMA.empty_table()
    # not grouped by key: a key listed twice (two variants with one SKU) is kept twice and diff.classify
    # shows its spread as drift (grouping 3M keys here would cost more than the whole diff)
    con.register("_shop_listing", listing)
    con.execute(f"""
        CREATE OR REPLACE TABLE shop_facts AS
        SELECT kind, sku, scope, TRY_CAST(value AS {VALUE}) AS value, nullif(currency, '') AS currency
        FROM _shop_listing WHERE sku IS NOT NULL AND sku <> ''""")
    con.unregister("_shop_listing")
    return prog.count
