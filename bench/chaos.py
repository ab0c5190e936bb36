"""Chaos and soak run: a mixed ERP workload while erpsync is killed, the ERP restarted, the shop network
dropped, the shop answering 429/5xx/timeouts, and the outbox disk made unwritable; then the reconciler
checks that the shop equals the ERP.

Per database (PostgreSQL, MariaDB): a throwaway server, concurrent writers (stock and price transactions),
one large transaction (INSERT of N rows), optional bulk updates for a soak, and `erpsync run` as a
supervised subprocess (restarted whenever it exits, as systemd would). Faults, at random moments:

* SIGKILL of `erpsync run`;
* ERP server restart (pg_ctl restart -m fast / mariadb-admin shutdown + start);
* network drop: the emulator closes every connection without answering for a few seconds;
* 10% of shop requests answer 429, 500 or time out (all run long);
* a shop outage (503 for ``--down-seconds``): the outbox grows on disk, RSS must not;
* outbox disk unwritable: `mount -o remount,ro` is refused (EBUSY) while SQLite holds the file open for
  writing, so the outbox lives on a tmpfs of its own that is *filled to ENOSPC* for a few seconds — every
  write fails exactly as on a read-only disk (SQLITE_FULL instead of SQLITE_READONLY). Without root
  (no tmpfs) this fault is skipped and the summary says so.

At the end: writers stop, faults clear, the run must converge (stock oracle), then `reconcile` compares the
ERP (through the mapping) with the shop listing. Items lost = drift not explained by the deliberately bad
SKUs (``BAD-*``, which the shop refuses); the DLQ must hold exactly those. Exit 1 if anything was lost.

    .venv/bin/python bench/chaos.py --quick            # CI: both databases, ≤ 5 min
    .venv/bin/python bench/chaos.py                    # the issue's numbers (long)
    .venv/bin/python bench/chaos.py --db postgres --seconds 120 --kills 10
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from erpsync.testing import free_port, wait_for  # noqa: E402
from sinks.emulators.webhook import WebhookEmulator  # noqa: E402
from tests.erp import Erp, MariaErp, PostgresErp  # noqa: E402
from tests.test_crash import outbox_position  # noqa: E402

BAD_SKUS = [f"BAD-{i}" for i in range(5)]
PRICE_LISTS = ["RETAIL", "WHOLESALE"]
BASE_FAULTS = {
    "rate_429": 0.04,
    "rate_500": 0.03,
    "rate_timeout": 0.03,
    "timeout_seconds": 2.5,
    "retry_after": 0.5,
}  # 10% of requests; the sink's own timeout is 2 s


class NotBad:
    """The shop's catalogue: every SKU except the deliberately bad ones (a set of 1M names is not needed)."""

    def __contains__(self, sku: object) -> bool:
        return not str(sku).startswith("BAD-")


@dataclass
class Figures:
    db: str
    changes: int = 0
    transactions: int = 0
    big_rows: int = 0
    kills: int = 0
    exits: int = 0  # erpsync exited by itself (e.g. on the full disk) and was restarted
    db_restarts: int = 0
    drops: int = 0
    disk_faults: int = 0
    disk_fault_mode: str = "tmpfs filled to ENOSPC"
    faults_injected: int = 0
    shop_requests: int = 0
    down_seconds: float = 0.0
    max_rss_mb: float = 0.0
    rss_p50_mb: float = 0.0
    rss_down_start_mb: float = 0.0
    rss_down_end_mb: float = 0.0
    outbox_growth_mb: float = 0.0
    catch_up_s: float = 0.0  # from the end of the workload to shop == ERP
    max_source_lag_s: float = 0.0
    max_e2e_lag_s: float = 0.0
    p99_e2e_lag_s: float = 0.0
    drift_total: int = 0
    drift_bad_skus: int = 0
    lost: int = -1
    dlq_skus: list[str] = field(default_factory=list)
    dlq_ok: bool = False
    seconds: float = 0.0
    seconds_streaming: float = 0.0  # from the first workload write to shop == ERP
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"[{self.db}] changes: {self.changes:,} ({self.transactions:,} transactions, "
            f"one of {self.big_rows:,} rows)",
            f"[{self.db}] kills: {self.kills}   self-exits restarted: {self.exits}   "
            f"db restarts: {self.db_restarts}",
            f"[{self.db}] faults injected: {self.faults_injected:,} of {self.shop_requests:,} shop requests; "
            f"network drops: {self.drops}; disk unwritable: {self.disk_faults} ({self.disk_fault_mode}); "
            f"shop down: {self.down_seconds:.0f}s",
            f"[{self.db}] max RSS: {self.max_rss_mb:.0f} MB (median {self.rss_p50_mb:.0f} MB; shop down: "
            f"peak {self.rss_down_start_mb:.0f} MB in its first fifth, {self.rss_down_end_mb:.0f} MB in its "
            f"last, while the outbox grew {self.outbox_growth_mb:.1f} MB)",
            f"[{self.db}] max lag: source {self.max_source_lag_s:.1f}s, end-to-end {self.max_e2e_lag_s:.1f}s "
            f"(p99 {self.p99_e2e_lag_s:.2f}s, faults included); shop equal to the ERP "
            f"{self.catch_up_s:.0f}s after the workload stopped",
            f"[{self.db}] changes / (first ERP write → shop equal): "
            f"{self.changes / max(self.seconds_streaming, 1):,.0f} per second",
            f"[{self.db}] reconciler drift: {self.drift_total} ({self.drift_bad_skus} on bad SKUs); "
            f"DLQ SKUs: {sorted(set(self.dlq_skus))} ({'only the bad ones' if self.dlq_ok else 'WRONG'})",
            f"[{self.db}] items lost: {self.lost}   ({self.seconds:.0f}s)",
            *[f"[{self.db}] note: {n}" for n in self.notes],
        ]


