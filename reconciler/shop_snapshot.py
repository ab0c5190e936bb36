"""Shop side of a reconcile: the sink's listing (Sink.snapshot()) into DuckDB in Arrow chunks."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa

from reconciler.progress import Progress, Quiet

SCHEMA = pa.schema([("kind", pa.string()), ("sku", pa.string()), ("scope", pa.string()),
                    ("value", pa.string()), ("currency", pa.string())])


class CannotList(RuntimeError):
    """The sink has no way to list the shop (e.g. a webhook without list_url)."""


def snapshot_shop(sink: Any, con: duckdb.DuckDBPyConnection, *, chunk_rows: int = 100_000,
                  progress: bool | None = None) -> int:
    """Fill ``shop_facts(kind, sku, scope, value, currency)``; returns the number of facts listed.

    A sink may offer ``snapshot_arrow()`` (record batches with the columns above) to skip per-fact
    Python objects; otherwise its ``snapshot()`` facts are gathered into Arrow chunks."""
    con.execute("CREATE OR REPLACE TABLE shop_raw (kind VARCHAR, sku VARCHAR, scope VARCHAR, value VARCHAR, "
                "currency VARCHAR)")
    prog = Progress(f"shop {sink.name}", enabled=progress) if progress is not False else Quiet()

    def insert(batch: pa.Table | pa.RecordBatch) -> None:
        con.register("_shop", batch)
        con.execute("INSERT INTO shop_raw SELECT kind, sku, scope, value, currency FROM _shop")
        con.unregister("_shop")
        prog.add(batch.num_rows)

    fast = getattr(sink, "snapshot_arrow", None)
    try:
        if fast is not None:
            for batch in fast():
                insert(batch)
        else:
            cols: list[list[Any]] = [[], [], [], [], []]
            for f in sink.snapshot():
                v = f.value
                if f.kind == "stock":
                    row = ("stock", f.sku, f.key.scope, str(int(v["available"])), None)
                else:
                    amount = v.get("amount")
                    row = ("price", f.sku, f.key.scope, None if amount is None else str(Decimal(str(amount))),
                           v.get("currency") or None)
                for c, x in zip(cols, row, strict=True):
                    c.append(x)
                if len(cols[0]) >= chunk_rows:
                    insert(pa.Table.from_arrays([pa.array(c, pa.string()) for c in cols], schema=SCHEMA))
                    cols = [[], [], [], [], []]
            if cols[0]:
                insert(pa.Table.from_arrays([pa.array(c, pa.string()) for c in cols], schema=SCHEMA))
    except NotImplementedError as e:
        raise CannotList(str(e)) from None
    prog.done()
    # one value per key: a shop listing the same SKU twice (two variants) shows its spread as drift
    con.execute("""
        CREATE OR REPLACE TABLE shop_facts AS
        SELECT kind, sku, scope, max(TRY_CAST(value AS DECIMAL(38,4))) AS value,
               min(TRY_CAST(value AS DECIMAL(38,4))) AS value_min, max(currency) AS currency
        FROM shop_raw WHERE sku IS NOT NULL AND sku <> '' GROUP BY kind, sku, scope""")
    return prog.count
