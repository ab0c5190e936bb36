"""The PostgreSQL reader gives exactly the value the database holds, or stops with a clear error."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import psycopg2
import pytest

from cdc.changes import SourceError
from tests.test_pg_source import _db, drain, execute, insert_lsn, make_source, rows, snapshot_all

__all__ = ["make_source"]  # the fixture, used by name

FLOAT_ROWS = ("(0, 0.1::float8 + 0.2::float8, 5592405.5::real), (1, 1e-310, '1.17549435e-38'::real), "
              "(2, 1.7976931348623157e308, 3.4028235e38::real), (3, 'NaN', '-Infinity'), "
              "(4, '-0', 16777216::real), (5, 2.2250738585072014e-308, '1.4e-45'::real), "
              "(6, 1.0/3, 0.1::real), (7, 123456789.123456789, 8388607.5::real)")


def _shift(values: str, by: int) -> str:
    return re.sub(r"\((\d+),", lambda m: f"({int(m.group(1)) + by},", values)


def _select_exact(dsn: str) -> dict[int, tuple[float, float]]:
    conn = psycopg2.connect(dsn, options="-c extra_float_digits=3")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, d, r FROM fl ORDER BY id")
            return {i: (d, r) for i, d, r in cur.fetchall()}
    finally:
        conn.close()


def _test_decoding(dsn: str, slot: str) -> dict[int, tuple[float, float]]:
    conn = psycopg2.connect(dsn, options="-c extra_float_digits=3")
    conn.autocommit = True
    out: dict[int, tuple[float, float]] = {}
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL)", (slot,))
            for (line,) in cur.fetchall():
                if " INSERT: " in line:
                    f = dict(re.findall(r"(\w+)\[[^\]]+\]:(\S+)", line))
                    out[int(f["id"])] = (float(f["d"]), float(f["r"]))
    finally:
        conn.close()
    return out


def test_database_extra_float_digits_0_does_not_round_stream_or_snapshot(pg_dsn: str,
                                                                         make_source: Any) -> None:
    db = _db(pg_dsn)
    execute(pg_dsn, f'ALTER DATABASE "{db}" SET extra_float_digits = 0',
            "CREATE TABLE fl (id int PRIMARY KEY, d float8, r real)", f"INSERT INTO fl VALUES {FLOAT_ROWS}")
    assert execute(pg_dsn, "SHOW extra_float_digits") == [("0",)]  # new sessions of this database round
    src = make_source(["fl"])
    src.prepare()
    chunks, start = snapshot_all(src)
    execute(pg_dsn, f"SELECT pg_create_logical_replication_slot('td_{db}', 'test_decoding')")
    execute(pg_dsn, f"INSERT INTO fl VALUES {_shift(FLOAT_ROWS, 100)}")
    streamed = rows(drain(src, start, insert_lsn(pg_dsn)))
    exact = {i: tuple(map(repr, v)) for i, v in _select_exact(pg_dsn).items()}
    assert exact[0][0] == "0.30000000000000004" and exact[0][1] == "5592405.5"
    got = {r.after["id"]: (repr(r.after["d"]), repr(r.after["r"])) for r in [*rows(chunks), *streamed]}
    assert got == exact
    decoded = {i: tuple(map(repr, v)) for i, v in _test_decoding(pg_dsn, f"td_{db}").items()}
    assert decoded == {i: v for i, v in exact.items() if i >= 100}
    assert {i: v for i, v in got.items() if i >= 100} == decoded


def test_reader_behind_a_dropped_domain_stops_naming_the_column(pg_dsn: str, make_source: Any) -> None:
    execute(pg_dsn, "CREATE DOMAIN price_dom AS numeric(10,2)",
            "CREATE TABLE pr (id int PRIMARY KEY, price price_dom)")
    knew = make_source(["pr"])
    knew.prepare()
    _chunks, start = snapshot_all(knew)  # this reader has seen the domain: it keeps what it knew
    execute(pg_dsn, "INSERT INTO pr VALUES (1, 6.50)",
            "ALTER TABLE pr ALTER COLUMN price TYPE numeric(10,2)", "DROP DOMAIN price_dom",
            "INSERT INTO pr VALUES (2, 7.50)")
    end = insert_lsn(pg_dsn)
    behind = make_source(["pr"])  # a reader started after the DROP: the catalog no longer has the domain
    with pytest.raises(SourceError, match=r"column public\.pr\.price has type OID \d+, which is no longer"):
        drain(behind, start, end)
    behind.close()
    got = rows(drain(knew, start, end))
    assert [(r.after["id"], r.after["price"]) for r in got] == [(1, Decimal("6.50")), (2, Decimal("7.50"))]
    assert all(type(r.after["price"]) is Decimal for r in got)


def test_sql_connection_for_reconcile_reads_floats_exactly(pg_dsn: str) -> None:
    from cdc.sources.postgres.admin import connect_sql
    from cdc.sources.postgres.config import PostgresSourceConfig

    execute(pg_dsn, f'ALTER DATABASE "{_db(pg_dsn)}" SET extra_float_digits = 0')
    conn = connect_sql(PostgresSourceConfig(dsn=pg_dsn))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 0.1::float8 + 0.2::float8, 5592405.5::real")
            assert cur.fetchone() == (0.30000000000000004, 5592405.5)
    finally:
        conn.close()


SAP_DDL = """
CREATE TABLE "OITM" ("ItemCode" varchar(50) PRIMARY KEY, "OnHand" numeric(19,6) NOT NULL,
                     "SellItem" char(1) NOT NULL DEFAULT 'Y');
