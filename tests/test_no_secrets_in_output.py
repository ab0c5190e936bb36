"""`erpsync run` as a real process: the webhook secret and the DSN password appear in no log line, nor in
`status --json` / `doctor --json`; `teardown` leaves no slot behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import pytest
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


# a shop that echoes our credentials back, in every encoding ---------------------------------------------
def encoded_forms(*secrets: str) -> list[str]:
    """What must never be printed or stored: each secret as is, JSON-escaped, Python-quoted, and the
    base64 of the Basic-auth pair (without its padding, so a cut-off copy counts too)."""
    import base64

    forms: list[str] = []
    for s in secrets:
        forms += [s, json.dumps(s)[1:-1], repr(s)[1:-1], json.dumps(json.dumps(s))[1:-1]]
    pair = ":".join(secrets)
    forms += [pair, base64.b64encode(pair.encode()).decode().rstrip("="), json.dumps(pair)[1:-1],
              repr(pair)[1:-1]]
    return forms


def leaks(text: str | bytes, forms: list[str]) -> list[str]:
    if isinstance(text, bytes):
        return [f for f in forms if f.encode() in text]
    return [f for f in forms if f in text]


def woo_credentials() -> tuple[str, str]:
    # quotes and a backslash: their JSON-escaped and quoted forms differ from the plain one
    return f'ck_{uuid.uuid4().hex[:10]}"\\k', f"cs_{uuid.uuid4().hex[:10]}'+/ s"


def woo_config(tmp_path: Path, url: str, **extra: Any) -> str:
    cfg = {"source": {"kind": "postgres", "dsn": "host=127.0.0.1"},
           "stock": {"table": "t", "sku": "sku", "warehouse": "w", "quantity": "q",
                     "locations": {"W": "main"}},
           "sinks": [{"name": "woo", "kind": "woocommerce", "url": url, "kinds": ["stock"],
                      "consumer_key": "${WOO_KEY}", "consumer_secret": "${WOO_SECRET}",
                      "locations": {"main": "stock"}, "timeout_seconds": 5}],
           "outbox": {"path": str(tmp_path / "outbox.db")},
           "ops": {"listen": "127.0.0.1:0", "sink_down_seconds": 0.01}, **extra}
    return write(tmp_path, "woo.yaml", cfg)


def test_redact_masks_encoded_forms() -> None:
    import base64
    from urllib.parse import quote

    from erpsync.logs import redact, register_secret

    key, secret = f'k-{uuid.uuid4().hex[:8]}"\\', f"s-{uuid.uuid4().hex[:8]}'/+ &"
    ws = f"WS{uuid.uuid4().hex}"
    for s in (key, secret, ws):
        register_secret(s)
    samples = [*encoded_forms(key, secret), quote(secret, safe=""),
               base64.b64encode(f"{ws}:".encode()).decode(),  # PrestaShop: key and an empty password
               base64.b64encode(f"{secret}:{key}".encode()).decode()]
    for text in samples:
        out = redact(f"error: {text} end")
        assert "***" in out and not leaks(out, samples), (text, out)


def test_shop_echoing_credentials_leaks_into_no_output_or_file(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """WooCommerce answers every push with our Basic-auth header echoed (base64, decoded, JSON-escaped,
    quoted): the outbox bytes on disk, `status [--json]`, `dlq list [--json]`, /readyz, /metrics and the
    log lines carry none of it."""
    import logging
    import urllib.error
    import urllib.request

    from click.testing import CliRunner

    from cdc.facts import stock_fact
    from cdc.outbox.queue import SinkQueue
    from cdc.outbox.store import Outbox
    from erpsync.cli import main
    from erpsync.config import load_config
    from erpsync.logs import JsonFormatter, TextFormatter
    from erpsync.ops_server import OpsServer
    from sinks.base import Outcome
    from sinks.emulators.base import Faults
    from sinks.emulators.woocommerce import WooCommerceEmulator
    from sinks.registry import make_sink

    key, secret = woo_credentials()
    forms = encoded_forms(key, secret)
    monkeypatch.setenv("WOO_KEY", key)
    monkeypatch.setenv("WOO_SECRET", secret)
    shop = WooCommerceEmulator(skus=["SKU-1", "SKU-2"], consumer_key=key, consumer_secret=secret,
                               faults=Faults(echo_credentials=400))
    shop.start()
    path = woo_config(tmp_path, shop.url)
    cfg = load_config(path)  # registers the secrets, as every command does
    ob = Outbox(cfg.outbox_path(), {"woo": ["stock"]})
    ob.begin()
    ob.write_facts([stock_fact("SKU-1", "main", 3), stock_fact("SKU-2", "main", 4)])
    ob.commit()
    ob.close()
    sink = make_sink(cfg.sinks[0])
    q = SinkQueue(cfg.outbox_path(), "woo")
    messages: list[str] = []
    try:
        p1, p2 = q.next_batch(10)
        [r] = sink.push([p1.fact])
        assert r.outcome is Outcome.PERMANENT and len(leaks(r.message, forms)) >= 4, r.message  # echoed
        q.mark_dead([(p1.fact, 1, r.message)])
        shop.set_faults(echo_credentials=503)
        [r2] = sink.push([p2.fact])
        assert r2.outcome is Outcome.RETRY and leaks(r2.message, forms), r2.message
        q.mark_retry([(p2.fact, 1, 0.0, r2.message)])
        messages += [r.message, r2.message]
    finally:
        q.close()
        sink.close()
        shop.stop()

    files = [tmp_path / n for n in ("outbox.db", "outbox.db-wal") if (tmp_path / n).exists()]
    for f in files:
        assert not leaks(f.read_bytes(), forms), f
    outputs: dict[str, str] = {}
    runner = CliRunner()
    for args in (["status", "--no-erp"], ["status", "--no-erp", "--json"], ["dlq", "list"],
                 ["dlq", "list", "--json"]):
        res = runner.invoke(main, ["--log-format", "text", *args, "--config", path])
        outputs[" ".join(args)] = res.output
    assert "SKU-1" in outputs["dlq list"] and "SKU-1" in outputs["dlq list --json"]
    assert "HTTP 503" in outputs["status --no-erp"], outputs["status --no-erp"]
    ops = OpsServer(cfg.ops, cfg.outbox_path(), ["woo"]).start()
    time.sleep(0.1)  # failing for longer than sink_down_seconds since the endpoint started: "down"
    try:
        for what in ("readyz", "metrics"):
            try:
                with urllib.request.urlopen(f"{ops.url}/{what}", timeout=5) as resp:
                    outputs[what] = resp.read().decode()
            except urllib.error.HTTPError as e:  # 503: not ready (the sink is down, the source too)
                outputs[what] = e.read().decode()
    finally:
        ops.stop()
    assert "sink woo" in outputs["readyz"], outputs["readyz"]
    for fmt in (TextFormatter(), JsonFormatter()):
        for m in messages:
            rec = logging.LogRecord("erpsync.delivery", logging.WARNING, __file__, 1, "push failed: %s",
                                    (m,), None)
            rec.fields = {"error": m}  # type: ignore[attr-defined]
            outputs[f"log {type(fmt).__name__}"] = fmt.format(rec)
    for name, text in outputs.items():
        assert not leaks(text, forms), (name, leaks(text, forms), text[:2000])


def test_reconcile_with_a_shop_echoing_credentials_leaks_nothing(pg_dsn: str, tmp_path: Path) -> None:
    """The shop's listing answers 401 with our Basic-auth header echoed: reconcile's stdout, stderr and
    --json, the HTML and CSV reports and the history carry none of it; reports and history are private."""
    from sinks.emulators.base import Faults
    from sinks.emulators.woocommerce import WooCommerceEmulator

    key, secret = woo_credentials()
    forms = encoded_forms(key, secret)
    env = {**os.environ, "WOO_KEY": key, "WOO_SECRET": secret, "PYTHONPATH": str(ROOT)}
    erp = PostgresErp(pg_dsn)
    erp.create_stock_table()
    erp.seed(5, random.Random(5))
    shop = WooCommerceEmulator(skus=["SKU-1"], consumer_key=key, consumer_secret=secret,
                               faults=Faults(echo_credentials=401))
    shop.start()
    try:
        doc = yaml.safe_load(Path(erp.config(tmp_path, "http://127.0.0.1:1/unused")).read_text())
        doc["sinks"] = yaml.safe_load(Path(woo_config(tmp_path, shop.url)).read_text())["sinks"]
        doc["reconcile"] = {"report_dir": "reports", "history": "hist/runs.duckdb", "catch_up_seconds": 1}
        path = write(tmp_path, "erpsync.yaml", doc)
        runs = [subprocess.run([sys.executable, "-m", "erpsync.cli", "--log-format", fmt, "reconcile",
                                "--config", path, "--no-email", *extra], cwd=ROOT, env=env, text=True,
                               capture_output=True, timeout=120, umask=0o022)
                for fmt, extra in (("text", []), ("json", ["--json"]))]
        requests = shop.stats["requests"]
    finally:
        shop.stop()
        erp.close()
    assert requests >= 2  # the shop was asked (and echoed) each time
    assert all(r.returncode == 1 for r in runs), [r.stderr[-2000:] for r in runs]
    assert "HTTP 401" in runs[0].stderr + runs[0].stdout, runs[0].stderr[-2000:]
    reports = sorted((tmp_path / "reports").iterdir())
    assert reports
    texts = {f"run {i} {w}": getattr(r, w) for i, r in enumerate(runs) for w in ("stdout", "stderr")}
    texts |= {p.name: p.read_text() for p in reports}
    import duckdb

    con = duckdb.connect(str(tmp_path / "hist" / "runs.duckdb"), read_only=True)
    errors = [e for (e,) in con.execute("SELECT error FROM runs").fetchall()]
    con.close()
    assert len(errors) == 2 and all("HTTP 401" in e for e in errors), errors
    texts["history"] = "\n".join(errors)
    for name, text in texts.items():
        assert not leaks(text, forms), (name, leaks(text, forms), text[-2000:])
    assert not leaks((tmp_path / "hist" / "runs.duckdb").read_bytes(), forms)
    for p in [*reports, tmp_path / "hist" / "runs.duckdb"]:
        assert p.stat().st_mode & 0o777 == 0o600, (p, oct(p.stat().st_mode))
    for d in (tmp_path / "reports", tmp_path / "hist"):
        assert d.stat().st_mode & 0o777 == 0o700, (d, oct(d.stat().st_mode))
