"""Reconciler on a real PostgreSQL ERP and the webhook emulator: every seeded drift found, none invented,
in-flight changes left out, healing converges the shop; the report renders in headless Chromium; the
e-mail reaches a local SMTP server."""

from __future__ import annotations

import email
import json
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from click.testing import CliRunner

from cdc.outbox.store import connect as outbox_connect
from erpsync.cli import main
from erpsync.config import ConfigError, load_config, load_config_text
from erpsync.testing import wait_for
from reconciler.diff import DRIFT_TABLE
from reconciler.history import attach, next_run_id, record, trend
from reconciler.report import write_reports
from reconciler.run import reconcile
from reconciler.schedule import next_fire, run_on_schedule
from sinks.emulators.webhook import WebhookEmulator
from tests.erp import PostgresErp
from tests.test_e2e import Running, converge


# a local SMTP server ------------------------------------------------------------------------------------
class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, Inbox]]:
    from aiosmtpd.controller import Controller

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    yield port, inbox
    ctl.stop()


@pytest.fixture
def erp(pg_dsn: str) -> Iterator[PostgresErp]:
    e = PostgresErp(pg_dsn)
    e.create_stock_table()
    yield e
    e.close()


@pytest.fixture
def shop() -> Iterator[WebhookEmulator]:
    emu = WebhookEmulator()
    emu.start()
    yield emu
    emu.stop()


def _config(erp: PostgresErp, shop: WebhookEmulator, tmp_path: Path, smtp_port: int) -> str:
    path = erp.config(tmp_path, shop.endpoint)
    cfg = yaml.safe_load(Path(path).read_text())
    cfg["sinks"][0]["list_url"] = shop.url + "/_emulator/state"
    cfg["reconcile"] = {"report_dir": "reports", "history": "hist.duckdb", "catch_up_seconds": 20,
                        "email": {"to": ["merch@example.com"], "from": "erpsync@example.com",
                                  "smtp_host": "127.0.0.1", "smtp_port": smtp_port,
                                  "starttls": False}}  # a test relay on loopback, no password
    Path(path).write_text(yaml.safe_dump(cfg))
    return path


def set_shop_stock(shop: WebhookEmulator, sku: str, loc: str, qty: int | None) -> None:
    with shop.lock:
        if qty is None:
            shop.values.pop(("stock", sku, loc), None)
        else:
            shop.values[("stock", sku, loc)] = {"kind": "stock", "sku": sku, "location": loc,
                                                "available": qty}


def _found(result: Any) -> set[tuple[str, str, str]]:
    with open(result.csv_path) as f:
        rows = [line.rstrip("\n").split(",") for line in f][1:]
    return {(r[1], r[3], r[4]) for r in rows}


