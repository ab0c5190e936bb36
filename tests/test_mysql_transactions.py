"""MariaDB transactions and row images as the database committed them: XA PREPARE / COMMIT / ROLLBACK,
TRUNCATE, and partial row images (binlog_row_image MINIMAL / NOBLOB) — against a real throwaway MariaDB."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from cdc.changes import Chunk, RowChange, SourceMisconfigured
from cdc.sources.mysql.replication import MAX_CHUNK, MySQLSource
from cdc.sources.postgres.config import PostgresSourceConfig
from cdc.sources.postgres.replication import PostgresSource
from erpsync.testing import wait_for
from erpsync.testing.mariadb import ThrowawayMariaDB
from sinks.emulators.webhook import WebhookEmulator
from tests.erp import Erp
from tests.test_e2e import Running, converge, shop  # noqa: F401  (the shop fixture)
from tests.test_mysql_source import cfg, master_pos, sql

MARKER = 1_000_000  # a row inserted last: once it arrives, everything committed before it has too


@pytest.fixture
def make_source(mariadb_server: ThrowawayMariaDB, mariadb_db: str) -> Iterator[Any]:
    made: list[MySQLSource] = []

    def make(tables: list[str], **kw: Any) -> MySQLSource:
        columns = kw.pop("columns", None)
        s = MySQLSource(cfg(mariadb_server, mariadb_db, **kw), tables, columns)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def stream_for(src: MySQLSource, position: str, seconds: float = 20.0) -> Iterator[Chunk]:
    """``src.stream(position)``, closed after ``seconds``: a stream that never delivers (a reader that holds
    changes back and so sends no keepalive) ends the test instead of hanging it."""
    timer = threading.Timer(seconds, src.close)
    timer.start()
    try:
        yield from src.stream(position)
    finally:
        timer.cancel()


def until_marker(src: MySQLSource, position: str) -> list[Chunk]:
    """Chunks from ``position`` up to and including the commit that carries the MARKER insert."""
    out: list[Chunk] = []
    for ch in stream_for(src, position):
        out.append(ch)
        if ch.commit and any(c.op == "c" and c.after and c.after["id"] == MARKER for c in ch.changes):
            return out
        assert not any(c.after and c.after["id"] == MARKER for c in ch.changes), "marker split from commit"
    raise AssertionError(f"the marker row never arrived; got {ops(out)}")


def read_all(src: MySQLSource, position: str) -> None:
    """Stream until the stream raises (what the caller expects) or 20 s pass."""
    for _ in stream_for(src, position):
        pass


def ops(chunks: list[Chunk]) -> list[tuple[str, Any]]:
    return [(c.op, (c.after or c.before or {}).get("id")) for ch in chunks for c in ch.changes]


def run(server: ThrowawayMariaDB, db: str, *stmts: str) -> Any:
    """Statements on one root connection, left open (a prepared XA survives its connection's end anyway)."""
    conn = server.connect(db)
    with conn.cursor() as cur:
        for s in stmts:
            cur.execute(s)
    return conn


def table(server: ThrowawayMariaDB, db: str) -> list[tuple[int, int]]:
    return [tuple(r) for r in sql(server, "SELECT id, qty FROM t ORDER BY id", db=db)]


@pytest.fixture
def qty_table(mariadb_server: ThrowawayMariaDB, mariadb_db: str) -> str:
    sql(mariadb_server, "CREATE TABLE t (id INT PRIMARY KEY, qty INT NOT NULL, note TEXT)",
        "CREATE TABLE other (id INT PRIMARY KEY)", "INSERT INTO t VALUES (1, 1, 'one')", db=mariadb_db)
    return master_pos(mariadb_server)


# -------------------------------------------------------------------------------------------- S5: XA


def test_xa_prepare_then_rollback_emits_nothing(mariadb_server, mariadb_db, qty_table, make_source):
    conn = run(mariadb_server, mariadb_db,
               "XA START 'x'", "UPDATE t SET qty = 999 WHERE id = 1", "INSERT INTO t VALUES (2, 2, 'two')",
               "XA END 'x'", "XA PREPARE 'x'", "XA ROLLBACK 'x'")
    conn.close()
    # prepared on one connection, rolled back from another (what a transaction manager does); larger than a
    # chunk, so none of it may leave before the outcome is known
    conn = run(mariadb_server, mariadb_db, "XA START 'big'",
               f"INSERT INTO t SELECT seq, seq, NULL FROM seq_10_to_{10 + MAX_CHUNK + 500}",
               "XA END 'big'", "XA PREPARE 'big'")
    conn.close()
    run(mariadb_server, mariadb_db, "XA ROLLBACK 'big'", "INSERT INTO t VALUES (3, 3, NULL)",
        f"INSERT INTO t VALUES ({MARKER}, 0, NULL)").close()
    assert table(mariadb_server, mariadb_db) == [(1, 1), (3, 3), (MARKER, 0)]
    got = until_marker(make_source(["t"]), qty_table)
    assert ops(got) == [("c", 3), ("c", MARKER)]


def test_xa_prepare_then_commit_emits_once_at_the_commit(mariadb_server, mariadb_db, qty_table, make_source):
    run(mariadb_server, mariadb_db, "XA START 'y'", "UPDATE t SET qty = 5 WHERE id = 1",
        "INSERT INTO t VALUES (2, 2, 'two')", "XA END 'y'", "XA PREPARE 'y'").close()
    # a transaction committed between PREPARE and COMMIT comes first: that is the commit order
    run(mariadb_server, mariadb_db, "INSERT INTO t VALUES (4, 4, NULL)", "XA COMMIT 'y'",
        f"INSERT INTO t VALUES ({MARKER}, 0, NULL)").close()
    assert table(mariadb_server, mariadb_db) == [(1, 5), (2, 2), (4, 4), (MARKER, 0)]
    got = [ch for ch in until_marker(make_source(["t"]), qty_table) if ch.changes]
    assert [ops([ch]) for ch in got] == [[("c", 4)], [("u", 1), ("c", 2)], [("c", MARKER)]]
    xa = got[1]
    assert xa.commit is not None and xa.changes[0].after == {"id": 1, "qty": 5, "note": "one"}
    assert all(c.source.position == xa.commit.position and c.source.ts_ms > 0 for c in xa.changes)
    positions = [ch.commit.position for ch in got]
    src = make_source(["t"])
    assert src.compare(positions[0], positions[1]) == -1 and src.compare(positions[1], positions[2]) == -1


def test_xa_commit_one_phase(mariadb_server, mariadb_db, qty_table, make_source):
    run(mariadb_server, mariadb_db, "XA START 'z'", "INSERT INTO t VALUES (2, 2, NULL)", "XA END 'z'",
        "XA COMMIT 'z' ONE PHASE", "XA START 'z2'", "INSERT INTO t VALUES (3, 3, NULL)", "XA END 'z2'",
        "XA ROLLBACK 'z2'", f"INSERT INTO t VALUES ({MARKER}, 0, NULL)").close()
    got = until_marker(make_source(["t"]), qty_table)
    assert ops(got) == [("c", 2), ("c", MARKER)]


@pytest.mark.parametrize("use_gtid", [False, True])
def test_restart_between_prepare_and_commit(mariadb_server, mariadb_db, qty_table, make_source, use_gtid):
    """A reader that read the PREPARE but not the COMMIT has handed out no position past the PREPARE: it
    reads it again after a restart, and the XA's changes arrive exactly once."""
    first = make_source(["t"], use_gtid=use_gtid)
    it = stream_for(first, qty_table, 4.0)
    run(mariadb_server, mariadb_db, "INSERT INTO t VALUES (2, 2, NULL)", "XA START 'r'",
        "INSERT INTO t VALUES (7, 7, NULL)", "XA END 'r'", "XA PREPARE 'r'").close()
    stored, seen = qty_table, []
    deadline = time.monotonic() + 1.5
    for ch in it:
        if time.monotonic() > deadline:
            break
        seen += ops([ch])
        if ch.commit:
            stored = ch.commit.position
    assert seen == [("c", 2)]
    first.close()
    run(mariadb_server, mariadb_db, "XA COMMIT 'r'", f"INSERT INTO t VALUES ({MARKER}, 0, NULL)").close()
    again = make_source(["t"], use_gtid=use_gtid)
    assert ops(until_marker(again, stored)) == [("c", 7), ("c", MARKER)]


def test_restart_past_a_prepare_stops_naming_the_xid(mariadb_server, mariadb_db, qty_table, make_source):
    """Resumed from a position after the PREPARE (another transaction committed in between), the XA's changes
    are not in the stream: the COMMIT stops it with the XID rather than commit nothing."""
    run(mariadb_server, mariadb_db, "XA START 'lost-1'", "INSERT INTO t VALUES (7, 7, NULL)",
        "XA END 'lost-1'", "XA PREPARE 'lost-1'").close()
    run(mariadb_server, mariadb_db, "INSERT INTO t VALUES (2, 2, NULL)").close()
    first = make_source(["t"])
    ch = next(ch for ch in stream_for(first, qty_table) if ch.changes)
    assert ops([ch]) == [("c", 2)] and ch.commit is not None
    first.close()
    run(mariadb_server, mariadb_db, "XA COMMIT 'lost-1'").close()
    again = make_source(["t"])
    with pytest.raises(SourceMisconfigured, match=r"XA COMMIT 'lost-1'.*snapshot --reset"):
        read_all(again, ch.commit.position)


# -------------------------------------------------------------------------------------------- S7: TRUNCATE


def test_truncate_of_a_mapped_table_emits_t_like_postgresql(mariadb_server, mariadb_db, qty_table,
                                                            make_source, pg_dsn):
    other_db = mariadb_server.create_database(f"{mariadb_db}_x")
    sql(mariadb_server, "TRUNCATE TABLE t", "INSERT INTO t VALUES (2, 2, NULL)", "TRUNCATE other",
        db=mariadb_db)
    sql(mariadb_server, "CREATE TABLE t (id INT PRIMARY KEY)", "TRUNCATE t",  # same name, unmapped database
        f"TRUNCATE TABLE `{mariadb_db}`.`t`", f"INSERT INTO `{mariadb_db}`.t VALUES ({MARKER}, 0, NULL)",
        db=other_db)
    got = until_marker(make_source(["t"]), qty_table)
    assert ops(got) == [("t", None), ("c", 2), ("t", None), ("c", MARKER)]
    t = next(c for ch in got for c in ch.changes if c.op == "t")
    commit = next(ch.commit for ch in got if any(c.op == "t" for c in ch.changes))
    assert commit is not None and t.source.position == commit.position
    assert (t.table, t.before, t.after, t.key) == (f"{mariadb_db}.t", None, None, ("id",))
    pg = pg_truncate(pg_dsn)
    assert (pg.op, pg.before, pg.after, pg.key) == (t.op, t.before, t.after, t.key)


def pg_truncate(dsn: str) -> RowChange:
    """What the PostgreSQL source emits for the same TRUNCATE."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY, qty int NOT NULL, note text)")
    db = dict(p.split("=") for p in dsn.split())["dbname"]
    src = PostgresSource(PostgresSourceConfig(dsn=dsn, slot=f"s_{db}", publication=f"p_{db}",
                                              status_interval_seconds=0.2), ["public.t"])
    try:
        src.prepare()
        start = [ch for ch in src.snapshot(["public.t"])][-1].commit
        assert start is not None
        with conn.cursor() as cur:
            cur.execute("TRUNCATE t")
        deadline = time.monotonic() + 20
        for ch in src.stream(start.position):
            assert time.monotonic() < deadline, "PostgreSQL sent no TRUNCATE"
            if ch.changes:
                (c,) = ch.changes
                return c
        raise AssertionError("stream ended")
    finally:
        src.close()
        conn.close()


# -------------------------------------------------------------------------------------------- S8: row images


@pytest.mark.parametrize(("image", "stmt", "missing"), [
    ("MINIMAL", "UPDATE t SET qty = 11 WHERE id = 1", "before image without qty, note"),
    ("MINIMAL", "DELETE FROM t WHERE id = 1", "before image without qty, note"),
    ("MINIMAL", "INSERT INTO t (id, qty) VALUES (5, 5)", "after image without note"),
    ("NOBLOB", "UPDATE t SET qty = 11 WHERE id = 1", "without note"),
])
def test_partial_row_image_in_a_session_stops_naming_table_and_fix(mariadb_server, mariadb_db, qty_table,
                                                                   make_source, image, stmt, missing):
    sql(mariadb_server, f"SET SESSION binlog_row_image = '{image}'", stmt, db=mariadb_db)
    with pytest.raises(SourceMisconfigured) as e:
        read_all(make_source(["t"]), qty_table)
    msg = str(e.value)
    assert f"{mariadb_db}.t" in msg and missing in msg
    assert "SET GLOBAL binlog_row_image = 'FULL'" in msg and "SET SESSION binlog_row_image" in msg


def test_noblob_is_fine_when_the_mapping_does_not_read_the_blob(mariadb_server, mariadb_db, qty_table,
                                                                make_source):
    sql(mariadb_server, "SET SESSION binlog_row_image = 'NOBLOB'", "UPDATE t SET qty = 11 WHERE id = 1",
        f"INSERT INTO t VALUES ({MARKER}, 0, NULL)", db=mariadb_db)
    got = until_marker(make_source(["t"], columns={"t": ["id", "qty"]}), qty_table)
    u = next(c for ch in got for c in ch.changes)
    assert (u.op, u.before, u.after) == ("u", {"id": 1, "qty": 1}, {"id": 1, "qty": 11})


def test_global_row_image_changed_after_start_stops(mariadb_server, mariadb_db, qty_table, make_source):
    src = make_source(["t"])
    src.prepare()
    try:
        sql(mariadb_server, "SET GLOBAL binlog_row_image = 'MINIMAL'")
        sql(mariadb_server, "UPDATE t SET qty = 12 WHERE id = 1", db=mariadb_db)  # a new session: MINIMAL
    finally:
        sql(mariadb_server, "SET GLOBAL binlog_row_image = 'FULL'")
    with pytest.raises(SourceMisconfigured, match=rf"{mariadb_db}\.t .*binlog_row_image"):
        read_all(src, qty_table)


def test_truncate_zeroes_the_shop_stock_on_both_sources(erp: Erp, shop: WebhookEmulator, tmp_path) -> None:  # noqa: F811
    """End to end: a TRUNCATE of the stock table reaches the shop as zero stock, on both sources."""
    erp.seed(3, random.Random(2))
    with Running(erp.config(tmp_path, shop.endpoint)):
        converge(erp, shop)
        before = erp.expected()
        assert any(before.values())
        erp.execute("TRUNCATE TABLE stock_levels")
        erp.execute("INSERT INTO stock_levels (sku, warehouse_code, on_hand) VALUES ('NEW-1', 'WH-MIL', 7)")
        want = {**dict.fromkeys(before, 0), **erp.expected()}
        assert wait_for(lambda: shop.stock() == want, timeout=60), f"shop {shop.stock()} != {want}"
