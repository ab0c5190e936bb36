"""Hostile source conditions: slot dropped under us, binlog purged, wrong password, server gone, MariaDB
restarted under a running `erpsync run`. Each ends in a message naming the problem and the fix, or in a
recovery that loses nothing — never in a silent gap."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

from erpsync.testing import free_port, wait_for
from sinks.emulators.webhook import WebhookEmulator
from tests.erp import Erp, MariaErp, PostgresErp
from tests.test_crash import outbox_position, start
from tests.test_e2e import Running

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "erpsync.cli", "--log-format", "text", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def edit(path: str, **source: object) -> str:
    cfg = yaml.safe_load(Path(path).read_text())
    cfg["source"].update(source)
    Path(path).write_text(yaml.safe_dump(cfg))
    return path


def drop_slot_when_released(erp: PostgresErp, slot: str, timeout: float = 10.0) -> None:
    """The slot dropped once its walsender let go (it stays active for a moment after erpsync stops)."""
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        try:
            erp.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            return
        except psycopg2.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_pg_slot_dropped_while_stopped_is_not_a_silent_gap(pg_dsn: str, tmp_path: Path) -> None:
    erp = PostgresErp(pg_dsn)
    erp.create_stock_table()
    rng = random.Random(1)
    skus = erp.seed(20, rng)
    shop = WebhookEmulator()
    shop.start()
    try:
        cfg = erp.config(tmp_path, shop.endpoint)
        with Running(cfg):
            assert wait_for(lambda: shop.stock() == erp.expected(), timeout=30)
        drop_slot_when_released(erp, "erpsync")
        for _ in range(20):  # changes nobody retains any more
            erp.transaction(erp.random_transaction(rng, skus))
        proc = start(cfg, tmp_path / "run.log")
        try:
            # either it refuses (naming the slot and the re-snapshot) or it re-snapshots: never a gap
            converged = wait_for(lambda: proc.poll() is not None or shop.stock() == erp.expected(), 60)
            log = (tmp_path / "run.log").read_text()
            if proc.poll() is not None:
                assert proc.returncode == 1 and "slot" in log and "snapshot" in log, log[-2000:]
            else:
                assert converged and shop.stock() == erp.expected()
        finally:
            proc.kill()
            proc.wait()
    finally:
        shop.stop()
        erp.close()


def _maria(mariadb_server, tmp_path: Path, shop_url: str) -> tuple[MariaErp, str]:  # type: ignore[no-untyped-def]
    erp = MariaErp(mariadb_server, mariadb_server.create_database(f"h{random.randrange(10**9)}"))
    erp.create_stock_table()
    return erp, erp.config(tmp_path, shop_url)


def test_binlog_purged_while_stopped_says_resnapshot(mariadb_server, tmp_path: Path) -> None:  # type: ignore
    shop = WebhookEmulator()
    shop.start()
    erp, cfg = _maria(mariadb_server, tmp_path, shop.endpoint)
    rng = random.Random(2)
    skus = erp.seed(20, rng)
    try:
        with Running(cfg):
            assert wait_for(lambda: shop.stock() == erp.expected(), timeout=30)
        for _ in range(20):
            erp.transaction(erp.random_transaction(rng, skus))
        # a log still open by a dump thread is not purged: wait for ours to go away
        assert wait_for(lambda: not [r for r in erp.query("SHOW PROCESSLIST") if "Binlog Dump" in str(r[4])],
                        timeout=30)
        erp.execute("FLUSH BINARY LOGS")
        current = erp.query("SHOW MASTER STATUS")[0][0]
        # MariaDB keeps a binlog until InnoDB has checkpointed its commits: retry until it is gone
        assert wait_for(lambda: erp.execute(f"PURGE BINARY LOGS TO '{current}'")
                        or [r[0] for r in erp.query("SHOW BINARY LOGS")] == [current],
                        timeout=20, interval=0.2)
        try:
            r = cli("run", "--config", cfg, timeout=40)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"run did not stop: {(e.stderr or b'')[-3000:]!r}") from None
        assert r.returncode == 1, r.stderr[-2000:]
        assert "purged" in r.stderr and "snapshot --reset" in r.stderr, r.stderr[-2000:]
        assert outbox_position(tmp_path / "outbox.db") is not None  # nothing was reset behind our back
    finally:
        shop.stop()
        erp.close()


def test_wrong_password_is_named_and_not_printed(mariadb_server, tmp_path: Path) -> None:  # type: ignore
    erp, cfg = _maria(mariadb_server, tmp_path, "http://127.0.0.1:9/hook")
    secret = f"wrong-{random.randrange(10**12)}"
    try:
        r = cli("run", "--config", edit(cfg, user="erpsync", password=secret))
    finally:
        erp.close()
    assert r.returncode == 1, r.stderr
    assert "cannot connect to MySQL" in r.stderr and "Access denied" in r.stderr, r.stderr
    assert secret not in r.stdout + r.stderr


def test_server_gone_is_named(tmp_path: Path) -> None:
    port = free_port()
    for kind, source in (("postgres", {"kind": "postgres", "dsn": f"host=127.0.0.1 port={port} dbname=x "
                                       "user=x password=hunter2-secret"}),
                         ("mysql", {"kind": "mysql", "host": "127.0.0.1", "port": port, "user": "x",
                                    "password": "hunter2-secret", "database": "x", "server_id": 77})):
        p = tmp_path / f"{kind}.yaml"
        p.write_text(yaml.safe_dump({
            "source": source,
            "stock": {"table": "stock_levels", "sku": "sku", "warehouse": "w", "quantity": "q",
                      "locations": {"W": "m"}},
            "sinks": [{"name": "shop", "kind": "webhook", "url": "http://127.0.0.1:9/hook",
                       "unsigned": True}],
            "outbox": {"path": str(tmp_path / f"{kind}.db")}}))
        r = cli("run", "--config", str(p))
        assert r.returncode == 1, r.stderr
        assert "cannot connect" in r.stderr, r.stderr
        assert "hunter2-secret" not in r.stdout + r.stderr
        assert "Traceback" not in r.stderr


def _restart_mariadb(server) -> None:  # type: ignore[no-untyped-def]
    subprocess.run([server.admin, f"--socket={server.socket}", "-uroot", "shutdown"], capture_output=True,
                   timeout=60)
    server._proc.wait(timeout=60)
    server._proc = subprocess.Popen([server.mariadbd, f"--defaults-file={server.cnf}"],
                                    start_new_session=True, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
    assert wait_for(server._ping, timeout=60)


def test_mariadb_restart_under_a_running_erpsync_is_survived(tmp_path: Path) -> None:
    """A clean MariaDB shutdown ends the binlog dump with EOF: `run` must reconnect, not exit 0."""
    from erpsync.testing.mariadb import ThrowawayMariaDB

    rng = random.Random(3)
    with ThrowawayMariaDB() as server:
        shop = WebhookEmulator()
        shop.start()
        erp: Erp = MariaErp(server, server.create_database("erp"))
        erp.create_stock_table()
        skus = erp.seed(50, rng)
        proc = start(erp.config(tmp_path, shop.endpoint), tmp_path / "run.log")
        try:
            assert wait_for(lambda: outbox_position(tmp_path / "outbox.db") is not None, timeout=60)
            for _ in range(100):
                erp.transaction(erp.random_transaction(rng, skus))
            erp.conn.close()
            _restart_mariadb(server)
            erp.conn = server.connect(erp.database)  # type: ignore[attr-defined]
            time.sleep(1)
            assert proc.poll() is None, f"erpsync run exited {proc.returncode} on a MariaDB restart"
            for _ in range(100):
                erp.transaction(erp.random_transaction(rng, skus))
            expected = erp.expected()
            assert wait_for(lambda: shop.stock() == expected, timeout=60), "shop did not converge"
            assert proc.poll() is None
        finally:
            proc.kill()
            proc.wait()
            shop.stop()
            erp.conn.close()


def _stock_config(tmp_path: Path, name: str, source: dict[str, object]) -> str:
    p = tmp_path / name
    p.write_text(yaml.safe_dump({
        "source": source,
        "stock": {"table": "stock_levels", "sku": "sku", "warehouse": "w", "quantity": "q",
                  "locations": {"W": "m"}},
        "sinks": [{"name": "shop", "kind": "webhook", "url": "http://127.0.0.1:9/hook", "unsigned": True}],
        "outbox": {"path": str(tmp_path / f"{name}.db")}}))
    return str(p)


def test_unparsable_dsn_is_named_without_any_fragment_of_the_password(tmp_path: Path) -> None:
    """libpq's parse error quotes the word it choked on — here a piece of the password."""
    port = free_port()
    cases = {"space": (f"host=127.0.0.1 port={port} dbname=x user=y password=Qx7sec9 ZZret8pw",
                       ["Qx7sec9", "ZZret8pw"]),
             "percent": (f"postgresql://y:Qx7sec9%zzret8pw@127.0.0.1:{port}/x", ["Qx7sec9", "zzret8pw"])}
    for name, (dsn, pieces) in cases.items():
        cfg = _stock_config(tmp_path, f"{name}.yaml", {"kind": "postgres", "dsn": dsn})
        for args in (["config", "validate", cfg], ["run", "--config", cfg], ["doctor", "--config", cfg],
                     ["status", "--config", cfg], ["status", "--config", cfg, "--json"],
                     ["reconcile", "--config", cfg], ["setup", "--config", cfg],
                     ["teardown", "--config", cfg, "--yes"],
                     ["snapshot", "--config", cfg, "--reset", "--yes"]):
            r = cli(*args, timeout=60)
            out = r.stdout + r.stderr
            assert r.returncode != 0, (args, out)
            assert "Traceback" not in out, (args, out[-2000:])
            assert "source.dsn" in out, (args, out)
            for piece in pieces:
                assert piece not in out, (args, piece, out)


def test_absurd_heartbeat_is_refused_naming_the_yaml_path(tmp_path: Path) -> None:
    for kind, source in (("postgres", {"kind": "postgres", "dsn": "host=127.0.0.1 dbname=x user=y"}),
                         ("mysql", {"kind": "mysql", "database": "x"})):
        cfg = _stock_config(tmp_path, f"{kind}.yaml", {**source, "heartbeat_seconds": 0.001})
        r = cli("config", "validate", cfg)
        assert r.returncode != 0, r.stdout + r.stderr
        assert "source.heartbeat_seconds" in r.stderr and "greater than or equal to 0.5" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        ok = _stock_config(tmp_path, f"{kind}-ok.yaml", {**source, "heartbeat_seconds": 1})
        r = cli("config", "validate", ok)  # it may still fail to reach the ERP, not on the heartbeat
        assert "heartbeat_seconds" not in r.stdout + r.stderr and "Traceback" not in r.stderr, r.stderr