def test_seeded_drift_found_in_flight_left_out_and_healed(erp: PostgresErp, shop: WebhookEmulator,
                                                          tmp_path: Path, smtp: tuple[int, Inbox]) -> None:
    erp.seed(30, random.Random(7))
    # a SKU stocked only in a warehouse no shop location takes
    erp.execute("INSERT INTO stock_levels (sku, warehouse_code, on_hand) "
                "VALUES ('ONLY-RETURNS', 'WH-RET', 4)")
    cfg_path = _config(erp, shop, tmp_path, smtp[0])
    cfg = load_config(cfg_path)
    with Running(cfg_path):
        converge(erp, shop)
        expected = erp.expected()
        assert reconcile(cfg).exit_code == 0  # converged: nothing invented

        # seed one drift of each kind in the shop
        set_shop_stock(shop, "SKU-00001", "madrid", expected[("SKU-00001", "madrid")] + 5)  # stock differs
        set_shop_stock(shop, "SKU-00002", "milan", None)  # missing in shop
        set_shop_stock(shop, "GHOST-1", "madrid", 3)  # in shop, not in ERP
        set_shop_stock(shop, "ONLY-RETURNS", "madrid", 2)  # SKU not mapped
        # in flight: committed in the ERP, shop down, so pending in the outbox
        shop.set_faults(down=True)
        erp.execute("UPDATE stock_levels SET on_hand = on_hand + 50 WHERE sku='SKU-00003'")
        ob = outbox_connect(cfg.outbox_path(), durable=False)
        assert wait_for(lambda: ob.execute("SELECT count(*) FROM deliveries WHERE sku='SKU-00003' "
                                           "AND want > done").fetchone()[0] == 2, timeout=20)

        result = reconcile(cfg)
        assert result.exit_code == 3
        assert _found(result) == {("stock_mismatch", "SKU-00001", "madrid"),
                                  ("missing_in_shop", "SKU-00002", "milan"),
                                  ("not_in_erp", "GHOST-1", "madrid"),
                                  ("not_mapped", "ONLY-RETURNS", "madrid")}
        s = result.summaries[0]
        assert s["in_flight"] == 2 and s["caught_up"] is True
        assert s["erp_keys"] == 60 and s["drift_total"] == 4

        # the CLI: exit code 3, heal refused above the limit (2 healable of 60 keys = 3.3% > 1%)
        cfg_doc = yaml.safe_load(Path(cfg_path).read_text())
        cfg_doc["reconcile"]["heal_max_percent"] = 1
        Path(cfg_path).write_text(yaml.safe_dump(cfg_doc))
        shop.set_faults(down=False)
        converge_key = ("SKU-00003", "madrid")
        assert wait_for(lambda: shop.stock().get(converge_key) == erp.expected()[converge_key], timeout=20)
        out = CliRunner().invoke(main, ["reconcile", "-c", cfg_path, "--heal", "--json", "--no-email"])
        assert out.exit_code == 3, out.output
        doc = json.loads(out.stdout)
        assert doc["drift_total"] == 4 and "limit 1%" in doc["sinks"][0]["heal_refused"]

        out = CliRunner().invoke(main, ["reconcile", "-c", cfg_path, "--heal", "--force", "--no-email"])
        assert out.exit_code == 3, out.output
        # the pipeline delivers the healed facts: the shop shows the ERP again
        assert wait_for(lambda: all(shop.stock().get(k) == v for k, v in erp.expected().items()), timeout=30)
        after = reconcile(load_config(cfg_path), send_email=False)
        # healing never invents stock for what the ERP does not know: those two stay, for a human
        assert _found(after) == {("not_in_erp", "GHOST-1", "madrid"),
                                 ("not_mapped", "ONLY-RETURNS", "madrid")}
        assert not shop.regressions

    # history: every run kept, the trend reads them back
    con = duckdb.connect(str(tmp_path / "hist.duckdb"), read_only=True)
    totals = [r[0] for r in con.execute("SELECT drift_total FROM runs ORDER BY run_id").fetchall()]
    assert totals == [0, 4, 4, 4, 2]
    assert con.execute("SELECT count(*) FROM items").fetchone()[0] == 4 + 4 + 4 + 2
    con.close()
    assert len(list((tmp_path / "reports").glob("*.html"))) == 5

    # e-mail: the first two runs mailed (the CLI runs had --no-email, the last send_email=False)
    msgs = smtp[1].messages
    assert len(msgs) == 2 and "no drift" in msgs[0]["Subject"] and "4 item(s)" in msgs[1]["Subject"]
    parts = {p.get_content_type(): p for p in msgs[1].walk()}
    assert "GHOST-1" in parts["text/html"].get_payload(decode=True).decode()
    csvs = [p for p in msgs[1].walk() if p.get_filename() and p.get_filename().endswith(".csv")]
    assert len(csvs) == 1 and b"SKU-00002" in csvs[0].get_payload(decode=True)


def test_cli_exit_codes_for_config_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"source": {"kind": "postgres", "dsn": "postgresql://x"},
                                   "stock": {"table": "t", "sku": "s", "warehouse": "w", "quantity": "q",
                                             "locations": {"A": "a"}},
                                   "reconcile": {"schedule": "not a cron"}}))
    out = CliRunner().invoke(main, ["reconcile", "-c", str(bad)])
    assert out.exit_code == 2 and "reconcile.schedule" in out.output
    with pytest.raises(ConfigError):
        load_config_text(bad.read_text())


