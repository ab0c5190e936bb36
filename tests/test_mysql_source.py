"""MySQL/MariaDB binlog source against real throwaway MariaDB servers."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from cdc.changes import Chunk, SourceMisconfigured
from cdc.sources.mysql.config import MySQLSourceConfig
from cdc.sources.mysql.position import BinlogPosition
from cdc.sources.mysql.replication import MAX_CHUNK, MySQLSource
from erpsync.testing.mariadb import ThrowawayMariaDB
from tests.fixtures_mariadb import USER_PASSWORD


def cfg(server: ThrowawayMariaDB, db: str, **kw: Any) -> MySQLSourceConfig:
    base: dict[str, Any] = {"port": server.port, "user": "erpsync", "password": USER_PASSWORD, "database": db}
    return MySQLSourceConfig(**{**base, **kw})


def sql(server: ThrowawayMariaDB, *stmts: str, db: str | None = None) -> list[Any]:
    conn = server.connect(db)
    out: list[Any] = []
    try:
        with conn.cursor() as cur:
            for s in stmts:
                cur.execute(s)
                out = list(cur.fetchall())
    finally:
        conn.close()
    return out


def master_pos(server: ThrowawayMariaDB) -> str:
    f, p = sql(server, "SHOW MASTER STATUS")[0][:2]
    return f"{f}:{p}"


def read_txns(it: Iterator[Chunk], n: int, timeout: float = 20.0) -> list[list[Chunk]]:
    """The next ``n`` transactions that carry changes, each as its list of chunks."""
    txns: list[list[Chunk]] = []
    cur: list[Chunk] = []
    deadline = time.monotonic() + timeout
    while len(txns) < n:
        assert time.monotonic() < deadline, f"only {len(txns)} of {n} transactions arrived"
        ch = next(it)
        if ch.changes:
            cur.append(ch)
        if ch.commit is not None and cur:
            txns.append(cur)
            cur = []
    return txns


def rows(txn: list[Chunk]) -> list[Any]:
    return [c for ch in txn for c in ch.changes]


@pytest.fixture
def source_factory() -> Iterator[Any]:
    made: list[MySQLSource] = []

    def make(config: MySQLSourceConfig, tables: list[str], **kw: Any) -> MySQLSource:
        s = MySQLSource(config, tables, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_snapshot_under_concurrent_writes_each_row_once(mariadb_server, mariadb_db, source_factory):
    sql(mariadb_server, "CREATE TABLE items (id INT PRIMARY KEY, qty INT NOT NULL)",
        "INSERT INTO items SELECT seq, 0 FROM seq_1_to_3000", db=mariadb_db)
    src = source_factory(cfg(mariadb_server, mariadb_db, snapshot_chunk_rows=500), ["items"])
    src.prepare()
    assert src.needs_snapshot(None)
    stop = threading.Event()
    written = [3000]

    def writer() -> None:
        conn = mariadb_server.connect(mariadb_db)
        with conn.cursor() as cur:
            while not stop.is_set():
                i = written[0] + 1
                cur.execute("BEGIN")
                cur.execute(f"INSERT INTO items VALUES ({i}, {i})")
                cur.execute(f"UPDATE items SET qty = qty + 1 WHERE id = {i % 3000 + 1}")
                cur.execute("COMMIT")
                written[0] = i
        conn.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.2)
        state: dict[int, int] = {}
        seen: dict[int, int] = {}
        chunks = list(src.snapshot(["items"]))
        assert all(ch.snapshot for ch in chunks) and chunks[-1].commit is not None
        assert max(len(ch.changes) for ch in chunks) <= 500
        for ch in chunks:
            for c in ch.changes:
                assert c.op == "r" and c.key == ("id",) and c.source.table == "items"
                state[c.after["id"]] = c.after["qty"]
                seen[c.after["id"]] = seen.get(c.after["id"], 0) + 1
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    end = master_pos(mariadb_server)
    it = src.stream(chunks[-1].commit.position)
    last = chunks[-1].commit.position
    while src.compare(last, end) < 0:
        ch = next(it)
        for c in ch.changes:
            if c.op == "c":
                seen[c.after["id"]] = seen.get(c.after["id"], 0) + 1
            state[c.after["id"]] = c.after["qty"]
        if ch.commit:
            last = ch.commit.position
    assert written[0] > 3000
    assert all(n == 1 for n in seen.values()), "a row came both from the snapshot and the stream"
    assert set(seen) == set(range(1, written[0] + 1))
    assert state == dict(sql(mariadb_server, "SELECT id, qty FROM items", db=mariadb_db))


def test_types_round_trip_snapshot_and_stream(mariadb_server, mariadb_db, source_factory):
    old_tz = sql(mariadb_server, "SELECT @@global.time_zone")[0][0]
    sql(mariadb_server, "SET GLOBAL time_zone = '+05:30'")
    try:
        sql(mariadb_server, """CREATE TABLE t (
            id INT PRIMARY KEY, i8 TINYINT, u8 TINYINT UNSIGNED, i16 SMALLINT, u24 MEDIUMINT UNSIGNED,
            i32 INT, u32 INT UNSIGNED, i64 BIGINT, u64 BIGINT UNSIGNED, flag TINYINT(1),
            price DECIMAL(12,3), big DECIMAL(40,12), small DECIMAL(4,2), f DOUBLE,
            d DATE, dtm DATETIME, dtm6 DATETIME(6), ts TIMESTAMP(3) NULL, y YEAR,
            name VARCHAR(100), note TEXT, ch CHAR(5), bin VARBINARY(8), j JSON,
            e ENUM('red','green'), s SET('a','b','c'), b BIT(10))""", db=mariadb_db)
        src = source_factory(cfg(mariadb_server, mariadb_db), ["t"])
        src.prepare()
        pos = list(src.snapshot(["t"]))[-1].commit.position
        conn = mariadb_server.connect(mariadb_db)
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+05:30'")
            cur.execute("""INSERT INTO t VALUES (1, -128, 255, -32768, 16777215, -2147483648, 4294967295,
                -9223372036854775808, 18446744073709551615, 1, -1234.5,
                123456789012345678901234567.123456789012, -0.05, 2.5, '2024-02-29', '2024-03-01 10:11:12',
                '1999-12-31 23:59:59.999999',
                '2024-03-01 10:11:12.345', 2024, 'Grüße 😀', 'long ✓ text', 'ab', x'00ff10',
                '{"k": [1, "v", null]}', 'green', 'a,c', b'1000000001')""")
            cur.execute("INSERT INTO t (id) VALUES (2)")
            cur.execute("INSERT INTO t (id, flag, price, big) VALUES (3, 0, 0, -0.000000000001)")
        conn.close()
        streamed = [rows(tx)[0].after for tx in read_txns(src.stream(pos), 3)]
        snap = sorted((c.after for ch in src.snapshot(["t"]) for c in ch.changes), key=lambda r: r["id"])
    finally:
        sql(mariadb_server, f"SET GLOBAL time_zone = '{old_tz}'")
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    full = streamed[0]
    expected = {
        "id": 1, "i8": -128, "u8": 255, "i16": -32768, "u24": 16777215, "i32": -2147483648, "u32": 4294967295,
        "i64": -9223372036854775808, "u64": 18446744073709551615, "flag": 1, "price": Decimal("-1234.500"),
        "big": Decimal("123456789012345678901234567.123456789012"), "small": Decimal("-0.05"), "f": 2.5,
        "d": dt.date(2024, 2, 29), "dtm": dt.datetime(2024, 3, 1, 10, 11, 12, tzinfo=ist),
        "dtm6": dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=ist),
        "ts": dt.datetime(2024, 3, 1, 4, 41, 12, 345000, tzinfo=dt.UTC), "y": 2024, "name": "Grüße 😀",
        "note": "long ✓ text", "ch": "ab", "bin": b"\x00\xff\x10", "j": {"k": [1, "v", None]}, "e": "green",
        "s": "a,c", "b": 513,
    }
    assert full == expected
    assert full["dtm"].utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert all(isinstance(v, Decimal) for k, v in full.items() if k in ("price", "big", "small"))
    assert streamed[1] == {k: (2 if k == "id" else None) for k in expected}
    assert streamed[2]["big"] == Decimal("-0.000000000001") and streamed[2]["price"] == Decimal("0.000")
    assert snap == streamed  # snapshot and stream convert identically


def test_transaction_boundaries_and_rollback(mariadb_server, mariadb_db, source_factory):
    sql(mariadb_server, "CREATE TABLE t (id INT PRIMARY KEY, v INT)", "CREATE TABLE other (id INT PRIMARY "
                                                                      "KEY)",
        db=mariadb_db)
    src = source_factory(cfg(mariadb_server, mariadb_db), [f"{mariadb_db}.t"])
    pos = master_pos(mariadb_server)
    conn = mariadb_server.connect(mariadb_db)
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO t VALUES (1, 1), (2, 2)")
        cur.execute("UPDATE t SET v = 10 WHERE id = 1")
        cur.execute("INSERT INTO other VALUES (1)")
        cur.execute("COMMIT")
        cur.execute("BEGIN")
        cur.execute("INSERT INTO t VALUES (99, 99)")
        cur.execute("ROLLBACK")
        cur.execute("INSERT INTO other VALUES (2)")  # unmapped: no changes
        cur.execute("DELETE FROM t WHERE id = 2")
    conn.close()
    first, second = read_txns(src.stream(pos), 2)
    assert len(first) == 1 and first[0].commit is not None
    assert [(c.op, c.after and c.after["id"]) for c in rows(first)] == [("c", 1), ("c", 2), ("u", 1)]
    upd = rows(first)[2]
    assert upd.before == {"id": 1, "v": 1} and upd.after == {"id": 1, "v": 10} and upd.key == ("id",)
    assert upd.source.position == first[0].commit.position and upd.source.ts_ms > 0
    assert upd.source.txid == first[0].commit.txid and first[0].commit.ts > 0
    (d,) = rows(second)
    assert d.op == "d" and d.before == {"id": 2, "v": 2} and d.after is None  # the rolled back 99 never shows
    assert src.compare(first[0].commit.position, second[0].commit.position) == -1


def test_large_transaction_is_chunked(mariadb_server, mariadb_db, source_factory):
    sql(mariadb_server, "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))", db=mariadb_db)
    src = source_factory(cfg(mariadb_server, mariadb_db), ["t"])
    pos = master_pos(mariadb_server)
    sql(mariadb_server, "BEGIN", "INSERT INTO t SELECT seq, CONCAT('v', seq) FROM seq_1_to_20000", "COMMIT",
        db=mariadb_db)
    (txn,) = read_txns(src.stream(pos), 1)
    assert len(txn) >= 4 and all(len(ch.changes) <= MAX_CHUNK for ch in txn)
    assert [ch.commit is not None for ch in txn] == [False] * (len(txn) - 1) + [True]
    assert [c.after["id"] for c in rows(txn)] == list(range(1, 20001))


def test_idle_stream_yields_empty_chunks(mariadb_server, mariadb_db, source_factory):
    sql(mariadb_server, "CREATE TABLE t (id INT PRIMARY KEY)", db=mariadb_db)
    src = source_factory(cfg(mariadb_server, mariadb_db), ["t"])
    it = src.stream(master_pos(mariadb_server))
    next(it)
    gaps = []
    for _ in range(4):
        t0 = time.monotonic()
        ch = next(it)
        gaps.append(time.monotonic() - t0)
        assert not ch.changes
    assert max(gaps) < 0.5


@pytest.mark.parametrize("use_gtid", [False, True])
def test_resume_after_close_delivers_exactly_the_rest(mariadb_server, mariadb_db, source_factory, use_gtid):
    sql(mariadb_server, "CREATE TABLE t (id INT PRIMARY KEY)", db=mariadb_db)
    pos = master_pos(mariadb_server)
    for i in range(1, 7):
        sql(mariadb_server, f"INSERT INTO t VALUES ({i})", db=mariadb_db)
    src = source_factory(cfg(mariadb_server, mariadb_db, use_gtid=use_gtid), ["t"])
    txns = read_txns(src.stream(pos), 2)
    stored = txns[-1][-1].commit.position
    assert (";gtid=" in stored)  # MariaDB has GTIDs on: both kinds of position are recorded
    src.close()
    if not use_gtid:
        stored = stored.split(";")[0]  # a plain file:offset position resumes too
    again = source_factory(cfg(mariadb_server, mariadb_db, use_gtid=use_gtid), ["t"])
    assert again.needs_snapshot(stored) is False
    rest = read_txns(again.stream(stored), 4)
    # the python-mysql-replication trap (is_mariadb ignores log_pos, replays from the start) would show 1, 2
    assert [c.after["id"] for tx in rest for c in rows(tx)] == [3, 4, 5, 6]
    parsed = BinlogPosition.parse(rest[-1][-1].commit.position)
    assert parsed.file.startswith("binlog.") and parsed.offset > 4


def test_alter_table_add_column_mid_stream(mariadb_server, mariadb_db, source_factory):
    sql(mariadb_server, "CREATE TABLE t (id INT PRIMARY KEY, a VARCHAR(10))", db=mariadb_db)
    pos = master_pos(mariadb_server)
    src = source_factory(cfg(mariadb_server, mariadb_db), ["t"])
    it = src.stream(pos)
    sql(mariadb_server, "INSERT INTO t VALUES (1, 'x')", db=mariadb_db)
    (before,) = read_txns(it, 1)
    sql(mariadb_server, "ALTER TABLE t ADD COLUMN price DECIMAL(8,2) DEFAULT 1.5",
        "INSERT INTO t VALUES (2, 'y', 9.99)", "UPDATE t SET a = 'z' WHERE id = 1", db=mariadb_db)
    ins, upd = read_txns(it, 2)
    assert rows(before)[0].after == {"id": 1, "a": "x"}
    assert rows(ins)[0].after == {"id": 2, "a": "y", "price": Decimal("9.99")}
    assert rows(upd)[0].before == {"id": 1, "a": "x", "price": Decimal("1.50")}
    # a reader that starts behind the ALTER (information_schema already has the new column) decodes too
    late = source_factory(cfg(mariadb_server, mariadb_db, server_id=4243), ["t"])
    old, new, _ = read_txns(late.stream(pos), 3)
    assert rows(old)[0].after == {"id": 1, "a": "x"}
    assert rows(new)[0].after == {"id": 2, "a": "y", "price": Decimal("9.99")}


def test_lag_counts_unread_binlog_bytes(mariadb_server, mariadb_db, source_factory):
    sql(mariadb_server, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT)", db=mariadb_db)
    src = source_factory(cfg(mariadb_server, mariadb_db), ["t"])
    it = src.stream(master_pos(mariadb_server))
    next(it)
    assert src.lag()["bytes"] == 0
    sql(mariadb_server, "INSERT INTO t VALUES (1, REPEAT('x', 5000))", "FLUSH BINARY LOGS",
        "INSERT INTO t VALUES (2, REPEAT('x', 5000))", db=mariadb_db)
    lag = src.lag()
    assert lag["bytes"] > 10_000  # summed across two binlog files
    read_txns(it, 2)
    assert src.lag() == {"bytes": 0.0, "seconds": 0.0}
    src.ack("binlog.000001:4")
    assert src.acked == "binlog.000001:4"


def test_compare_positions(mariadb_server, mariadb_db):
    src = MySQLSource(cfg(mariadb_server, mariadb_db), ["t"])
    assert src.compare("binlog.000002:4", "binlog.000010:4") == -1
    assert src.compare("binlog.000003:900;gtid=0-1-5", "binlog.000003:900") == 0
    assert src.compare("binlog.000003:901", "binlog.000003:900;gtid=0-1-5") == 1
    with pytest.raises(SourceMisconfigured, match="not a MySQL binlog position"):
        src.compare("0/16B3748", "binlog.000001:4")


# ------------------------------------------------------------------------- bad states, each with its fix


@pytest.mark.parametrize(("kw", "needle"), [
    ({"log_bin": False}, "binary logging is off"),
    ({"binlog_format": "STATEMENT"}, "SET GLOBAL binlog_format = 'ROW'"),
    ({"binlog_row_image": "MINIMAL"}, "SET GLOBAL binlog_row_image = 'FULL'"),
])
def test_misconfigured_server_is_refused(kw, needle):
    with ThrowawayMariaDB(**kw) as bad:
        sql(bad, "CREATE DATABASE erp")
        src = MySQLSource(MySQLSourceConfig(port=bad.port, user="root", database="erp"), ["t"])
        try:
            with pytest.raises(SourceMisconfigured, match=needle.replace("(", r"\(")) as e:
                src.prepare()
            assert "my.cnf" in str(e.value)
        finally:
            src.close()


def test_missing_grants_are_named(mariadb_server, mariadb_db, source_factory):
    sql(mariadb_server, "CREATE TABLE t (id INT PRIMARY KEY)", db=mariadb_db,)
    sql(mariadb_server, "CREATE USER IF NOT EXISTS 'nogrants'@'%' IDENTIFIED BY 's3cret-pw'",
        "CREATE USER IF NOT EXISTS 'noselect'@'%' IDENTIFIED BY 's3cret-pw'",
        "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'noselect'@'%'")
    src = source_factory(cfg(mariadb_server, mariadb_db, user="nogrants", password="s3cret-pw"), ["t"])
    with pytest.raises(SourceMisconfigured) as e:
        src.prepare()
    msg = str(e.value)
    assert "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'nogrants'@'%'" in msg
    assert "REPLICATION CLIENT and REPLICATION SLAVE" in msg and "s3cret-pw" not in msg
    src = source_factory(cfg(mariadb_server, mariadb_db, user="noselect", password="s3cret-pw"), ["t"])
    with pytest.raises(SourceMisconfigured, match=rf"GRANT SELECT ON `{mariadb_db}`\.\* TO 'noselect'@'%'"):
        src.prepare()
    src = source_factory(cfg(mariadb_server, mariadb_db, password="wrong-pw"), ["t"])
    with pytest.raises(SourceMisconfigured, match="refused the login") as e:
        src.prepare()
    assert "wrong-pw" not in str(e.value)
    src = source_factory(cfg(mariadb_server, mariadb_db), ["missing_table"])
    with pytest.raises(SourceMisconfigured, match=f"table {mariadb_db}.missing_table does not exist"):
        src.prepare()


def test_purged_resume_position_says_resnapshot(mariadb_server, mariadb_db, source_factory):
    sql(mariadb_server, "CREATE TABLE t (id INT PRIMARY KEY)", db=mariadb_db)
    src = source_factory(cfg(mariadb_server, mariadb_db), ["t"])
    stored = list(src.snapshot(["t"]))[-1].commit.position
    sql(mariadb_server, "INSERT INTO t VALUES (1)", "FLUSH BINARY LOGS", db=mariadb_db)
    newest = sql(mariadb_server, "SHOW MASTER STATUS")[0][0]
    old_file = stored.split(":")[0]
    deadline = time.monotonic() + 15
    # MariaDB keeps a binlog until InnoDB has checkpointed its commits (≈1 s here): retry until it is gone
    while old_file in [r[0] for r in sql(mariadb_server, "SHOW BINARY LOGS")]:
        assert time.monotonic() < deadline, "PURGE BINARY LOGS did not remove the old binlog"
        sql(mariadb_server, f"PURGE BINARY LOGS TO '{newest}'")
        time.sleep(0.2)
    for use_gtid, position in ((True, stored), (False, stored.split(";")[0])):
        s = source_factory(cfg(mariadb_server, mariadb_db, use_gtid=use_gtid), ["t"])
        with pytest.raises(SourceMisconfigured, match=r"purged.*erpsync snapshot --reset"):
            s.needs_snapshot(position)
        with pytest.raises(SourceMisconfigured, match=r"purged.*erpsync snapshot --reset"):
            next(s.stream(position))


def test_server_id_clash(mariadb_server, mariadb_db, source_factory):
    sql(mariadb_server, "CREATE TABLE t (id INT PRIMARY KEY)", db=mariadb_db)
    sql(mariadb_server, "GRANT REPLICATION MASTER ADMIN ON *.* TO 'erpsync'@'%'")  # SHOW SLAVE HOSTS
    first = source_factory(cfg(mariadb_server, mariadb_db, server_id=5151), ["t"])
    it = first.stream(master_pos(mariadb_server))
    next(it)
    second = source_factory(cfg(mariadb_server, mariadb_db, server_id=5151), ["t"])
    with pytest.raises(SourceMisconfigured, match=r"server_id 5151.*unique"):
        second.prepare()
    own = source_factory(cfg(mariadb_server, mariadb_db, server_id=1), ["t"])
    with pytest.raises(SourceMisconfigured, match="server's own server_id"):
        own.prepare()


def test_full_row_metadata_decodes_rows_from_before_a_drop_column(mariadb_server, mariadb_db, source_factory):
    # with binlog_row_metadata=FULL the names come from the stream itself, so even a reader far behind a
    # DROP COLUMN (which information_schema alone cannot explain) decodes the older rows
    sql(mariadb_server, "SET GLOBAL binlog_row_metadata = 'FULL'")
    try:
        sql(mariadb_server, "CREATE TABLE t (id INT PRIMARY KEY, gone VARCHAR(5), qty INT UNSIGNED)",
            db=mariadb_db)
        pos = master_pos(mariadb_server)
        sql(mariadb_server, "INSERT INTO t VALUES (1, 'old', 4000000000)", "ALTER TABLE t DROP COLUMN gone",
            "INSERT INTO t VALUES (2, 7)", db=mariadb_db)
        src = source_factory(cfg(mariadb_server, mariadb_db), ["t"])
        old, new = read_txns(src.stream(pos), 2)
    finally:
        sql(mariadb_server, "SET GLOBAL binlog_row_metadata = 'NO_LOG'")
    assert rows(old)[0].after == {"id": 1, "gone": "old", "qty": 4000000000}
    assert rows(new)[0].after == {"id": 2, "qty": 7}
