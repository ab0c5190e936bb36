"""The ops endpoint during a real streaming run: metrics move with the ERP, readiness follows the shop."""

from __future__ import annotations

import json
import random
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from erpsync import metrics
from erpsync.cli import main
from erpsync.config import OpsConfig, load_config
from erpsync.ops_server import OpsServer, parse_listen
from erpsync.pipeline import Pipeline
from erpsync.testing import wait_for
from sinks.emulators.webhook import WebhookEmulator
from tests.erp import PostgresErp


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, body = get(base + "/metrics")
    assert code == 200
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(m: dict[Any, float], name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in m.items()
               if n == name and all(dict(lab).get(k) == w for k, w in labels.items()))


def status_json(config: str) -> dict[str, Any]:
    r = CliRunner().invoke(main, ["status", "--config", config, "--json"])
    assert r.exit_code in (0, 1), r.output
    return json.loads(r.stdout)


@pytest.fixture
def shop() -> Iterator[WebhookEmulator]:
    emu = WebhookEmulator()
    emu.start()
    yield emu
    emu.stop()


def test_metrics_and_health_follow_a_streaming_run(pg_dsn: str, shop: WebhookEmulator,
                                                   tmp_path: Path) -> None:
    erp = PostgresErp(pg_dsn)
    erp.create_stock_table()
    rng = random.Random(7)
    skus = erp.seed(20, rng)
    path = erp.config(tmp_path, shop.endpoint)
    raw = yaml.safe_load(Path(path).read_text())
    raw["ops"] = {"listen": "127.0.0.1:0", "sink_down_seconds": 1, "max_lag_seconds": 30}
    Path(path).write_text(yaml.safe_dump(raw))

    pipeline = Pipeline(load_config(path), drain_seconds=1, serve_ops=True)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.run(stop)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        assert wait_for(lambda: pipeline.ops is not None and pipeline.ops.port != 0, timeout=10)
        assert pipeline.ops is not None
        base = pipeline.ops.url
        assert pipeline.ops.host == "127.0.0.1"
        code, body = get(base + "/healthz")
        assert code == 200 and json.loads(body)["status"] == "ok"
        assert wait_for(lambda: get(base + "/readyz")[0] == 200, timeout=30), get(base + "/readyz")
        assert wait_for(lambda: total(scrape(base), "erpsync_outbox_pending", sink="shop") == 0, timeout=30)

        before = scrape(base)
        for _ in range(30):
            erp.transaction(erp.random_transaction(rng, skus))
        assert wait_for(lambda: total(scrape(base), "erpsync_changes_total") >= total(
            before, "erpsync_changes_total") + 30, timeout=20)
        assert wait_for(lambda: total(scrape(base), "erpsync_end_to_end_seconds_count", sink="shop") > total(
            before, "erpsync_end_to_end_seconds_count", sink="shop"), timeout=20)
        after = scrape(base)
        assert total(after, "erpsync_transactions_total") >= total(before, "erpsync_transactions_total") + 30
        assert total(after, "erpsync_sink_last_success_timestamp", sink="shop") > 0
        assert total(after, "erpsync_source_connected") == 1

        # The shop goes down: the backlog shows up as pending, readiness fails with the sink as reason.
        shop.set_faults(down=True)
        for _ in range(30):
            erp.transaction(erp.random_transaction(rng, skus))
        assert wait_for(lambda: total(scrape(base), "erpsync_outbox_pending", sink="shop") > 0, timeout=20)

        def not_ready_for_sink() -> bool:
            code, body = get(base + "/readyz")
            return code == 503 and any(r.startswith("sink shop:") for r in json.loads(body)["reasons"])

        assert wait_for(not_ready_for_sink, timeout=30), get(base + "/readyz")
        assert total(scrape(base), "erpsync_sink_errors_total", sink="shop", kind="retry") > 0

        # `status --json` (separate read-only connection) agrees with the metrics once both are current.
        def agree() -> bool:
            m, st = scrape(base), status_json(path)
            s = st["sinks"]["shop"]
            return (s["pending"] == total(m, "erpsync_outbox_pending", sink="shop") > 0
                    and s["dlq"] == total(m, "erpsync_dlq_size", sink="shop"))

        assert wait_for(agree, timeout=20, interval=0.5)
        st = status_json(path)
        assert st["sinks"]["shop"]["state"] == "down" and st["status"] == "fail"
        assert st["sinks"]["shop"]["last_error"]
        assert st["erp"]["slot_exists"] and st["erp"]["wal_status"] in ("reserved", "extended")
        assert st["source"]["position"] and st["lag"]["bytes"] is not None
        human = CliRunner().invoke(main, ["status", "--config", path])
        assert human.exit_code == 1 and "sink      shop: down" in human.stdout

        # Back up: the backlog drains, readiness returns.
        shop.set_faults(down=False)
        assert wait_for(lambda: total(scrape(base), "erpsync_outbox_pending", sink="shop") == 0, timeout=60)
        assert wait_for(lambda: get(base + "/readyz")[0] == 200, timeout=20), get(base + "/readyz")
        assert wait_for(lambda: shop.stock() == erp.expected(), timeout=20)
        st = status_json(path)
        assert st["sinks"]["shop"]["pending"] == 0 and st["status"] in ("ok", "warn")
    finally:
        stop.set()
        t.join(60)
        erp.close()
    assert not errors, errors
    # stopped: the endpoint is gone
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", pipeline.ops.port), timeout=1).close()


