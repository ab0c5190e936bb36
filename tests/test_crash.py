"""kill -9 of `erpsync run` at random moments: nothing lost, nothing confirmed early."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from cdc.sources.postgres.replication import lsn_to_int
from erpsync.testing import wait_for
from sinks.emulators.webhook import WebhookEmulator
from tests.erp import Erp, PostgresErp


def start(config: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "erpsync.cli", "--log-format", "json", "run", "--config",
                             config], stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


def outbox_position(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        row = conn.execute("SELECT position FROM positions").fetchone()
        conn.close()
    except sqlite3.Error:  # not there yet, or half-created by a process just killed
        return None
    return row[0] if row else None


def test_sigkill_five_times_during_20000_changes(erp: Erp, tmp_path: Path) -> None:
    rng = random.Random(11)
    skus = erp.seed(500, rng)
    shop = WebhookEmulator()
    shop.start()
    config = erp.config(tmp_path, shop.endpoint, commit_interval_ms=20)
    outbox = tmp_path / "outbox.db"
    violations: list[tuple[int, int | None]] = []
    done = threading.Event()

    def watch_slot() -> None:
        # confirmed_flush_lsn is read first, the outbox after: the outbox only grows, so a confirmed
        # position beyond it means erpsync confirmed something it did not hold.
        assert isinstance(erp, PostgresErp)
        import psycopg2

        conn = psycopg2.connect(erp.dsn)
        conn.autocommit = True
        while not done.is_set():
            with conn.cursor() as cur:
                cur.execute("SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots "
                            "WHERE slot_name='erpsync'")
                row = cur.fetchone()
            confirmed = int(row[0]) if row and row[0] is not None else None
            held = outbox_position(outbox)
            if confirmed is not None and held is not None and confirmed > lsn_to_int(held):
                violations.append((confirmed, held))
            time.sleep(0.02)
        conn.close()

    watcher = threading.Thread(target=watch_slot, daemon=True)
    proc = start(config, tmp_path / "run.log")
    kills = 0
    try:
        assert wait_for(lambda: outbox_position(outbox) is not None, timeout=60), "no snapshot"
        if isinstance(erp, PostgresErp):  # MySQL has nothing to confirm: the binlog is not held for us
            watcher.start()
        changes = 0
        kill_at = sorted(rng.sample(range(1_000, 19_000), 6))
        while changes < 20_000:
            stmts = erp.random_transaction(rng, skus)
            erp.transaction(stmts)
            changes += len(stmts)
            if kill_at and changes >= kill_at[0]:
                kill_at.pop(0)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                time.sleep(rng.uniform(0, 0.3))
                proc = start(config, tmp_path / "run.log")
        expected = erp.expected()
        ok = wait_for(lambda: shop.stock() == expected, timeout=120)
        got = shop.stock()
        diff = {k: (v, got.get(k)) for k, v in expected.items() if got.get(k) != v}
        assert ok, f"{len(diff)} stock values differ after {kills} kills, e.g. {list(diff.items())[:5]}"
        assert kills >= 5
        assert not violations, f"slot confirmed beyond the outbox: {violations[:5]}"
        # graceful stop: SIGTERM flushes, confirms and exits 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        if isinstance(erp, PostgresErp):
            confirmed = erp.confirmed_flush("erpsync")
            held = outbox_position(outbox)
            assert confirmed is not None and held is not None and confirmed == lsn_to_int(held)
    finally:
        done.set()
        if proc.poll() is None:
            proc.kill()
        shop.stop()
        log = (tmp_path / "run.log").read_text(errors="replace")
        if os.environ.get("ERPSYNC_TEST_SHOW_LOG"):
            print(log[-5000:])


def test_erp_server_restarts_are_survived(tmp_path: Path) -> None:
    """PostgreSQL restarted twice under a running `erpsync run`: it reconnects and loses nothing."""
    from erpsync.testing.postgres import ThrowawayPostgres

    rng = random.Random(5)
    with ThrowawayPostgres() as pg:
        erp = PostgresErp(pg.create_database("erp"))
        erp.create_stock_table()
        skus = erp.seed(100, rng)
        shop = WebhookEmulator()
        shop.start()
        proc = start(erp.config(tmp_path, shop.endpoint), tmp_path / "run.log")
        try:
            assert wait_for(lambda: outbox_position(tmp_path / "outbox.db") is not None, timeout=60)
            for _round in range(2):
                for _ in range(200):
                    erp.transaction(erp.random_transaction(rng, skus))
                erp.conn.close()
                pg.restart()
                erp.conn = PostgresErp(erp.dsn).conn
            for _ in range(200):
                erp.transaction(erp.random_transaction(rng, skus))
            expected = erp.expected()
            assert wait_for(lambda: shop.stock() == expected, timeout=120), "shop did not converge"
            assert proc.poll() is None, "erpsync run exited instead of reconnecting"
        finally:
            proc.kill()
            shop.stop()
            erp.close()


def test_erpsync_restarted_while_the_erp_is_down_waits_for_it(tmp_path: Path) -> None:
    """A host reboot may start erpsync before its database: with an existing outbox `run` waits for the
    ERP (refused / shutting down / starting up) instead of exiting, then streams on from its position."""
    import os
    import subprocess as sp

    from erpsync.testing.postgres import ThrowawayPostgres

    rng = random.Random(6)
    with ThrowawayPostgres() as pg:
        data = os.path.join(pg.dir, "data")
        erp = PostgresErp(pg.create_database("erp"))
        erp.create_stock_table()
        skus = erp.seed(50, rng)
        shop = WebhookEmulator()
        shop.start()
        config = erp.config(tmp_path, shop.endpoint)
        log = tmp_path / "run.log"
        proc = start(config, log)
        try:
            assert wait_for(lambda: shop.stock() == erp.expected(), timeout=60)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
            erp.conn.close()
            sp.run(pg._cmd([pg.pg_ctl, "-D", data, "-w", "-m", "fast", "stop"]), check=True,
                   capture_output=True)
            proc = start(config, log)
            time.sleep(4)
            assert proc.poll() is None, "run exited while the ERP was down: " + log.read_text()[-1500:]
            assert "retrying in" in log.read_text()
            sp.run(pg._cmd([pg.pg_ctl, "-D", data, "-w", "-l", os.path.join(pg.dir, "log"), "start"]),
                   check=True, capture_output=True)
            erp.conn = PostgresErp(erp.dsn).conn
            for _ in range(30):
                erp.transaction(erp.random_transaction(rng, skus))
            assert wait_for(lambda: shop.stock() == erp.expected(), timeout=90), "shop did not converge"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            shop.stop()
            erp.close()
