"""``erpsync demo``: the whole path on a fresh machine, leaving nothing running.

Throwaway PostgreSQL with a small ERP → logical replication → normalizer → outbox → webhook sink →
shop emulator; a scripted burst of ERP transactions with a live status line; then a summary."""

from __future__ import annotations

import os
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

import click
import psycopg2

from erpsync.config import load_config
from erpsync.pipeline import Pipeline
from erpsync.throwaway import wait_for
from erpsync.throwaway.postgres import ThrowawayPostgres
from sinks.emulators.webhook import WebhookEmulator

WAREHOUSES = {"WH-MAD": "madrid", "WH-BCN": "madrid", "WH-MIL": "milan"}
SAFETY = 1


def expected_stock(conn: psycopg2.extensions.connection) -> dict[tuple[str, str], int]:
    """What the shop must show, computed straight from the ERP tables (independently of erpsync)."""
    with conn.cursor() as cur:
        cur.execute("SELECT sku, warehouse_code, on_hand - reserved FROM stock_levels")
        sums: dict[tuple[str, str], float] = {}
        for sku, wh, qty in cur.fetchall():
            loc = WAREHOUSES.get(wh)
            if loc:
                sums[(sku, loc)] = sums.get((sku, loc), 0) + float(qty)
    import math

    return {k: max(0, math.floor(v) - SAFETY) for k, v in sums.items()}


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def run_demo(transactions: int = 2000, rate: int = 500, skus: int = 200) -> int:
    out = click.echo
    tty = sys.stdout.isatty()
    out(click.style("erpsync demo", bold=True) + f": {skus} SKUs × {len(WAREHOUSES)} warehouses, "
        f"{transactions} ERP transactions at {rate}/s")
    work = Path(tempfile.mkdtemp(prefix="erpsync-demo-"))
    pg = ThrowawayPostgres()
    emu = WebhookEmulator(secret=secrets.token_hex(16))
    stop = threading.Event()
    worker: threading.Thread | None = None
    try:
        t0 = time.monotonic()
        pg.start()
        dsn = pg.create_database("erp")
        out(f"  started throwaway PostgreSQL (wal_level=logical) on port {pg.port} "
            f"in {time.monotonic() - t0:.1f}s")
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(resources.files("erpsync.demo").joinpath("schema.sql").read_text())
            rows = [(f"SKU-{i:05d}", wh, random.randint(0, 50), random.randint(0, 3))
                    for i in range(skus) for wh in WAREHOUSES]
            cur.executemany("INSERT INTO stock_levels (sku, warehouse_code, on_hand, reserved) "
                            "VALUES (%s,%s,%s,%s)", rows)
        out(f"  loaded the ERP: {len(rows)} stock rows")
        emu.start()
        out(f"  shop emulator (webhook) listening on {emu.url}")
        os.environ.update({"ERP_DSN": dsn, "SHOP_URL": emu.endpoint, "SHOP_SECRET": emu.secret.decode(),
                           "OUTBOX_PATH": str(work / "outbox.db")})
        cfg = load_config(str(resources.files("erpsync.demo").joinpath("demo.yaml")))
        pipeline = Pipeline(cfg, drain_seconds=2)
        worker = threading.Thread(target=pipeline.run, args=(stop,), name="erp-side", daemon=True)
        worker.start()
        expected = expected_stock(conn)
        t1 = time.monotonic()
        if not wait_for(lambda: emu.stock() == expected, timeout=120):
            out(click.style("  snapshot did not converge", fg="red"))
            return 1
        out(f"  initial snapshot: shop holds {len(expected)} stock values, "
            f"converged in {time.monotonic() - t1:.2f}s")
        emu.latencies.clear()
        received0 = emu.received

        out(f"  burst: {transactions} ERP transactions (sales, receipts, reservations, transfers)…")
        t2 = time.monotonic()
        skulist = [f"SKU-{i:05d}" for i in range(skus)]
        with conn.cursor() as cur:
            for n in range(transactions):
                target = t2 + n / rate
                if (delay := target - time.monotonic()) > 0:
                    time.sleep(delay)
                sku = random.choice(skulist)
                wh = random.choice(list(WAREHOUSES))
                kind = random.random()
                cur.execute("BEGIN")
                if kind < 0.6:  # a sale
                    cur.execute("UPDATE stock_levels SET on_hand = on_hand - 1, updated_at = now() "
                                "WHERE sku=%s AND warehouse_code=%s", (sku, wh))
                elif kind < 0.8:  # goods received
                    cur.execute("UPDATE stock_levels SET on_hand = on_hand + %s WHERE sku=%s AND "
                                "warehouse_code=%s", (random.randint(5, 20), sku, wh))
                elif kind < 0.9:  # reservation
                    cur.execute("UPDATE stock_levels SET reserved = reserved + 1 WHERE sku=%s AND "
                                "warehouse_code=%s", (sku, wh))
                else:  # transfer between two warehouses, one transaction
                    other = random.choice([w for w in WAREHOUSES if w != wh])
                    cur.execute("UPDATE stock_levels SET on_hand = on_hand - 2 WHERE sku=%s AND "
                                "warehouse_code=%s", (sku, wh))
                    cur.execute("UPDATE stock_levels SET on_hand = on_hand + 2 WHERE sku=%s AND "
                                "warehouse_code=%s", (sku, other))
                cur.execute("COMMIT")
                if tty and n % 50 == 0:
                    lat = list(emu.latencies[-500:])
                    p50 = _pct(lat, 50) * 1000
                    sys.stdout.write(f"\r    committed {n + 1:>6}  shop updates {emu.received - received0:>6}"
                                     f"  latency p50 {p50:6.1f} ms  ")
                    sys.stdout.flush()
        if tty:
            sys.stdout.write("\n")
        burst = time.monotonic() - t2
        expected = expected_stock(conn)
        t3 = time.monotonic()
        converged = wait_for(lambda: emu.stock() == expected, timeout=60)
        tail = time.monotonic() - t3
        lat = list(emu.latencies)
        shop = emu.stock()
        wrong = sum(1 for k, v in expected.items() if shop.get(k) != v)
        out("")
        out(click.style("summary", bold=True))
        out(f"  ERP transactions       {transactions} in {burst:.1f}s ({transactions / burst:.0f}/s)")
        out(f"  shop updates received  {emu.received - received0} (coalesced per SKU and location)")
        out(f"  end-to-end latency     p50 {_pct(lat, 50) * 1000:.1f} ms   "
            f"p99 {_pct(lat, 99) * 1000:.1f} ms   max {max(lat, default=0) * 1000:.1f} ms"
            "   (ERP commit → shop received)")
        out(f"  caught up              {tail:.2f}s after the last ERP commit")
        out(f"  out-of-order writes    {len(emu.regressions)}")
        sample = sorted(expected)[:3]
        for k in sample:
            out(f"    {k[0]} @ {k[1]:<7} ERP says {expected[k]:>4}   shop shows {shop.get(k)}")
        if converged and wrong == 0:
            msg = f"  OK: the shop equals the ERP for all {len(expected)} stock values"
            out(click.style(msg, fg="green"))
            if lat:
                out(f"  (median {statistics.median(lat) * 1000:.1f} ms)")
            return 0
        out(click.style(f"  MISMATCH: {wrong} of {len(expected)} values differ", fg="red"))
        return 1
    finally:
        stop.set()
        if worker is not None:
            worker.join(30)
        emu.stop()
        pg.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
