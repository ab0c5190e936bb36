"""`erpsync run` as a real process: the webhook secret and the DSN password appear in no log line, nor in
`status --json` / `doctor --json`; `teardown` leaves no slot behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import yaml

from erpsync.testing import free_port, wait_for
from sinks.emulators.webhook import WebhookEmulator
from tests.erp import LOCATIONS, SAFETY, PostgresErp

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "erpsync.cli", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def ready(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def write(tmp_path: Path, name: str, cfg: dict[str, Any]) -> str:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def test_run_status_doctor_never_print_secrets(pg_dsn: str, tmp_path: Path) -> None:
    hook_secret = f"hooktok-{uuid.uuid4().hex}"
    db_password = f"pwtok-{uuid.uuid4().hex}"  # trust auth ignores it, but it is in the DSN all the same
    env = {**os.environ, "HOOK_SECRET": hook_secret, "ERP_PW": db_password, "PYTHONPATH": str(ROOT)}
    erp = PostgresErp(pg_dsn)
    erp.create_stock_table()
    rng = random.Random(11)
    skus = erp.seed(10, rng)
    shop = WebhookEmulator(secret=hook_secret)  # requests must carry a valid signature to count
    shop.start()
    port = free_port()
    source = {"kind": "postgres", "dsn": f"{pg_dsn} password=${{ERP_PW}}", "heartbeat_seconds": 1}
    cfg = {"source": source,
           "stock": {"table": "public.stock_levels", "sku": "sku", "warehouse": "warehouse_code",
                     "quantity": "on_hand - reserved", "locations": LOCATIONS, "safety_stock": SAFETY},
           "sinks": [{"name": "shop", "kind": "webhook", "url": shop.endpoint, "secret": "${HOOK_SECRET}"}],
           "outbox": {"path": str(tmp_path / "outbox.db")},
           "ops": {"listen": f"127.0.0.1:{port}"}}
    path = write(tmp_path, "erpsync.yaml", cfg)
    outputs: list[str] = []
    # files, not pipes: a chatty debug log must not fill a pipe buffer and stall the service
    out_f, err_f = open(tmp_path / "run.out", "w+"), open(tmp_path / "run.err", "w+")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "erpsync.cli", "--log-level", "debug",
                             "--log-format", "json", "run", "--config", path], cwd=ROOT, env=env, text=True,
                            stdout=out_f, stderr=err_f)
    try:
        assert wait_for(lambda: ready(port) or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, (tmp_path / "run.err").read_text()[-2000:]
        for _ in range(20):
            erp.transaction(erp.random_transaction(rng, skus))
        assert wait_for(lambda: shop.stock() == erp.expected(), timeout=30)
        for args in (["status", "--config", path, "--json"], ["status", "--config", path],
                     ["doctor", "--config", path, "--json"], ["doctor", "--config", path]):
            r = cli(*args, env=env)
            assert r.returncode in (0, 1), r.stderr
            outputs += [r.stdout, r.stderr]
        assert json.loads(outputs[0])["sinks"]["shop"]["pending"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        out_f.close()
        err_f.close()
        shop.stop()
    out, err = (tmp_path / "run.out").read_text(), (tmp_path / "run.err").read_text()
    assert proc.returncode == 0, err[-2000:]
    outputs += [out, err]
    assert '"msg": "streaming"' in err  # the logs were really captured, as JSON

    # a failing run (ERP unreachable) must not echo the DSN either
    bad_dsn = f"host=127.0.0.1 port={free_port()} dbname=x user=y password=${{ERP_PW}}"
    bad = write(tmp_path, "bad.yaml", {**cfg, "source": {**source, "dsn": bad_dsn}})
    # (the outbox exists, so run first waits for the ERP — its retry lines are checked too — then exits)
    r = cli("run", "--config", bad, "--wait-for-erp", "2", env=env)
    assert r.returncode == 1 and "cannot connect" in r.stderr and "retrying in" in r.stderr
    outputs += [r.stdout, r.stderr]

    # decommission: no slot left retaining WAL
    r = cli("teardown", "--config", path, "--yes", env=env)
    assert r.returncode == 0, r.stderr
    outputs += [r.stdout, r.stderr]
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'erpsync'")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT count(*) FROM pg_publication WHERE pubname = 'erpsync'")
        assert cur.fetchone() == (0,)
    conn.close()
    erp.close()

    for text in outputs:
        assert hook_secret not in text
        assert db_password not in text


def test_json_log_fields_are_redacted() -> None:
    import logging

    from erpsync.logs import JsonFormatter, fields, register_secret

    register_secret("tok-4f9a-field-secret")
    rec = logging.LogRecord("erpsync", logging.INFO, __file__, 1, "pushed", None, None)
    rec.fields = fields(sink="shop", url="https://x/?key=tok-4f9a-field-secret",  # type: ignore[attr-defined]
                        nested={"auth": "tok-4f9a-field-secret"})["fields"]
    line = JsonFormatter().format(rec)
    assert "tok-4f9a-field-secret" not in line and "***" in line
