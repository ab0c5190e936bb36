"""Scale-out on a real nats-server (JetStream, temp store): the reader publishes to 8 partitions, `erpsync
worker` processes deliver; SIGKILLs of a worker and of the reader, and a NATS restart, lose nothing."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc.facts import stock_fact
from erpsync.config import load_config_text
from erpsync.delivery.nats_bus import NatsPublisher, parse_partitions, partition_of
from erpsync.delivery.nats_worker import Worker
from erpsync.testing import wait_for
from erpsync.testing.nats import ThrowawayNats
from sinks.emulators.webhook import WebhookEmulator
from tests.erp import PostgresErp
from tests.fixtures_nats import nats_server  # noqa: F401
from tests.test_e2e import converge, shop  # noqa: F401

CLI = [sys.executable, "-c", "from erpsync.cli import main; main()", "--log-format", "text"]


class Proc:
    """An erpsync command in its own process (SIGKILL-able), output in a log file."""

    def __init__(self, tmp: Path, name: str, args: list[str]) -> None:
        self.name, self.args, self.log = name, args, tmp / f"{name}.log"
        self.p: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.p = subprocess.Popen([*CLI, *self.args], stdout=subprocess.DEVNULL,
                                  stderr=open(self.log, "ab"))  # noqa: SIM115
        return self

    def kill(self) -> None:
        assert self.p is not None and self.p.poll() is None, f"{self.name}: {self.log.read_text()[-2000:]}"
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()


def bus_config(erp: PostgresErp, tmp: Path, shop_url: str, url: str, partitions: int = 8) -> str:
    path = Path(erp.config(tmp, shop_url))
    cfg = yaml.safe_load(path.read_text())
    cfg["bus"] = {"kind": "nats", "url": url, "partitions": partitions}
    cfg["outbox"]["commit_interval_ms"] = 100
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def write_changes(erp: PostgresErp, rng: random.Random, skus: list[str], changes: int,
                  per_tx: int = 20) -> None:
    """``changes`` single-row updates, ``per_tx`` to an ERP transaction."""
    done = 0
    while done < changes:
        stmts: list[tuple[str, tuple[Any, ...]]] = []
        while len(stmts) < per_tx and done + len(stmts) < changes:
            stmts.extend(erp.random_transaction(rng, skus)[:per_tx - len(stmts)])
        erp.transaction(stmts)
        done += len(stmts)


def test_parse_partitions_and_stable_hash() -> None:
    assert parse_partitions("0-3,6", 8) == [0, 1, 2, 3, 6] and parse_partitions("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError):
        parse_partitions("7-8", 8)
    assert partition_of("SKU-00001", 8) == partition_of("SKU-00001", 8)
    assert {partition_of(f"SKU-{i}", 8) for i in range(200)} == set(range(8))


def test_three_workers_eight_partitions_50k_changes_with_sigkills(
        pg_dsn: str, shop: WebhookEmulator, nats_server: ThrowawayNats, tmp_path: Path) -> None:  # noqa: F811
    erp = PostgresErp(pg_dsn)
    erp.create_stock_table()
    rng = random.Random(10)
    skus = erp.seed(5000, rng)
    cfg = bus_config(erp, tmp_path, shop.endpoint, nats_server.url)
    reader = Proc(tmp_path, "reader", ["run", "--config", cfg, "--drain-seconds", "1"]).start()
    workers = [Proc(tmp_path, f"w{i}", ["worker", "--config", cfg, "--sink", "shop", "--partitions", parts,
                                        "--name", f"w{i}", "--ack-wait", "3"]).start()
               for i, parts in enumerate(["0-2", "3-5", "6-7"])]
    try:
        write_changes(erp, rng, skus, 20_000)
        # mid-run: SIGKILL one worker and the reader (unacked messages and an unconfirmed ERP tail)
        workers[1].kill()
        reader.kill()
        write_changes(erp, rng, skus, 10_000)
        reader.start()
        workers[1].start()
        write_changes(erp, rng, skus, 20_000)
        converge(erp, shop, timeout=120)
        assert len(shop.stock()) == 5000 * 2
    finally:
        for p in [reader, *workers]:
            p.stop()
        erp.close()


def test_nats_restart_mid_run_loses_nothing(
        pg_dsn: str, shop: WebhookEmulator, nats_server: ThrowawayNats, tmp_path: Path) -> None:  # noqa: F811
    erp = PostgresErp(pg_dsn)
    erp.create_stock_table()
    rng = random.Random(11)
    skus = erp.seed(1000, rng)
    cfg = bus_config(erp, tmp_path, shop.endpoint, nats_server.url, partitions=4)
    reader = Proc(tmp_path, "reader", ["run", "--config", cfg, "--drain-seconds", "1"]).start()
    workers = [Proc(tmp_path, f"w{i}", ["worker", "--config", cfg, "--sink", "shop", "--partitions", parts,
                                        "--name", f"w{i}", "--ack-wait", "3"]).start()
               for i, parts in enumerate(["0-1", "2-3"])]
    try:
        write_changes(erp, rng, skus, 5_000)
        nats_server.restart(kill=True, down_seconds=1.0)
        write_changes(erp, rng, skus, 5_000)
        converge(erp, shop, timeout=120)
        for p in [reader, *workers]:
            assert p.p is not None and p.p.poll() is None, f"{p.name} died: {p.log.read_text()[-2000:]}"
    finally:
        for p in [reader, *workers]:
            p.stop()
        erp.close()


def test_worker_coalesces_dedups_and_never_regresses(nats_server: ThrowawayNats) -> None:  # noqa: F811
    emu = WebhookEmulator()
    emu.start()
    cfg = load_config_text(yaml.safe_dump({
        "source": {"kind": "postgres", "dsn": "host=127.0.0.1 dbname=unused"},  # never connected
        "stock": {"table": "t", "sku": "sku", "warehouse": "w", "quantity": "q", "locations": {"A": "a"}},
        "sinks": [{"name": "shop", "kind": "webhook", "url": emu.endpoint, "unsigned": True}],
        "bus": {"kind": "nats", "url": nats_server.url, "partitions": 2}}))
    pub = NatsPublisher(cfg.bus, {"shop": ["stock"]})
    stop = threading.Event()
    t = threading.Thread()
    try:
        # many versions of few keys: one fetched batch pushes the newest per key only
        pub.publish([stock_fact(f"S{i % 10}", "a", i, version=i + 1) for i in range(1000)])
        pub.publish([stock_fact("S1", "a", 1, version=2)])  # same msg id: JetStream drops it
        assert pub.duplicates == 1
        w = Worker(cfg, "shop", [0, 1], name="t", ack_wait=2)
        t = threading.Thread(target=w.run, args=(stop,), daemon=True)
        t.start()
        want = {(f"S{k}", "a"): 990 + k for k in range(10)}
        assert wait_for(lambda: emu.stock() == want, timeout=20), emu.stock()
        assert emu.received < 1000  # coalesced
        # an old version arriving late (a replay with an older value) is acked, not pushed
        before = emu.received
        pub.publish([stock_fact("S3", "a", 5, version=7)])
        time.sleep(1.5)
        assert emu.received == before and emu.stock()[("S3", "a")] == 993
        pub.publish([stock_fact("S3", "a", 7, version=5000)])
        assert wait_for(lambda: emu.stock()[("S3", "a")] == 7, timeout=10)
        assert not emu.regressions
    finally:
        stop.set()
        if t.is_alive():
            t.join(10)
        pub.close()
        emu.stop()


def test_long_shop_outage_on_the_nats_path_dead_letters_nothing(nats_server: ThrowawayNats) -> None:  # noqa: F811
    """The NATS workers follow the same delivery policy as the SQLite path: while every push fails the shop is
    down, so messages are redelivered far past max_attempts without one reaching the dead-letter stream."""
    import asyncio

    from cdc.natsio import connect

    emu = WebhookEmulator()
    emu.start()
    emu.set_faults(down=True, retry_after=0)
    cfg = load_config_text(yaml.safe_dump({
        "source": {"kind": "postgres", "dsn": "host=127.0.0.1 dbname=unused"},  # never connected
        "stock": {"table": "t", "sku": "sku", "warehouse": "w", "quantity": "q", "locations": {"A": "a"}},
        "sinks": [{"name": "outage", "kind": "webhook", "url": emu.endpoint, "max_attempts": 2,
                   "unsigned": True}],
        "bus": {"kind": "nats", "url": nats_server.url, "partitions": 1}}))
    pub = NatsPublisher(cfg.bus, {"outage": ["stock"]})
    stop = threading.Event()
    t = threading.Thread()

    async def dlq_messages() -> int:
        nc = await connect(nats_server.url, "test-dlq")
        try:
            info = await nc.jetstream().stream_info("ERPSYNC_DLQ")
            subjects = info.state.subjects or {}
            return int(subjects.get("erpsync.dlq.outage", 0)) if subjects else int(info.state.messages)
        finally:
            await nc.close()

    try:
        pub.publish([stock_fact(f"O{i}", "a", 100 + i, version=i + 1) for i in range(20)])
        w = Worker(cfg, "outage", [0], name="t", ack_wait=2)
        t = threading.Thread(target=w.run, args=(stop,), daemon=True)
        t.start()
        # every message delivered well past max_attempts (2) while the shop answers 503
        assert wait_for(lambda: emu.stats["requests"] >= 6, timeout=60), emu.stats
        emu.set_faults(down=False)
        want = {(f"O{i}", "a"): 100 + i for i in range(20)}
        assert wait_for(lambda: emu.stock() == want, timeout=60), emu.stock()
        assert asyncio.run(dlq_messages()) == 0
    finally:
        stop.set()
        if t.is_alive():
            t.join(10)
        pub.close()
        emu.stop()
