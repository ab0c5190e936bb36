"""End-to-end latency: ERP commit → shop emulator received, at a steady rate of single-row ERP transactions.

Throwaway PostgreSQL + WebhookEmulator + the Pipeline in-process (as in ``erpsync demo``). A writer commits
single-row UPDATEs paced at ``--rate`` per second for ``--seconds``; each fact carries its ERP commit time
and the emulator records ``receive time − commit time``. The first ``--warmup`` seconds are excluded.
Goal: p99 < 250 ms at 1,000 changes/s.

    .venv/bin/python bench/latency.py                          # 1,000/s for 20 s
    .venv/bin/python bench/latency.py --rate 2000 --seconds 10
"""

from __future__ import annotations

import argparse
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg2
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from erpsync.config import load_config
from erpsync.pipeline import Pipeline
from erpsync.testing import wait_for
from erpsync.testing.postgres import ThrowawayPostgres
from sinks.emulators.webhook import WebhookEmulator

LOCATIONS = {"WH-MAD": "madrid", "WH-BCN": "madrid", "WH-MIL": "milan"}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="ERP transactions (one row each) per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured duration")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds at the same rate before measuring")
    ap.add_argument("--skus", type=int, default=5_000, help="SKUs (× 3 warehouses)")
    ap.add_argument("--commit-interval-ms", type=int, default=None,
                    help="outbox group-commit window (default: the config default)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="erpsync-latency-"))
    pg = ThrowawayPostgres()
    emu = WebhookEmulator(secret=secrets.token_hex(16))
    stop = threading.Event()
    worker: threading.Thread | None = None
    try:
        pg.start()
        dsn = pg.create_database("erp")
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("""CREATE TABLE stock_levels (
                id bigserial PRIMARY KEY, sku text NOT NULL, warehouse_code text NOT NULL,
                on_hand numeric(12,3) NOT NULL DEFAULT 0, reserved numeric(12,3) NOT NULL DEFAULT 0,
                note text, updated_at timestamptz NOT NULL DEFAULT now(), UNIQUE (sku, warehouse_code))""")
            cur.execute("INSERT INTO stock_levels (sku, warehouse_code, on_hand, reserved) "
                        "SELECT format('SKU-%%05s', s), w, 1000, 0 FROM generate_series(0, %s - 1) s, "
                        "unnest(%s::text[]) w", (args.skus, list(LOCATIONS)))
            cur.execute("SELECT max(id) FROM stock_levels")
            max_id = int(cur.fetchone()[0])
        emu.start()
        outbox: dict[str, object] = {"path": str(work / "outbox.db")}
        if args.commit_interval_ms is not None:
            outbox["commit_interval_ms"] = args.commit_interval_ms
        cfg_data = {
            "source": {"kind": "postgres", "dsn": dsn, "slot": "erpsync_lat", "publication": "erpsync_lat"},
            "stock": {"table": "public.stock_levels", "sku": "sku", "warehouse": "warehouse_code",
                      "quantity": "on_hand - reserved", "locations": LOCATIONS, "safety_stock": 1},
            "sinks": [{"name": "shop", "kind": "webhook", "url": emu.endpoint,
                       "secret": emu.secret.decode()}],
            "outbox": outbox,
        }
        (work / "erpsync.yaml").write_text(yaml.safe_dump(cfg_data))
        cfg = load_config(str(work / "erpsync.yaml"))
        pipeline = Pipeline(cfg, drain_seconds=2)
        worker = threading.Thread(target=pipeline.run, args=(stop,), name="erp-side", daemon=True)
        worker.start()
        n_values = args.skus * 2  # (sku, madrid) and (sku, milan)
        if not wait_for(lambda: len(emu.stock()) == n_values, timeout=300):
            raise SystemExit("the snapshot did not reach the emulator")
        print(f"snapshot delivered ({n_values:,} stock values); writing {args.rate:,.0f} single-row "
              f"transactions/s for {args.warmup:.0f}s warm-up + {args.seconds:.0f}s measured")

        rng = random.Random(7)
        received0 = 0
        lag_max = 0.0
        committed = 0
        with conn.cursor() as cur:
            t0 = time.monotonic()
            total = int((args.warmup + args.seconds) * args.rate)
            warm_n = int(args.warmup * args.rate)
            for n in range(total):
                if n == warm_n:
                    with emu.lock:
                        emu.latencies.clear()
                        received0 = emu.received
                target = t0 + n / args.rate
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    lag_max = max(lag_max, -delay)
                # autocommit: each statement is one ERP transaction of one row
                cur.execute("UPDATE stock_levels SET on_hand = on_hand + %s WHERE id = %s",
                            (rng.choice((-1, 1, 2)), rng.randint(1, max_id)))
                committed += 1
            write_s = time.monotonic() - t0
        # let the last ones arrive
        time.sleep(1.5)
        with emu.lock:
            lat = list(emu.latencies)
            received = emu.received - received0
        achieved = total / write_s
        print(f"writer: {total:,} transactions in {write_s:.1f}s ({achieved:,.0f}/s; max behind schedule "
              f"{lag_max * 1000:.0f} ms)")
        if not lat:
            raise SystemExit("no latencies recorded")
        ms = [x * 1000 for x in lat]
        print(f"shop updates received (measured window): {received:,}; latencies: {len(ms):,}")
        print(f"latency ERP commit → emulator received (ms): p50 {pct(ms, 50):.1f}  p90 {pct(ms, 90):.1f}  "
              f"p99 {pct(ms, 99):.1f}  max {max(ms):.1f}  count {len(ms)}")
        conn.close()
    finally:
        stop.set()
        if worker is not None:
            worker.join(30)
        emu.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
