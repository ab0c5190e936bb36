"""The outbox's disk fills up (or turns read-only) under a running service: `erpsync run` waits it out —
it does not exit, the ERP keeps its changes for us, and everything arrives once space is back."""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from erpsync.testing import wait_for
from sinks.emulators.webhook import WebhookEmulator
from tests.erp import PostgresErp
from tests.test_crash import outbox_position, start


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.decode().strip()}")
    yield disk
    for _ in range(20):
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode == 0:
            break
        time.sleep(0.5)


def fill(disk: Path) -> Path:
    # SQLite reuses its WAL in place: truncate it first so the next commit needs new blocks
    conn = sqlite3.connect(disk / "outbox.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    filler = disk / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"\0" * (1 << 20))
            f.flush()
    return filler


def test_a_full_outbox_disk_is_waited_out_not_fatal(pg_dsn: str, tmp_path: Path, small_disk: Path) -> None:
    erp = PostgresErp(pg_dsn)
    erp.create_stock_table()
    rng = random.Random(5)
    skus = erp.seed(50, rng)
    shop = WebhookEmulator()
    shop.start()
    config = erp.config(tmp_path, shop.endpoint)
    text = Path(config).read_text().replace(str(tmp_path / "outbox.db"), str(small_disk / "outbox.db"))
    Path(config).write_text(text)
    log = tmp_path / "run.log"
    proc = start(config, log)
    try:
        assert wait_for(lambda: outbox_position(small_disk / "outbox.db") is not None, timeout=60)
        assert wait_for(lambda: shop.stock() == erp.expected(), timeout=30)
        proc.send_signal(signal.SIGKILL)  # a restart that finds the disk full ...
        proc.wait()
        filler = fill(small_disk)
        for _ in range(20):
            erp.transaction(erp.random_transaction(rng, skus))
        proc = start(config, log)
        time.sleep(6)
        assert proc.poll() is None, "run exited on a full outbox disk: " + log.read_text()[-2000:]
        assert "not writable" in log.read_text()
        filler.unlink()  # ... then space comes back: nothing was lost meanwhile
        assert wait_for(lambda: shop.stock() == erp.expected(), timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shop.stop()
        erp.close()