# ERP side ---------------------------------------------------------------------------------------------
def create_prices(erp: Erp, skus: list[str], rng: random.Random) -> None:
    if erp.kind == "postgres":
        erp.execute("""CREATE TABLE price_list_lines (id bigserial PRIMARY KEY, sku text NOT NULL,
            list_code text NOT NULL, unit_price numeric(12,2) NOT NULL, currency text NOT NULL,
            UNIQUE (sku, list_code))""")
    else:
        erp.execute("""CREATE TABLE price_list_lines (id BIGINT AUTO_INCREMENT PRIMARY KEY,
            sku VARCHAR(64) NOT NULL, list_code VARCHAR(16) NOT NULL, unit_price DECIMAL(12,2) NOT NULL,
            currency VARCHAR(3) NOT NULL, UNIQUE KEY (sku, list_code)) ENGINE=InnoDB""")
    erp.executemany(
        "INSERT INTO price_list_lines (sku, list_code, unit_price, currency) VALUES (%s,%s,%s,%s)",
        [(s, pl, Decimal(rng.randint(100, 99_999)) / 100, "EUR") for s in skus for pl in PRICE_LISTS],
    )


def connect_like(erp: Erp) -> Any:
    if isinstance(erp, PostgresErp):
        import psycopg2

        conn = psycopg2.connect(erp.dsn, connect_timeout=5)
        conn.autocommit = True
        return conn
    assert isinstance(erp, MariaErp)
    return erp.server.connect(erp.database, connect_timeout=5)