CREATE TABLE "ITM1" ("ItemCode" varchar(50), "PriceList" int, "Price" numeric(19,6), "Currency" varchar(3),
                     PRIMARY KEY ("ItemCode", "PriceList"));
CREATE TABLE itemgroups (groupcode int PRIMARY KEY, "GroupName" text);
"""


def test_mixed_case_erp_mapped_with_quoted_identifiers_end_to_end(pg_dsn: str, tmp_path: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A SAP Business One-style ERP ("OITM"."ItemCode"): the mapping names tables and columns as SQL would
    (quoted: exactly; unquoted: folded to lower case, as PostgreSQL does); config validate passes and the
    streamed facts equal the snapshot SELECT."""
    import yaml

    from erpsync.cli import main
    from erpsync.config import load_config
    from sinks.emulators.webhook import WebhookEmulator
    from tests.test_e2e import Running
    from tests.test_mapping_examples import assert_shop_equals_snapshot_select

    execute(pg_dsn, SAP_DDL,
            "INSERT INTO \"OITM\" VALUES ('A-1', 5, 'Y'), ('B-2', 7, 'N'), ('C-3', 2, 'Y')",
            "INSERT INTO \"ITM1\" VALUES ('A-1', 1, 9.95, 'EUR'), ('C-3', 1, 3.5, 'EUR'), "
            "('A-1', 2, 8, 'EUR')",
            "INSERT INTO itemgroups VALUES (1, 'Retail'), (2, 'Sale')")
    shop = WebhookEmulator()
    shop.start()
    cfg = {
        "source": {"kind": "postgres", "dsn": pg_dsn, "slot": "sap", "publication": "sap",
                   "heartbeat_seconds": 1},
        "lookups": {"GroupName": {"table": "PUBLIC.ItemGroups", "key": "GroupCode", "value": '"GroupName"'}},
        "stock": {"table": '"OITM"', "sku": '"ItemCode"', "warehouse": "'01'", "quantity": '"OnHand"',
                  "filter": "\"SellItem\" = 'Y'", "locations": {"01": "main"}, "key": ['"ItemCode"']},
        "prices": {"table": 'public."ITM1"', "sku": '"ItemCode"',
                   "price_list": 'lookup(GroupName, "PriceList")', "amount": '"Price"',
                   "currency": '"Currency"'},
        "sinks": [{"name": "shop", "kind": "webhook", "url": shop.endpoint, "timeout_seconds": 2,
                   "secret": "hook-test-key"}],
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "ops": {"listen": "127.0.0.1:0"},
    }
    path = tmp_path / "sap.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from click.testing import CliRunner

    r = CliRunner().invoke(main, ["--log-format", "text", "config", "validate", str(path)])
    assert r.exit_code == 0, r.output
    conf = load_config(str(path))
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    cur = conn.cursor()
    try:
        with Running(conf, drain_seconds=1):
            cur.execute("UPDATE \"OITM\" SET \"OnHand\" = \"OnHand\" + 4 WHERE \"ItemCode\" = 'A-1'")
            cur.execute("UPDATE \"OITM\" SET \"SellItem\" = 'Y' WHERE \"ItemCode\" = 'B-2'")
            cur.execute("INSERT INTO \"OITM\" VALUES ('D-4', 11, 'Y')")
            cur.execute("UPDATE \"ITM1\" SET \"Price\" = 10.5 "
                        "WHERE \"ItemCode\" = 'A-1' AND \"PriceList\" = 1")
            cur.execute("INSERT INTO \"ITM1\" VALUES ('D-4', 2, 1.25, 'EUR')")
            assert_shop_equals_snapshot_select(shop, conf, cur, "postgres")
            assert shop.stock() == {("A-1", "main"): 9, ("B-2", "main"): 7, ("C-3", "main"): 2,
                                    ("D-4", "main"): 11}
            prices = {(k[1], k[2]): Decimal(v["amount"]) for k, v in shop.values.items() if k[0] == "price"}
            assert prices == {("A-1", "Retail"): Decimal("10.50"), ("A-1", "Sale"): Decimal("8.00"),
                              ("C-3", "Retail"): Decimal("3.50"), ("D-4", "Sale"): Decimal("1.25")}
            assert not shop.regressions
    finally:
        shop.stop()
        conn.close()


def test_table_names_are_read_as_the_database_reads_them() -> None:
    from cdc.mapping.compiled import table_name
    from cdc.mapping.rules import RuleError

    assert table_name('"OITM"', "public", "postgres") == "public.OITM"
    assert table_name('Sales."OITM"', "public", "postgres") == "sales.OITM"
    assert table_name("OITM", "public", "postgres") == "public.oitm"
    assert table_name('"a""b"', "public", "postgres") == 'public.a"b'
    assert table_name("Stock", "erp", "mysql") == "erp.Stock"
    with pytest.raises(RuleError, match=r"stock\.table: .*holding '\.'"):
        table_name('"my.table"', "public", "postgres", "stock.table")
    with pytest.raises(RuleError, match=r"prices\.table: .*schema\.table"):
        table_name("db.sales.items", "public", "postgres", "prices.table")
