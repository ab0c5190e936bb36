"""Peak RSS of the normalizer + outbox for a big snapshot, then a long stream (config/odoo-postgres.yaml).

A snapshot of ``--skus`` products × 5 locations (stock_quant rows as op "r" chunks of 5,000 through
Normalizer.apply/flush and Outbox.write_facts, all in ONE outbox transaction, as erpsync/pipeline.py's
``_snapshot`` does), then ``--updates`` streamed stock_quant updates (chunks of 1,000, a group commit every
20,000 rows). Prints VmHWM (peak RSS) and VmRSS every 500k rows and at the end, with rows/s. No database,
no sinks: only what the reader process itself holds. ``--tracemalloc`` names the top growing allocations.

    python bench/memory.py                       # 1,000,000 SKUs x 5 = 5,000,000 rows, 1,000,000 updates
    python bench/memory.py --skus 20000 --updates 100000   # a quick run
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc.changes import RowChange, SourceInfo
from cdc.facts import Fact, FactKey
from cdc.normalize.normalizer import normalizer_for
from cdc.outbox.store import Outbox
from erpsync.config import load_config

LOCATIONS = ["WH-MAD", "WH-BCN", "WH-MIL", "WH-X", "WH-Y"]


def status_mb(field: str) -> float:
    """A /proc/self/status memory field (VmHWM: peak RSS, VmRSS: current) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def report(phase: str, rows: int, started: float) -> None:
    secs = time.perf_counter() - started
    print(f"{phase:9} {rows:>10,} rows  peak RSS {status_mb('VmHWM'):7.1f} MB  "
          f"RSS {status_mb('VmRSS'):7.1f} MB  {rows / secs:>9,.0f} rows/s", flush=True)


def main(skus: int, updates: int, use_tracemalloc: bool) -> None:
    os.environ.setdefault("ERP_DSN", "postgresql://bench")
    cfg = load_config(Path(__file__).resolve().parent.parent / "config" / "odoo-postgres.yaml")
    if use_tracemalloc:
        import tracemalloc

        tracemalloc.start(10)
    src = {t: SourceInfo("postgresql", "erp", "public", t)
           for t in ("product_product", "stock_location", "stock_quant")}
    rng = random.Random(1)
    quants = skus * len(LOCATIONS)
    print(f"start: {skus:,} SKUs x {len(LOCATIONS)} = {quants:,} stock rows, then {updates:,} updates; "
          f"peak RSS {status_mb('VmHWM'):.1f} MB", flush=True)
    with tempfile.TemporaryDirectory() as d:
        outbox = Outbox(Path(d) / "outbox.db", {"shop": ["stock", "price"]}, durable=False)
        norm = normalizer_for(cfg, outbox.conn)

        def apply(changes: list[RowChange], into: dict[FactKey, Fact]) -> None:
            for f in norm.apply(changes, "p", 0.0):
                into[f.key] = f

        # snapshot: one outbox transaction, flushed chunk by chunk (pipeline._snapshot)
        started = time.perf_counter()
        outbox.begin()
        facts: dict[FactKey, Fact] = {}
        apply([RowChange("r", src["stock_location"], None, {"id": i, "barcode": b, "usage": "internal"},
                         ("id",)) for i, b in enumerate(LOCATIONS, 1)], facts)
        for lo in range(0, skus, 5000):
            apply([RowChange("r", src["product_product"], None,
                             {"id": i, "default_code": f"SKU-{i:07d}", "active": True, "sale_ok": True,
                              "x_safety_stock": None}, ("id",))
                   for i in range(lo, min(skus, lo + 5000))], facts)
            outbox.write_facts(list(facts.values()))
            norm.flush()
            facts = {}
        rows = 0
        snap_started = time.perf_counter()
        for lo in range(0, quants, 5000):
            apply([RowChange("r", src["stock_quant"], None,
                             {"id": q, "product_id": q // 5, "location_id": q % 5 + 1,
                              "quantity": Decimal(rng.randint(0, 50)), "reserved_quantity": Decimal(0)},
                             ("id",)) for q in range(lo, min(quants, lo + 5000))], facts)
            outbox.write_facts(list(facts.values()))
            norm.flush()
            facts = {}
            rows += 5000
            if rows % 500_000 == 0:
                report("snapshot", rows, snap_started)
        outbox.set_position("bench", "p")
        outbox.commit()
        report("snapshot", min(rows, quants), snap_started)
        if use_tracemalloc:
            base = tracemalloc.take_snapshot()

        # stream: chunks of 1,000 updates, a group commit (flush + facts + position) every 20,000 rows
        done = 0
        stream_started = time.perf_counter()
        while done < updates:
            for _ in range(20):
                chunk = []
                for _ in range(1000):
                    q = rng.randrange(quants)
                    chunk.append(RowChange("u", src["stock_quant"], {"id": q},
                                           {"id": q, "product_id": q // 5, "location_id": q % 5 + 1,
                                            "quantity": Decimal(rng.randint(0, 50)),
                                            "reserved_quantity": Decimal(rng.randint(0, 3))}, ("id",)))
                apply(chunk, facts)
                done += len(chunk)
            outbox.begin()
            norm.flush()
            outbox.write_facts(list(facts.values()))
            outbox.set_position("bench", f"p{done}")
            outbox.commit()
            facts = {}
            if done % 500_000 == 0:
                report("stream", done, stream_started)
        report("stream", done, stream_started)
        total = time.perf_counter() - started
        print(f"end: peak RSS {status_mb('VmHWM'):.1f} MB, RSS {status_mb('VmRSS'):.1f} MB, "
              f"{total:.0f} s in all", flush=True)
        if use_tracemalloc:
            for stat in tracemalloc.take_snapshot().compare_to(base, "lineno")[:10]:
                print("  grew:", stat)
        outbox.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skus", type=int, default=1_000_000, help="products (x 5 locations = stock rows)")
    ap.add_argument("--updates", type=int, default=1_000_000, help="streamed stock_quant updates")
    ap.add_argument("--tracemalloc", action="store_true", help="print the allocations that grew")
    a = ap.parse_args()
    main(a.skus, a.updates, a.tracemalloc)
