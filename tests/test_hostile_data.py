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
                          "timeout_seconds": 2}],
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