# report rendering ---------------------------------------------------------------------------------------
def _synthetic_report(tmp_path: Path, items: int = 120) -> Path:
    con = duckdb.connect()
    con.execute(DRIFT_TABLE)
    kinds = ["stock_mismatch", "missing_in_shop", "not_in_erp", "not_mapped", "price_mismatch"]
    rng = random.Random(1)
    rows = []
    for i in range(items):
        k = kinds[i % len(kinds)]
        loc = ["madrid", "milan", "paris"][i % 3] if k != "price_mismatch" else "RETAIL"
        erp_v, shop_v = rng.randint(0, 50), rng.randint(0, 50)
        rows.append(("shop", k, "price" if k == "price_mismatch" else "stock", f"SKU-<{i:04d}>&", loc,
                     erp_v, shop_v, None, None, float(abs(erp_v - shop_v)), None))
    con.executemany(f"INSERT INTO drift VALUES ({', '.join('?' * 11)})", rows)
    attach(con, tmp_path / "h.duckdb")
    base = {"sink": "shop", "erp_position": "0/16B3748", "erp_keys": 3000, "shop_keys": 2990, "in_flight": 3,
            "healed": 0, "caught_up": True}
    for n in (40, 90):  # two earlier runs for the trend
        rid = next_run_id(con)
        con.execute("CREATE OR REPLACE TEMP TABLE drift_keep AS SELECT * FROM drift")
        record(con, rid, [{**base, "started_at": datetime.now() - timedelta(days=3 - rid), "drift_total": n}])
    rid = next_run_id(con)
    summary = {**base, "started_at": datetime.now(), "drift_total": items}
    record(con, rid, [summary])
    html, _csv = write_reports(con, tmp_path / "out", summaries=[summary], trend=trend(con, 30), run_id=rid,
                               max_items=100)
    return html


def _png_pixels_vary(png: bytes) -> bool:
    """Decode enough of a PNG (no Pillow here) to tell a blank page from a rendered one."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(png):
        length, ctype = struct.unpack(">I4s", png[pos:pos + 8])
        if ctype == b"IDAT":
            idat += png[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return len(set(raw[: 4_000_000])) > 16  # filtered scanlines of a uniform page have very few byte values


def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        pytest.skip("chromium is not installed (apt-get install -y chromium) — cannot render the report")
    html = _synthetic_report(tmp_path)
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600"]
    dom = subprocess.run([*flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=90,
                         check=True).stdout
    # charts are in the DOM, and the table rows were built by the inline script (it ran)
    assert 'id="chart-location"' in dom and dom.count('class="bar"') >= 9  # 3 locations + list × kinds
    assert 'id="chart-trend"' in dom and dom.count('class="run"') == 3
    assert 'data-ready="100"' in dom and dom.count('class="item"') == 100
    assert "SKU-&lt;0000&gt;&amp;" in dom  # SKUs are text, never markup
    png = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={png}", html.as_uri()], capture_output=True, timeout=90,
                   check=True)
    data = png.read_bytes()
    assert len(data) > 20_000 and _png_pixels_vary(data)


# schedule -----------------------------------------------------------------------------------------------
def test_cron_schedule_fires_the_job() -> None:
    assert next_fire("0 6 * * *", datetime(2025, 1, 1, 7, 0)) == datetime(2025, 1, 2, 6, 0)
    real = datetime.now().astimezone()
    shift = timedelta(seconds=59.6 - real.second - real.microsecond / 1e6)  # 0.4 s before a minute starts
    stop = threading.Event()
    calls: list[float] = []

    def job() -> None:
        calls.append(time.monotonic())
        stop.set()

    t0 = time.monotonic()
    run_on_schedule("* * * * *", job, stop, now=lambda: datetime.now().astimezone() + shift)
    assert len(calls) == 1 and 0.2 < calls[0] - t0 < 3
