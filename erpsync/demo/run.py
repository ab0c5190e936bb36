"""``erpsync demo``: the whole path on a fresh machine, leaving nothing running.

A throwaway PostgreSQL holding an Odoo-like ERP (config/schemas/odoo-postgres.sql) → logical replication →
the mapping of config/odoo-postgres.yaml (lookups, reservations, safety stock, price lists) → outbox →
webhook sink → shop emulator; a scripted burst of ERP transactions with a live status line; then a
summary that checks the shop against the mapping's own snapshot SELECT run on the ERP."""

from __future__ import annotations

import os
import random
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import psycopg2

from cdc.mapping.safe_sql import checked
from cdc.mapping.snapshot_sql import facts_select
from erpsync.config import Config, load_config
from erpsync.pipeline import Pipeline
from erpsync.testing import wait_for
from erpsync.testing.postgres import ThrowawayPostgres
from sinks.emulators.webhook import WebhookEmulator

EXAMPLES = Path(__file__).resolve().parents[2] / "config"
LOCATIONS = [(1, "WH-MAD"), (2, "WH-BCN"), (3, "WH-MIL")]
# (stock, prices) as the ERP says or the shop has them
View = tuple[dict[tuple[str, str], int], dict[tuple[str, str], Decimal]]


def expected(conn: Any, cfg: Config) -> View:
    """What the shop must show: the mapping's snapshot SELECT, run on the ERP (not erpsync's stream)."""
    selects = facts_select(cfg, "postgres")
    with conn.cursor() as cur:
        cur.execute(checked(conn, selects["stock"], "postgres"))
        stock = {(s, loc): int(a) for s, loc, a in cur.fetchall()}
        cur.execute(checked(conn, selects["price"], "postgres"))
        prices = {(r[0], r[1]): Decimal(str(r[2])) for r in cur.fetchall()}
    return stock, prices


def shop_view(emu: WebhookEmulator) -> View:
    with emu.lock:
        prices = {(k[1], k[2]): Decimal(v["amount"]) for k, v in emu.values.items() if k[0] == "price"}
    return emu.stock(), prices


def differences(want: View, got: View) -> int:
    (ws, wp), (gs, gp) = want, got
    bad = sum(1 for k, v in ws.items() if gs.get(k) != v)
    bad += sum(1 for k, v in gs.items() if k not in ws and v != 0)  # retired keys must read 0
    return bad + sum(1 for k, v in wp.items() if gp.get(k) != v)


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def _seed(cur: Any, skus: int, rng: random.Random) -> None:
    cur.execute((EXAMPLES / "schemas" / "odoo-postgres.sql").read_text())
    cur.executemany("INSERT INTO stock_location (id, barcode, usage) VALUES (%s,%s,'internal')", LOCATIONS)
    cur.execute("INSERT INTO stock_location (id, barcode, usage) VALUES (9, 'CUSTOMERS', 'customer')")
    cur.executemany("INSERT INTO product_product (id, default_code, x_safety_stock) VALUES (%s,%s,%s)",
                    [(i, f"SKU-{i:05d}", rng.choice([None, None, 1, 2])) for i in range(1, skus + 1)])
    cur.executemany("INSERT INTO stock_quant (product_id, location_id, quantity, reserved_quantity) "
                    "VALUES (%s,%s,%s,%s)", [(p, loc, rng.randint(0, 50), rng.randint(0, 3))
                                             for p in range(1, skus + 1) for loc, _ in LOCATIONS])
    cur.executemany("INSERT INTO product_pricelist (id, name, currency_code) VALUES (%s,%s,'EUR')",
                    [(1, "Retail"), (2, "Sale")])
    cur.executemany("INSERT INTO product_pricelist_item (pricelist_id, product_id, fixed_price) "
                    "VALUES (%s,%s,%s)", [(pl, p, Decimal(rng.randint(500, 9999)) / 100)
                                          for p in range(1, skus + 1) for pl in (1, 2)])


def _transaction(cur: Any, rng: random.Random, skus: int) -> None:
    """One ERP business transaction: a sale, a receipt, a reservation, a transfer or a new price."""
    p, (loc, _) = rng.randint(1, skus), rng.choice(LOCATIONS)
    r = rng.random()
    cur.execute("BEGIN")
    if r < 0.55:
        cur.execute("UPDATE stock_quant SET quantity = quantity - 1 WHERE product_id=%s AND location_id=%s",
                    (p, loc))
    elif r < 0.7:
        cur.execute("UPDATE stock_quant SET quantity = quantity + %s WHERE product_id=%s AND location_id=%s",
                    (rng.randint(5, 20), p, loc))
    elif r < 0.8:
        cur.execute("UPDATE stock_quant SET reserved_quantity = reserved_quantity + 1 "
                    "WHERE product_id=%s AND location_id=%s", (p, loc))
    elif r < 0.9:
        other = rng.choice([x for x, _ in LOCATIONS if x != loc])
        for where, delta in ((loc, -2), (other, 2)):
            cur.execute("UPDATE stock_quant SET quantity = quantity + %s "
                        "WHERE product_id=%s AND location_id=%s", (delta, p, where))
    else:
        cur.execute("INSERT INTO product_pricelist_item (pricelist_id, product_id, fixed_price, date_start) "
                    "VALUES (%s,%s,%s,%s)", (rng.randint(1, 2), p, Decimal(rng.randint(500, 9999)) / 100,
                                             datetime.now(UTC).replace(tzinfo=None)))
    cur.execute("COMMIT")