def restart_mariadb(server: Any) -> None:
    """Clean shutdown and start of a ThrowawayMariaDB on the same port and data directory."""
    subprocess.run(
        [server.admin, f"--socket={server.socket}", "-uroot", "shutdown"], capture_output=True, timeout=120
    )
    if server._proc is not None:
        server._proc.wait(timeout=120)
    server._proc = subprocess.Popen(
        [server.mariadbd, f"--defaults-file={server.cnf}"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not wait_for(server._ping, timeout=120):
        raise RuntimeError("mariadbd did not come back after the restart")


class Workload:
    """Concurrent writers; each transaction is retried on a fresh connection when the server goes away
    (whatever the ERP holds at the end is the truth the shop must reach, so an ambiguous commit is fine)."""

    def __init__(
        self,
        erp: Erp,
        skus: list[str],
        rng: random.Random,
        writers: int,
        rate: float,
        soak_changes: int,
        soak_batch: int,
    ) -> None:
        self.erp, self.skus, self.rng = erp, skus, rng
        self.writers, self.rate = writers, rate
        self.soak_changes, self.soak_batch = soak_changes, soak_batch
        self.changes = 0
        self.transactions = 0
        self.soaked = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors = 0
        self.last_error = ""

    def start(self) -> None:
        for i in range(self.writers):
            self.threads.append(threading.Thread(target=self._writer, args=(i,), daemon=True))
        if self.soak_changes:
            self.threads.append(threading.Thread(target=self._soak, daemon=True))
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(300)

    def _tx(self, conn_box: list[Any], stmts: list[tuple[str, tuple[Any, ...]]]) -> int:
        """Run statements in one transaction; returns rows changed. Reconnects and retries on errors."""
        failures = 0
        while not self.stop.is_set() or stmts:
            try:
                if conn_box[0] is None:
                    conn_box[0] = connect_like(self.erp)
                n = 0
                with conn_box[0].cursor() as cur:
                    cur.execute("BEGIN")
                    for q, p in stmts:
                        cur.execute(q, p)
                        n += max(cur.rowcount, 0)
                    cur.execute("COMMIT")
                return n
            except Exception as e:
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {str(e).strip()[:200]}"
                failures += 1
                with contextlib.suppress(Exception):
                    conn_box[0].close()
                conn_box[0] = None
                if self.stop.is_set() or failures > 600:  # > 2 min: not a restart, a broken statement
                    return 0
                time.sleep(0.2)
        return 0

    def _writer(self, i: int) -> None:
        rng = random.Random(self.rng.random())
        box: list[Any] = [None]
        interval = self.writers / self.rate if self.rate else 0.0
        nxt = time.monotonic()
        while not self.stop.is_set():
            if rng.random() < 0.7:
                stmts = self.erp.random_transaction(rng, self.skus)
            else:
                stmts = [
                    (
                        "UPDATE price_list_lines SET unit_price = %s WHERE sku=%s AND list_code=%s",
                        (
                            Decimal(rng.randint(100, 99_999)) / 100,
                            rng.choice(self.skus),
                            rng.choice(PRICE_LISTS),
                        ),
                    )
                    for _ in range(rng.randint(1, 2))
                ]
            n = self._tx(box, stmts)
            with self.lock:
                self.changes += n
                self.transactions += 1
            nxt += interval
            self.stop.wait(max(0.0, nxt - time.monotonic()))
        with contextlib.suppress(Exception):
            box[0].close()

    def _soak(self) -> None:
        """Bulk updates of consecutive ids until ``soak_changes`` rows changed (the memory soak)."""
        box: list[Any] = [None]
        top = int(self.erp.query("SELECT max(id) FROM stock_levels")[0][0])
        lo = 1
        while not self.stop.is_set() and self.soaked < self.soak_changes:
            hi = min(top, lo + self.soak_batch - 1)
            n = self._tx(
                box, [("UPDATE stock_levels SET on_hand = on_hand + 1 WHERE id BETWEEN %s AND %s", (lo, hi))]
            )
            with self.lock:
                self.changes += n
                self.soaked += n
                self.transactions += 1
            lo = 1 if hi >= top else hi + 1
        with contextlib.suppress(Exception):
            box[0].close()

    def big_transaction(self, rows: int) -> int:
        if isinstance(self.erp, PostgresErp):
            q = (
                "INSERT INTO stock_levels (sku, warehouse_code, on_hand) "
                "SELECT 'BIG-' || lpad(g::text, 7, '0'), 'WH-MIL', mod(g, 50) FROM generate_series(1, %s) g"
            )
            params: tuple[Any, ...] = (rows,)
        else:  # MariaDB's SEQUENCE engine
            q = (
                "INSERT INTO stock_levels (sku, warehouse_code, on_hand) "
                f"SELECT CONCAT('BIG-', LPAD(seq, 7, '0')), 'WH-MIL', MOD(seq, 50) FROM seq_1_to_{int(rows)}"
            )
            params = ()
        box: list[Any] = [None]
        for _ in range(20):  # a server restart may roll it back: then it runs again
            n = self._tx(box, [(q, params)])
            if n:
                with self.lock:
                    self.changes += n
                    self.transactions += 1
                return n
        return 0


# erpsync side -----------------------------------------------------------------------------------------
class Supervised:
    """`erpsync run` restarted whenever it dies; SIGKILL on request; RSS sampled from /proc."""

    def __init__(self, config: str, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.kills = 0
        self.exits = 0
        self.exit_codes: list[int] = []
        self.rss: list[tuple[float, float]] = []  # (time, MB)
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "erpsync.cli", "--log-format", "json", "run", "--config", self.config],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),  # noqa: SIM115 (the child holds it)
        )

    def start(self) -> None:
        self._spawn()
        self.thread.start()

    def kill(self, rng: random.Random) -> None:
        with self.lock:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.kills += 1
            time.sleep(rng.uniform(0, 0.3))
            self._spawn()

    def _watch(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                p = self.proc
                assert p is not None
                if p.poll() is not None:  # exited by itself: a supervisor starts it again
                    self.exits += 1
                    self.exit_codes.append(p.returncode)
                    time.sleep(0.5)
                    self._spawn()
                    continue
                rss = rss_mb(p.pid)
            if rss:
                self.rss.append((time.monotonic(), rss))
            self.stop.wait(0.2)

    def terminate(self) -> int | None:
        self.stop.set()
        self.thread.join(10)
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def source_lag(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("erpsync_source_lag_seconds "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class Disk:
    """The outbox's own tmpfs (as root), and the 'briefly unwritable' fault: fill it to ENOSPC, then free."""

    def __init__(self, base: Path, size_mb: int) -> None:
        self.dir = base / "outbox-disk"
        self.dir.mkdir()
        self.mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(self.dir)],
                capture_output=True,
            ).returncode
            == 0
        )

    def fill(self, seconds: float) -> bool:
        if not self.mounted:
            return False
        # SQLite reuses its WAL file in place, so a full disk alone changes nothing: truncate the WAL first
        # (as a checkpoint does), then the next commit needs new blocks and gets SQLITE_FULL.
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(self.dir / "outbox.db", timeout=5)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()
        filler = self.dir / "filler"
        chunk = b"\0" * (1 << 20)
        try:
            with open(filler, "wb") as f:
                while True:
                    f.write(chunk)
                    f.flush()
        except OSError:
            pass  # ENOSPC: the disk is full
        time.sleep(seconds)
        filler.unlink(missing_ok=True)
        return True

    def close(self) -> None:
        if self.mounted:
            for _ in range(20):
                if subprocess.run(["umount", str(self.dir)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.5)


# one database -----------------------------------------------------------------------------------------
def run_one(kind: str, a: argparse.Namespace, work: Path) -> Figures:
    from erpsync.config import load_config
    from reconciler.run import reconcile

    fig = Figures(db=kind)
    rng = random.Random(a.seed)
    t0 = time.monotonic()
    server: Any
    if kind == "postgres":
        from erpsync.testing.postgres import ThrowawayPostgres

        server = ThrowawayPostgres().start()
        erp: Erp = PostgresErp(server.create_database("erp"))
    else:
        from erpsync.testing.mariadb import ThrowawayMariaDB

        server = ThrowawayMariaDB().start()
        erp = MariaErp(server, server.create_database("erp"))
    disk = Disk(work, a.disk_mb)
    if not disk.mounted:
        fig.disk_fault_mode = "skipped: cannot mount a tmpfs (not root?)"
    shop = WebhookEmulator(known_skus=NotBad())  # type: ignore[arg-type]
    shop.start()
    assert shop.server is not None
    shop.server.handle_error = lambda *_: None  # type: ignore[method-assign]  # clients hanging up on timeouts
    sup: Supervised | None = None
    try:
        erp.create_stock_table()
        skus = erp.seed(a.skus, rng)
        create_prices(erp, skus, rng)
        cfg_path = Path(erp.config(work, shop.endpoint))
        cfg = yaml.safe_load(cfg_path.read_text())
        ops_port = free_port()
        cfg["prices"] = {
            "table": "price_list_lines" if kind == "mysql" else "public.price_list_lines",
            "sku": "sku",
            "price_list": "list_code",
            "amount": "unit_price",
            "currency": "currency",
        }
        cfg["sinks"][0].update(
            {
                "list_url": f"{shop.url}/_emulator/state",
                "timeout_seconds": 2,
                # a long outage must park facts in the outbox, not dead-letter good SKUs
                "max_attempts": a.max_attempts,
            }
        )
        cfg["outbox"]["path"] = str(disk.dir / "outbox.db")
        cfg["ops"] = {"listen": f"127.0.0.1:{ops_port}"}
        cfg["reconcile"] = {
            "report_dir": str(work / "reports"),
            "history": str(work / "reconcile.duckdb"),
            "catch_up_seconds": 120,
        }
        cfg_path.write_text(yaml.safe_dump(cfg))
        outbox = disk.dir / "outbox.db"

        sup = Supervised(str(cfg_path), work / "run.log")
        sup.start()
        if not wait_for(lambda: outbox_position(outbox) is not None, timeout=300):
            raise RuntimeError("no snapshot within 300 s; see " + str(work / "run.log"))
        shop.set_faults(**BASE_FAULTS, seed=a.seed)
        # a few rows the shop refuses: the only SKUs allowed in the DLQ
        erp.executemany(
            "INSERT INTO stock_levels (sku, warehouse_code, on_hand) VALUES (%s, 'WH-MAD', 5)",
            [(s,) for s in BAD_SKUS],
        )

        wl = Workload(erp, skus, rng, a.writers, a.rate, a.soak_changes, a.soak_batch)
        wl.start()
        t_work = time.monotonic()
        duration = a.seconds
        # random moments for each fault, spread over the run
        plan: list[tuple[float, str]] = [(rng.uniform(0.03, 0.97) * duration, "kill") for _ in range(a.kills)]
        plan += [(rng.uniform(0.15, 0.85) * duration, "restart") for _ in range(a.restarts)]
        plan += [(rng.uniform(0.05, 0.95) * duration, "drop") for _ in range(a.drops)]
        plan += [(rng.uniform(0.05, 0.95) * duration, "disk") for _ in range(a.disk_faults)]
        plan += [(0.3 * duration, "big")]
        if a.down_seconds:
            plan += [(0.5 * duration - a.down_seconds / 2, "down")]
        plan.sort()
        lag_max = 0.0
        last_progress = 0.0
        deadline = duration + a.down_seconds + 900 + a.soak_changes / 2000
        start = time.monotonic()
        bg: list[threading.Thread] = []

        def later(fn: Any) -> None:
            t = threading.Thread(target=fn, daemon=True)
            t.start()
            bg.append(t)

        def do_restart() -> None:
            if kind == "postgres":
                server.restart()
            else:
                restart_mariadb(server)
            fig.db_restarts += 1
            with contextlib.suppress(Exception):
                erp.conn.close()
            erp.conn = connect_like(erp)  # the oracle's connection died with the server

        def do_drop() -> None:
            shop.set_faults(rate_drop=1.0)
            time.sleep(rng.uniform(2, 5))
            shop.set_faults(rate_drop=0.0)
            fig.drops += 1

        def do_disk() -> None:
            if disk.fill(rng.uniform(1.5, 3)):
                fig.disk_faults += 1

        def do_big() -> None:
            fig.big_rows = wl.big_transaction(a.big_rows)

        def do_down() -> None:
            size0 = _disk_mb(outbox)
            t_down = time.monotonic()
            shop.set_faults(down=True)
            time.sleep(a.down_seconds)
            # peak RSS in the first and in the last fifth of the outage: flat means nothing queues in memory
            assert sup is not None
            fifth = a.down_seconds / 5
            first = [m for t, m in sup.rss if t_down <= t <= t_down + fifth]
            last = [m for t, m in sup.rss if t >= t_down + 4 * fifth]
            fig.rss_down_start_mb = max(first, default=0.0)
            fig.rss_down_end_mb = max(last, default=0.0)
            fig.outbox_growth_mb = _disk_mb(outbox) - size0
            shop.set_faults(down=False)
            fig.down_seconds = a.down_seconds

        actions = {"restart": do_restart, "drop": do_drop, "disk": do_disk, "big": do_big, "down": do_down}
        while True:
            now = time.monotonic() - start
            while plan and plan[0][0] <= now:
                _, what = plan.pop(0)
                if what == "kill":
                    sup.kill(rng)
                else:
                    later(actions[what])
            lag = source_lag(ops_port)
            if lag is not None:
                lag_max = max(lag_max, lag)
            if a.progress and now - last_progress >= a.progress:
                last_progress = now
                mbs = [m for _, m in sup.rss[-50:]]
                print(f"  [{kind} {now:.0f}s] changes {wl.changes:,}, kills {sup.kills}, exits {sup.exits}, "
                      f"db restarts {fig.db_restarts}, RSS now {mbs[-1] if mbs else 0:.0f} MB, "
                      f"max so far {max((m for _, m in sup.rss), default=0):.0f} MB, "
                      f"outbox {_disk_mb(outbox):.0f} MB, source lag max {lag_max:.1f}s", flush=True)
            soak_done = wl.soaked >= a.soak_changes
            if now >= duration and not plan and soak_done and all(not t.is_alive() for t in bg):
                break
            if now > deadline:
                fig.notes.append(f"workload overran its deadline ({deadline:.0f}s); last ERP error: "
                                 f"{wl.last_error or '-'}")
                break
            time.sleep(0.25)
        wl.join()
        shop.set_faults(rate_429=0, rate_500=0, rate_timeout=0, rate_drop=0, down=False)
        fig.changes, fig.transactions = wl.changes, wl.transactions
        if wl.last_error:
            fig.notes.append(f"ERP writers retried {wl.errors} times (restarts); last: {wl.last_error}")

        # convergence: the stock oracle straight from the ERP tables (bad SKUs never reach the shop)
        expected = {k: v for k, v in erp.expected().items() if not k[0].startswith("BAD-")}
        ok = converge(shop, expected, outbox, a, kind, fig)
        fig.seconds_streaming = time.monotonic() - t_work
        while True:
            lag = source_lag(ops_port)
            if lag is None or lag < 5:
                break
            time.sleep(1)
        if not ok:
            got = shop.stock()
            bad = [k for k, v in expected.items() if got.get(k) != v]
            fig.notes.append(
                f"stock oracle: {len(bad)} keys differ {fig.catch_up_s:.0f}s after the workload (no progress "
                f"for {a.stall_timeout:.0f}s or over {a.converge_timeout:.0f}s), e.g. {bad[:3]}"
            )

        # the reconciler's diff is the final word
        result = reconcile(load_config(cfg_path), progress=False, send_email=False)
        rows = _drift_rows(result.csv_path) if result.csv_path else []
        fig.drift_total = result.drift_total
        fig.drift_bad_skus = sum(1 for r in rows if r["sku"].startswith("BAD-"))
        fig.lost = fig.drift_total - fig.drift_bad_skus + (0 if ok else 1)
        if result.errors:
            fig.notes.append(f"reconcile errors: {result.errors}")
            fig.lost = max(fig.lost, 1)
        if rows and fig.lost:
            fig.notes.append(f"drift sample: {[r for r in rows if not r['sku'].startswith('BAD-')][:5]}")
        fig.dlq_skus = _dlq_skus(outbox)
        fig.dlq_ok = set(fig.dlq_skus) == set(BAD_SKUS)
        if shop.regressions:
            fig.notes.append(f"{len(shop.regressions)} regressions (older value after newer)")
            fig.lost = max(fig.lost, 1)
        fig.max_source_lag_s = lag_max
        lats = sorted(shop.latencies)
        if lats:
            fig.max_e2e_lag_s = lats[-1]
            fig.p99_e2e_lag_s = lats[int(len(lats) * 0.99) - 1] if len(lats) > 100 else lats[-1]
        fig.faults_injected = shop.stats["injected"]
        fig.shop_requests = shop.stats["requests"]
        code = sup.terminate()
        if code not in (0, None):
            fig.notes.append(f"SIGTERM exit code {code}")
        fig.kills, fig.exits = sup.kills, sup.exits
        if sup.exit_codes:
            said = [ln.strip() for ln in (work / "run.log").read_text(errors="replace").splitlines()
                    if ln.startswith("error:")]
            fig.notes.append(f"self-exit codes {sorted(set(sup.exit_codes))}; said: "
                             f"{list(dict.fromkeys(said))[-3:]}")
        mbs = [m for _, m in sup.rss]
        if mbs:
            fig.max_rss_mb, fig.rss_p50_mb = max(mbs), statistics.median(mbs)
        sup = None
    finally:
        if sup is not None:
            sup.terminate()
        shop.stop()
        with contextlib.suppress(Exception):
            erp.close()  # type: ignore[attr-defined]
        server.stop()
        disk.close()
    fig.seconds = time.monotonic() - t0
    return fig


def converge(shop: WebhookEmulator, expected: dict[Any, int], outbox: Path, a: argparse.Namespace,
             kind: str, fig: Figures) -> bool:
    """Wait until the shop equals the ERP's stock. An unthrottled soak leaves a backlog in the log (the ERP
    writes faster than erpsync reads), so the wait lasts as long as erpsync makes progress — the stored
    position or the shop's request count moves — and gives up after ``--stall-timeout`` seconds without
    any, or after ``--converge-timeout`` in all."""
    t0 = time.monotonic()
    last_sig: tuple[Any, ...] | None = None
    last_move = last_print = t0
    while True:
        now = time.monotonic()
        if shop.stock() == expected:
            fig.catch_up_s = now - t0
            return True
        sig = (outbox_position(outbox), shop.stats["requests"])
        if sig != last_sig:
            last_sig, last_move = sig, now
        if now - last_move > a.stall_timeout or now - t0 > a.converge_timeout:
            fig.catch_up_s = now - t0
            return False
        if a.progress and now - last_print >= a.progress:
            last_print = now
            print(f"  [{kind}] catching up {now - t0:.0f}s: position {sig[0]}, "
                  f"shop requests {sig[1]:,}", flush=True)
        time.sleep(min(5.0, 1.0 + len(expected) / 200_000))  # comparing 1M keys is not free


def _dlq_skus(outbox: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=30)
    try:
        return [r[0] for r in conn.execute("SELECT DISTINCT sku FROM dead_letters ORDER BY sku")]
    finally:
        conn.close()


def _disk_mb(outbox: Path) -> float:
    return sum(p.stat().st_size for p in outbox.parent.glob(outbox.name + "*") if p.exists()) / 2**20


def _drift_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# command line -----------------------------------------------------------------------------------------
QUICK = {
    "seconds": 50,
    "kills": 6,
    "restarts": 1,
    "drops": 2,
    "disk_faults": 1,
    "down_seconds": 10,
    "big_rows": 100_000,
    "soak_changes": 0,
    "skus": 500,
    "writers": 3,
    "rate": 60,
    "disk_mb": 512,
}
FULL = {
    "seconds": 900,
    "kills": 20,
    "restarts": 2,
    "drops": 6,
    "disk_faults": 3,
    "down_seconds": 600,
    "big_rows": 1_000_000,
    "soak_changes": 10_000_000,
    "skus": 5000,
    "writers": 4,
    "rate": 200,
    "disk_mb": 6144,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="CI size: ≤ 5 min for both databases")
    p.add_argument("--db", choices=["postgres", "mysql", "both"], default="both")
    for name in FULL:
        p.add_argument(f"--{name.replace('_', '-')}", type=float if name == "rate" else int, default=None)
    p.add_argument("--soak-batch", type=int, default=5000, help="rows per bulk UPDATE of the soak")
    p.add_argument(
        "--max-attempts",
        type=int,
        default=10_000,
        help="sink max_attempts (the default 20 dead-letters good facts in a 10 min outage)",
    )
    p.add_argument("--converge-timeout", type=float, default=7200, help="longest wait for shop == ERP")
    p.add_argument(
        "--stall-timeout", type=float, default=300, help="give up after this long without any progress"
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--progress", type=float, default=0, help="print progress every N seconds (0: off)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, reports)")
    a = p.parse_args(argv)
    base = QUICK if a.quick else FULL
    for k, v in base.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    # SIGTERM (CI timeout) unwinds through the finally blocks: servers stopped, tmpfs unmounted
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    kinds = ["postgres", "mysql"] if a.db == "both" else [a.db]
    figs: list[Figures] = []
    root = Path(tempfile.mkdtemp(prefix="erpsync-chaos-"))
    print(f"chaos: {' + '.join(kinds)}; work dir {root}", flush=True)
    for kind in kinds:
        work = root / kind
        work.mkdir()
        fig = run_one(kind, a, work)
        figs.append(fig)
        print("\n".join(fig.lines()), flush=True)
    lost = sum(max(f.lost, 0) for f in figs) + sum(1 for f in figs if f.lost < 0)
    print(
        json.dumps(
            {
                "changes": sum(f.changes for f in figs),
                "kills": sum(f.kills for f in figs),
                "restarts": sum(f.db_restarts for f in figs),
                "faults_injected": sum(f.faults_injected + f.drops + f.disk_faults for f in figs),
                "items_lost": lost,
                "max_rss_mb": round(max(f.max_rss_mb for f in figs), 1),
                "max_lag_s": round(max(max(f.max_source_lag_s, f.max_e2e_lag_s) for f in figs), 2),
                "dlq_only_bad_skus": all(f.dlq_ok for f in figs),
            }
        ),
        flush=True,
    )
    ok = lost == 0 and all(f.dlq_ok for f in figs)
    if a.keep or not ok:
        print(f"work dir kept: {root}", flush=True)
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    print(f"items lost: {lost}  -> {'PASS' if ok else 'FAIL'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