def test_readyz_fails_when_lag_exceeds_the_bound(tmp_path: Path) -> None:
    ops = OpsServer(OpsConfig(listen="127.0.0.1:0", max_lag_seconds=2), tmp_path / "none.db", []).start()
    try:
        metrics.source_connected.set(1)
        metrics.source_lag_seconds.set(5)
        code, body = get(ops.url + "/readyz")
        assert code == 503
        assert any("lag 5.0s exceeds ops.max_lag_seconds=2" in r for r in json.loads(body)["reasons"])
        metrics.source_lag_seconds.set(0.5)
        assert get(ops.url + "/readyz")[0] == 200
        metrics.source_connected.set(0)
        code, body = get(ops.url + "/readyz")
        assert code == 503 and "source: not streaming" in json.loads(body)["reasons"][0]
        assert get(ops.url + "/nope")[0] == 404
    finally:
        metrics.source_connected.set(0)
        metrics.source_lag_seconds.set(0)
        ops.stop()


def test_ops_endpoint_binds_loopback_by_default() -> None:
    assert OpsConfig().listen == "127.0.0.1:9187"
    assert parse_listen(OpsConfig().listen) == ("127.0.0.1", 9187)
    assert parse_listen("9187") == ("127.0.0.1", 9187)
    assert parse_listen("[::1]:0") == ("::1", 0)
    ops = OpsServer(OpsConfig(listen="127.0.0.1:0"), "/nonexistent/outbox.db", []).start()
    try:
        assert ops._server is not None and ops._server.server_address[0] == "127.0.0.1"
    finally:
        ops.stop()


def test_a_scraper_hanging_up_mid_answer_is_not_an_error(tmp_path, caplog, capsys) -> None:
    """Prometheus gives up on a slow scrape by closing the socket: no traceback, no ERROR line."""
    import struct
    import time

    s = OpsServer(OpsConfig(listen="127.0.0.1:0"), tmp_path / "outbox.db", []).start()
    try:
        for _ in range(20):
            c = socket.create_connection(("127.0.0.1", s.port))
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            c.close()
        time.sleep(1)
    finally:
        s.stop()
    assert "Traceback" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= 40 and r.name.startswith("erpsync")]


def test_idle_half_requests_are_closed_and_threads_stay_bounded(tmp_path: Path) -> None:
    """400 clients each send half a request and go quiet: the endpoint serves at most max_connections at
    once (the rest are answered 503 and closed), closes the idle ones after its timeout, and then answers
    a normal request again."""
    import time

    ops = OpsServer(OpsConfig(listen="127.0.0.1:0"), tmp_path / "none.db", [])
    ops.connection_timeout, ops.max_connections = 1.0, 8
    ops.start()
    base_threads = threading.active_count()
    socks: list[socket.socket] = []
    peak = 0
    try:
        for _ in range(400):
            s = socket.create_connection(("127.0.0.1", ops.port), timeout=5)
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")  # never the blank line that ends it
            socks.append(s)
            peak = max(peak, threading.active_count() - base_threads)
        time.sleep(0.3)
        peak = max(peak, threading.active_count() - base_threads)
        assert peak <= 8 + 1, f"{peak} handler threads for 400 idle connections"
        deadline = time.monotonic() + 10
        still_open = list(socks)
        while still_open and time.monotonic() < deadline:  # each one ends: 503 + close, or closed idle
            s = still_open.pop(0)
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                while s.recv(4096):
                    pass
            except TimeoutError:
                still_open.append(s)
            except OSError:
                pass  # reset: closed too
        assert not still_open, f"{len(still_open)} idle connections never closed"
        assert wait_for(lambda: threading.active_count() <= base_threads, timeout=5)
        code, body = get(ops.url + "/healthz")
        assert code == 200 and json.loads(body)["status"] == "ok"
    finally:
        for s in socks:
            s.close()
        ops.stop()
