"""ERP-side throughput on PostgreSQL: erpsync (decode → mapping → outbox → LSN confirmed) vs pg_recvlogical.

Both drain already-written WAL from two slots created before the same workload, with the same plugin
(pgoutput) and options, so the figures are comparable. erpsync's figure ends when its slot's
``confirmed_flush_lsn`` reaches the workload's end LSN (i.e. every change is durably in the outbox and
confirmed to the server); pg_recvlogical's ends when it exits at ``--endpos``. The last line is
``ratio <erpsync rows/s ÷ pg_recvlogical rows/s>``.

    .venv/bin/python bench/pg_decode.py               # 500,000 row changes
    .venv/bin/python bench/pg_decode.py --rows 50000  # quick
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from erpsync.config import load_config
from erpsync.pipeline import Pipeline
from erpsync.testing.postgres import ThrowawayPostgres

LOCATIONS = {"WH-MAD": "madrid", "WH-BCN": "madrid", "WH-MIL": "milan"}
SLOT = "erpsync_bench"
PUB = "erpsync_bench"
RECV_SLOT = "recvlogical_bench"


def pg_recvlogical() -> str:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_recvlogical"), reverse=True)
    for cand in (shutil.which("pg_recvlogical"), *found):
        if cand and os.access(str(cand), os.X_OK):
            return str(cand)
    raise SystemExit("pg_recvlogical not found (apt-get install -y postgresql-client)")


def q(conn: Any, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall()) if cur.description else []


def confirmed(conn: Any, slot: str) -> int:
    rows = q(conn, "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots "
                   "WHERE slot_name = %s", (slot,))
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def setup(conn: Any, skus: int) -> int:
    q(conn, """CREATE TABLE stock_levels (
        id bigserial PRIMARY KEY, sku text NOT NULL, warehouse_code text NOT NULL,
        on_hand numeric(12,3) NOT NULL DEFAULT 0, reserved numeric(12,3) NOT NULL DEFAULT 0,
        note text, updated_at timestamptz NOT NULL DEFAULT now(), UNIQUE (sku, warehouse_code))""")
    q(conn, "INSERT INTO stock_levels (sku, warehouse_code, on_hand, reserved) "
            "SELECT format('SKU-%%05s', s), w, (s * 7) %% 41, s %% 4 FROM generate_series(0, %s - 1) s, "
            "unnest(%s::text[]) w", (skus, list(LOCATIONS)))
    return int(q(conn, "SELECT count(*) FROM stock_levels")[0][0])


def workload(conn: Any, rows: int, table_rows: int, txn_rows: int) -> int:
    """``rows`` UPDATEs in transactions of ``txn_rows`` rows (a mix: sales, receipts, reservations)."""
    done = 0
    i = 0
    while done < rows:
        n = min(txn_rows, rows - done)
        lo = (done % table_rows) + 1
        n = min(n, table_rows - lo + 1)
        kind = i % 3
        if kind == 0:
            sql = ("UPDATE stock_levels SET on_hand = on_hand - 1, updated_at = now() "
                   "WHERE id BETWEEN %s AND %s")
        elif kind == 1:
            sql = "UPDATE stock_levels SET on_hand = on_hand + 3 WHERE id BETWEEN %s AND %s"
        else:
            sql = "UPDATE stock_levels SET reserved = (reserved + 1) %% 5 WHERE id BETWEEN %s AND %s"
        with conn.cursor() as cur:
            cur.execute(sql, (lo, lo + n - 1))
            assert cur.rowcount == n, (cur.rowcount, n)
        done += n
        i += 1
    return i


def run_recvlogical(pg: ThrowawayPostgres, dbname: str, end_lsn: str) -> float:
    args = [pg_recvlogical(), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d", dbname,
            "--slot", RECV_SLOT, "--start", "-f", "/dev/null", "--endpos", end_lsn, "--no-loop",
            "-o", "proto_version=1", "-o", f"publication_names={PUB}", "-o", "messages=true"]
    t0 = time.perf_counter()
    subprocess.run(args, check=True)
    return time.perf_counter() - t0


def write_config(work: Path, dsn: str) -> Path:
    cfg = {
        # status_interval 0.05 s: feedback (the confirmed LSN we time) is sent at most that late
        "source": {"kind": "postgres", "dsn": dsn, "slot": SLOT, "publication": PUB,
                   "status_interval_seconds": 0.05, "heartbeat_seconds": 3600},
        "stock": {"table": "public.stock_levels", "sku": "sku", "warehouse": "warehouse_code",
                  "quantity": "on_hand - reserved", "locations": LOCATIONS, "safety_stock": 1},
        # A configured sink (its deliveries rows are written, as in production); no delivery thread runs.
        "sinks": [{"name": "shop", "kind": "webhook", "url": "http://127.0.0.1:9/hook", "unsigned": True}],
        "outbox": {"path": str(work / "outbox.db")},
    }
    path = work / "erpsync.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_pipeline(cfg_path: Path, until: Any, timeout: float, profile: str | None = None) -> tuple[float, Any]:
    """Run the ERP side in a thread until ``until()`` is true; returns (seconds, stats)."""
    cfg = load_config(str(cfg_path))
    pipeline = Pipeline(cfg, sinks=[])
    stop = threading.Event()
    err: list[BaseException] = []
    prof = cProfile.Profile() if profile else None

    def target() -> None:
        try:
            if prof is not None:
                prof.runcall(pipeline.run, stop)
            else:
                pipeline.run(stop)
        except BaseException as e:
            err.append(e)

    t0 = time.perf_counter()
    th = threading.Thread(target=target, name="erp-side", daemon=True)
    th.start()
    while not until():
        if err or not th.is_alive():
            raise SystemExit(f"pipeline stopped early: {err[0] if err else 'no error'}")
        if time.perf_counter() - t0 > timeout:
            raise SystemExit("timed out waiting for erpsync to confirm the end LSN")
        time.sleep(0.005)
    dt = time.perf_counter() - t0
    stop.set()
    th.join(60)
    if err:
        raise SystemExit(f"pipeline failed: {err[0]}")
    if prof is not None and profile:
        prof.dump_stats(profile)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return dt, pipeline.stats


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000, help="row changes (default 500000)")
    ap.add_argument("--skus", type=int, default=5_000, help="SKUs (× 3 warehouses) in the stock table")
    ap.add_argument("--txn-rows", type=int, default=1_000, help="rows per ERP transaction")
    ap.add_argument("--profile", metavar="FILE", help="cProfile the ERP side into FILE (slows it down)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="erpsync-bench-"))
    pg = ThrowawayPostgres()
    try:
        pg.start()
        dsn = pg.create_database("erp")
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        table_rows = setup(conn, args.skus)
        cfg_path = write_config(work, dsn)
        print(f"PostgreSQL {q(conn, 'SHOW server_version')[0][0]} on port {pg.port}; "
              f"stock table {table_rows:,} rows ({args.skus:,} SKUs × {len(LOCATIONS)} warehouses)")

        # erpsync's slot: the pipeline's own initial snapshot creates it (then the pipeline stops).
        t0 = time.perf_counter()
        outbox_db = work / "outbox.db"

        def snapshot_done() -> bool:
            if not outbox_db.exists():
                return False
            import sqlite3

            c = sqlite3.connect(str(outbox_db), timeout=30)
            try:
                return bool(c.execute("SELECT count(*) FROM positions WHERE snapshot_done").fetchone()[0])
            except sqlite3.Error:
                return False
            finally:
                c.close()

        run_pipeline(cfg_path, snapshot_done, timeout=300)
        print(f"erpsync snapshot (creates slot {SLOT}) in {time.perf_counter() - t0:.2f}s")
        subprocess.run([pg_recvlogical(), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                        "-d", "erp", "--slot", RECV_SLOT, "--create-slot", "-P", "pgoutput"], check=True)
        start_lsn = confirmed(conn, RECV_SLOT)

        t0 = time.perf_counter()
        txns = workload(conn, args.rows, table_rows, args.txn_rows)
        end_lsn = q(conn, "SELECT pg_current_wal_lsn()::text")[0][0]
        end = int(q(conn, "SELECT (%s::pg_lsn - '0/0'::pg_lsn)::bigint", (end_lsn,))[0][0])
        wt = time.perf_counter() - t0
        print(f"workload: {args.rows:,} row changes in {txns:,} transactions in {wt:.1f}s "
              f"({args.rows / wt:,.0f} rows/s); {(end - start_lsn) / 1e6:.0f} MB of WAL, end LSN {end_lsn}")

        theirs_s = run_recvlogical(pg, "erp", end_lsn)
        theirs = args.rows / theirs_s
        print(f"pg_recvlogical (pgoutput, to --endpos)        {theirs_s:6.2f}s  {theirs:10,.0f} rows/s")

        ours_s, stats = run_pipeline(cfg_path, lambda: confirmed(conn, SLOT) >= end, timeout=1800,
                                     profile=args.profile)
        if stats.changes != args.rows:
            raise SystemExit(f"erpsync saw {stats.changes} changes, expected {args.rows}")
        ours = args.rows / ours_s
        print(f"erpsync ERP side (decode→outbox→confirmed)    {ours_s:6.2f}s  {ours:10,.0f} rows/s  "
              f"({stats.transactions} txns, {stats.commits} outbox commits, {stats.facts:,} facts changed)")
        conn.close()
        print(f"ratio {ours / theirs:.3f}")
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
