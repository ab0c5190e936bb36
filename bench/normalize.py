"""Changes/s through the normalizer alone (no database, no sinks) for config/odoo-postgres.yaml.

Seeds products, locations and price lists, then streams stock_quant updates in chunks of 500 with an
outbox-style flush per chunk (as the pipeline's group commit does). Usage: python bench/normalize.py [N]
(--help for options)"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc.changes import RowChange, SourceInfo
from cdc.normalize.normalizer import normalizer_for
from erpsync.config import load_config


def main(n: int = 200_000, skus: int = 20_000) -> None:
    os.environ.setdefault("ERP_DSN", "postgresql://bench")
    cfg = load_config(Path(__file__).resolve().parent.parent / "config" / "odoo-postgres.yaml")
    with tempfile.TemporaryDirectory() as d:
        conn = sqlite3.connect(str(Path(d) / "state.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        norm = normalizer_for(cfg, conn)
        src = {
            t: SourceInfo("postgresql", "erp", "public", t)
            for t in ("product_product", "stock_location", "stock_quant", "product_pricelist")
        }

        def commit(changes: list[RowChange]) -> None:
            conn.execute("BEGIN")
            norm.apply(changes)
            norm.flush()
            conn.execute("COMMIT")

        commit(
            [
                RowChange(
                    "r", src["stock_location"], None, {"id": i, "barcode": b, "usage": "internal"}, ("id",)
                )
                for i, b in enumerate(["WH-MAD", "WH-BCN", "WH-MIL", "WH-X", "WH-Y"], 1)
            ]
        )
        for lo in range(0, skus, 5000):
            commit(
                [
                    RowChange(
                        "r",
                        src["product_product"],
                        None,
                        {
                            "id": i,
                            "default_code": f"SKU-{i}",
                            "active": True,
                            "sale_ok": True,
                            "x_safety_stock": None,
                        },
                        ("id",),
                    )
                    for i in range(lo, min(skus, lo + 5000))
                ]
            )
        rng = random.Random(1)
        quants = skus * 5
        for lo in range(0, quants, 5000):
            commit(
                [
                    RowChange(
                        "r",
                        src["stock_quant"],
                        None,
                        {
                            "id": q,
                            "product_id": q // 5,
                            "location_id": q % 5 + 1,
                            "quantity": Decimal(rng.randint(0, 50)),
                            "reserved_quantity": Decimal(0),
                        },
                        ("id",),
                    )
                    for q in range(lo, min(quants, lo + 5000))
                ]
            )
        started = time.perf_counter()
        done = 0
        while done < n:
            chunk = []
            for _ in range(500):
                q = rng.randrange(quants)
                chunk.append(
                    RowChange(
                        "u",
                        src["stock_quant"],
                        {"id": q},
                        {
                            "id": q,
                            "product_id": q // 5,
                            "location_id": q % 5 + 1,
                            "quantity": Decimal(rng.randint(0, 50)),
                            "reserved_quantity": Decimal(rng.randint(0, 3)),
                        },
                        ("id",),
                    )
                )
            commit(chunk)
            done += len(chunk)
        secs = time.perf_counter() - started
        print(
            f"odoo-postgres.yaml: {done} stock_quant updates in {secs:.2f} s = {done / secs:,.0f} changes/s "
            f"({skus} SKUs x 5 locations, 2 lookups per row, chunks of 500, flush per chunk)"
        )


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("changes", nargs="?", type=int, default=200_000, help="stock_quant updates to stream")
    main(ap.parse_args().changes)