def _burst(cur: Any, rng: random.Random, skus: int, transactions: int, rate: int, pipeline: Pipeline,
           emu: WebhookEmulator, tty: bool) -> None:
    """The ERP workload at ``rate`` transactions a second, with a progress line on a terminal."""
    received0 = emu.received
    t0 = time.monotonic()
    for n in range(transactions):
        if (delay := t0 + n / rate - time.monotonic()) > 0:
            time.sleep(delay)
        _transaction(cur, rng, skus)
        if tty and n % 50 == 0:
            lag = pipeline.source.lag() if n % 500 == 0 else None
            p50 = _pct(list(emu.latencies[-500:]), 50) * 1000
            lag_txt = f"  slot lag {lag['bytes'] / 1024:6.1f} KiB" if lag else ""
            sys.stdout.write(f"\r    committed {n + 1:>6}  shop updates {emu.received - received0:>6}"
                             f"  latency p50 {p50:6.1f} ms{lag_txt}  ")
            sys.stdout.flush()
    if tty:
        sys.stdout.write("\n")


def _summary(want: View, emu: WebhookEmulator, transactions: int, burst: float, tail: float, received0: int,
             converged: bool) -> int:
    """Print what the burst did; 0 when the shop equals the ERP."""
    out = click.echo
    lat = list(emu.latencies)
    wrong = differences(want, shop_view(emu))
    stock, _prices = shop_view(emu)
    out("")
    out(click.style("summary", bold=True))
    out(f"  ERP transactions       {transactions} in {burst:.1f}s ({transactions / burst:.0f}/s)")
    out(f"  shop updates received  {emu.received - received0} (newest value per SKU and location / list)")
    out(f"  end-to-end latency     p50 {_pct(lat, 50) * 1000:.1f} ms   "
        f"p99 {_pct(lat, 99) * 1000:.1f} ms   max {max(lat, default=0) * 1000:.1f} ms"
        "   (ERP commit → shop received)")
    out(f"  caught up              {tail:.2f}s after the last ERP commit")
    out(f"  out-of-order writes    {len(emu.regressions)}")
    for k in sorted(want[0])[:3]:
        out(f"    {k[0]} @ {k[1]:<7} ERP says {want[0][k]:>4}   shop shows {stock.get(k)}")
    if converged and wrong == 0 and not emu.regressions:
        msg = f"  OK: the shop equals the ERP ({len(want[0])} stock values, {len(want[1])} prices)"
        out(click.style(msg, fg="green"))
        return 0
    out(click.style(f"  MISMATCH: {wrong} values differ", fg="red"))
    return 1


def run_demo(transactions: int = 2000, rate: int = 500, skus: int = 200) -> int:
    out = click.echo
    tty = sys.stdout.isatty()
    if not (EXAMPLES / "odoo-postgres.yaml").exists():
        out(f"error: the example config is missing ({EXAMPLES}); run the demo from a source checkout",
            err=True)
        return 1
    out(click.style("erpsync demo", bold=True) + f": Odoo-like ERP, {skus} products × {len(LOCATIONS)} "
        f"warehouses, {transactions} ERP transactions at {rate}/s")
    rng = random.Random(42)
    work = Path(tempfile.mkdtemp(prefix="erpsync-demo-"))
    pg = ThrowawayPostgres()
    emu = WebhookEmulator()
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
        cur = conn.cursor()
        _seed(cur, skus, rng)
        out(f"  loaded the ERP: {skus} products, {skus * len(LOCATIONS)} stock quants, "
            f"{skus * 2} price lines")
        emu.start()
        out(f"  shop emulator (webhook) listening on {emu.url}")
        os.environ.update({"ERP_DSN": dsn, "SHOP_URL": emu.endpoint, "OUTBOX_PATH": str(work / "outbox.db")})
        cfg = load_config(EXAMPLES / "odoo-postgres.yaml")
        cfg.ops.listen = "127.0.0.1:0"
        pipeline = Pipeline(cfg, drain_seconds=2)
        worker = threading.Thread(target=pipeline.run, args=(stop,), name="erp-side", daemon=True)
        worker.start()
        want = expected(conn, cfg)
        t1 = time.monotonic()
        if not wait_for(lambda: differences(want, shop_view(emu)) == 0, timeout=120):
            out(click.style("  snapshot did not converge", fg="red"))
            return 1
        out(f"  initial snapshot: shop holds {len(want[0])} stock values and {len(want[1])} prices, "
            f"converged in {time.monotonic() - t1:.2f}s")
        emu.latencies.clear()
        received0 = emu.received
        out(f"  burst: {transactions} ERP transactions (sales, receipts, reservations, transfers, prices)…")
        t2 = time.monotonic()
        _burst(cur, rng, skus, transactions, rate, pipeline, emu, tty)
        burst = time.monotonic() - t2
        want = expected(conn, cfg)
        t3 = time.monotonic()
        converged = wait_for(lambda: differences(want, shop_view(emu)) == 0, timeout=60)
        tail = time.monotonic() - t3
        return _summary(want, emu, transactions, burst, tail, received0, converged)
    finally:
        stop.set()
        if worker is not None:
            worker.join(30)
        emu.stop()
        pg.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
