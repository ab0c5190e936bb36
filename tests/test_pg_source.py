"""PostgresSource against a real throwaway PostgreSQL (wal_level=logical): snapshot, stream, ack, errors."""

from __future__ import annotations

import contextlib
import random
import string
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Any

import psycopg2
import pytest

from cdc.changes import UNCHANGED_TOAST, Chunk, RowChange, SourceError
from cdc.sources.postgres.config import PostgresSourceConfig
from cdc.sources.postgres.replication import PostgresSource, int_to_lsn, lsn_to_int
from erpsync.testing.postgres import ThrowawayPostgres


def execute(dsn: str, *stmts: str, args: Any = None) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    out: list[tuple[Any, ...]] = []
    try:
        with conn.cursor() as cur:
            for s in stmts:
                cur.execute(s, args)
                out = cur.fetchall() if cur.description else []
    finally:
        conn.close()
    return out


def insert_lsn(dsn: str) -> int:
    return lsn_to_int(execute(dsn, "SELECT pg_current_wal_insert_lsn()::text")[0][0])


def _db(dsn: str) -> str:
    return dict(p.split("=") for p in dsn.split())["dbname"]


@pytest.fixture
def make_source(pg_dsn: str) -> Iterator[Any]:
    made: list[PostgresSource] = []

    def make(tables: list[str], dsn: str = pg_dsn, **kw: Any) -> PostgresSource:
        db = _db(pg_dsn)
        cfg = PostgresSourceConfig(dsn=dsn, slot=kw.pop("slot", f"s_{db}"), publication=f"p_{db}",
                                   status_interval_seconds=kw.pop("status_interval_seconds", 0.2), **kw)
        src = PostgresSource(cfg, tables)
        made.append(src)
        return src

    yield make
    for src in made:
        src.close()
    for src in made[:1]:
        with contextlib.suppress(SourceError):
            src.drop_slot()
        src.close()


def drain(src: PostgresSource, from_pos: str, until: int, timeout: float = 15.0) -> list[Chunk]:
    """Stream until a commit position reaches ``until`` (an LSN int)."""
    out: list[Chunk] = []
    deadline = time.monotonic() + timeout
    for chunk in src.stream(from_pos):
        out.append(chunk)
        if chunk.commit and lsn_to_int(chunk.commit.position) >= until:
            return out
        assert time.monotonic() < deadline, "stream did not reach the expected position"
    raise AssertionError("stream ended")


def rows(chunks: list[Chunk]) -> list[RowChange]:
    return [c for ch in chunks for c in ch.changes]


def snapshot_all(src: PostgresSource) -> tuple[list[Chunk], str]:
    chunks = list(src.snapshot(None))
    assert all(c.commit is None for c in chunks[:-1]) and chunks[-1].commit is not None
    assert all(c.snapshot for c in chunks)
    return chunks, chunks[-1].commit.position


def slot_state(dsn: str, slot: str, wait_inactive: bool = True) -> tuple[str, bool]:
    for _ in range(50):
        lsn, active = execute(dsn, "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots "
                                   "WHERE slot_name = %s", args=(slot,))[0]
        if not (wait_inactive and active):
            return lsn, active
        time.sleep(0.1)
    raise AssertionError("slot stayed active")


def test_snapshot_then_stream_with_concurrent_writes_is_exact(pg_dsn: str, make_source: Any) -> None:
    execute(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)",
            "INSERT INTO items SELECT g, 0 FROM generate_series(1, 12000) g")
    src = make_source(["items"])
    src.prepare()
    assert src.needs_snapshot(None)
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        conn = psycopg2.connect(pg_dsn)
        conn.autocommit = True
        cur = conn.cursor()
        i = 100_000
        rnd = random.Random(1)
        while not stop.is_set():
            cur.execute("INSERT INTO items VALUES (%s, 1)", (i,))
            cur.execute("UPDATE items SET v = v + 1 WHERE id = %s", (rnd.randint(1, 12000),))
            i += 1
            written[0] += 1
        conn.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.3)
        before = written[0]
        chunks, start = snapshot_all(src)
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    assert written[0] > before  # writes really happened around the consistent point
    assert all(len(c.changes) <= 5000 for c in chunks)
    state: dict[int, dict[str, Any]] = {}
    for rc in rows(chunks):
        assert rc.op == "r" and rc.key == ("id",)
        assert rc.after["id"] not in state
        state[rc.after["id"]] = rc.after
    assert len(state) > 12000
    streamed = rows(drain(src, start, insert_lsn(pg_dsn)))
    assert any(rc.op == "c" for rc in streamed)
    for rc in streamed:
        if rc.op == "c":
            assert rc.after["id"] not in state, "duplicate insert: snapshot and stream overlap"
        else:
            assert rc.op == "u" and rc.after["id"] in state, "update of a row the snapshot missed"
        state[rc.after["id"]] = rc.after
    truth = dict(execute(pg_dsn, "SELECT id, v FROM items"))
    assert {k: r["v"] for k, r in state.items()} == truth


TYPES_DDL = """CREATE TABLE typed (
    id int PRIMARY KEY, i2 int2, i8 int8, o oid, n numeric(12,3), nan numeric, f4 float4, f8 float8,
    b bool, tx text, vc varchar(10), bc char(3), nm name, ch "char", d date, ts timestamp, tstz timestamptz,
    tm time, u uuid, j json, jb jsonb, by bytea, other inet, dom money_amount)"""
TYPES_VALUES = ("%s, 32000, 9000000000, 42, 12345.678, 'NaN', 1.5, 2.25, true, 'héllo', 'vc', 'ab', 'nm',"
                " 'x',"
                " '2024-02-29', '2024-03-04 05:06:07.5', '2024-03-04 05:06:07.123456+02', '13:14:15.25',"
                " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}', '{\"b\": {\"c\": null}}',"
                " '\\x00ff10', '10.0.0.1', 19.99")
EXPECTED = {
    "i2": 32000, "i8": 9000000000, "o": 42, "n": Decimal("12345.678"), "f4": 1.5, "f8": 2.25, "b": True,
    "tx": "héllo", "vc": "vc", "bc": "ab ", "nm": "nm", "ch": "x", "d": date(2024, 2, 29),
    "ts": datetime(2024, 3, 4, 5, 6, 7, 500000, tzinfo=UTC),
    "tstz": datetime(2024, 3, 4, 3, 6, 7, 123456, tzinfo=UTC), "tm": dtime(13, 14, 15, 250000),
    "u": uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "j": {"a": [1, 2]}, "jb": {"b": {"c": None}},
    "by": b"\x00\xff\x10", "other": "10.0.0.1", "dom": Decimal("19.99"),
}


def _check_typed(row: dict[str, Any], id_: int) -> None:
    assert row["id"] == id_
    nan = row.pop("nan")
    assert isinstance(nan, Decimal) and nan.is_nan()
    for k, v in EXPECTED.items():
        assert row[k] == v and type(row[k]) is type(v), (k, row[k])
    assert row["tstz"].tzinfo is not None and row["ts"].tzinfo is not None


def test_every_type_round_trips_in_snapshot_and_stream(pg_dsn: str, make_source: Any) -> None:
    execute(pg_dsn, "CREATE DOMAIN money_amount AS numeric(10,2)", TYPES_DDL)
    # A non-UTC writer session: values must still come back as the same instants.
    conn = psycopg2.connect(pg_dsn, options="-c TimeZone=Europe/Madrid")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(f"INSERT INTO typed VALUES ({TYPES_VALUES})", (1,))
    src = make_source(["typed"])
    src.prepare()
    chunks, start = snapshot_all(src)
    (snap,) = rows(chunks)
    _check_typed(dict(snap.after), 1)
    cur.execute(f"INSERT INTO typed VALUES ({TYPES_VALUES})", (2,))
    cur.execute("INSERT INTO typed (id) VALUES (3)")
    conn.close()
    got = rows(drain(src, start, insert_lsn(pg_dsn)))
    assert [r.op for r in got] == ["c", "c"]
    _check_typed(dict(got[0].after), 2)
    assert snap.after.keys() == got[0].after.keys()
    assert got[1].after == {"id": 3, **{k: None for k in [*EXPECTED, "nan"]}}
    src_info = got[0].source
    assert (src_info.connector, src_info.schema, src_info.table, src_info.db) == (
        "postgresql", "public", "typed", _db(pg_dsn))
    assert src_info.ts_ms > 0 and isinstance(src_info.txid, int) and "/" in src_info.position


def test_unchanged_toast_is_marked(pg_dsn: str, make_source: Any) -> None:
    execute(pg_dsn, "CREATE TABLE docs (id int PRIMARY KEY, n int, body text)",
            "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")
    src = make_source(["docs"])
    src.prepare()
    _, start = snapshot_all(src)
    big = "".join(random.choices(string.ascii_letters, k=100_000))
    execute(pg_dsn, "INSERT INTO docs VALUES (1, 1, %s)", args=(big,))
    execute(pg_dsn, "UPDATE docs SET n = 2 WHERE id = 1")
    ins, upd = rows(drain(src, start, insert_lsn(pg_dsn)))
    assert ins.after == {"id": 1, "n": 1, "body": big}
    assert upd.op == "u" and upd.after["n"] == 2 and upd.after["id"] == 1
    assert upd.after["body"] is UNCHANGED_TOAST


def test_rollback_unpublished_truncate_delete_and_full_identity(pg_dsn: str, make_source: Any) -> None:
    execute(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY, v text)",
            "CREATE TABLE fullrow (id int PRIMARY KEY, v text)", "ALTER TABLE fullrow REPLICA IDENTITY FULL",
            "CREATE TABLE other (id int)", "INSERT INTO items VALUES (1, 'a'), (2, 'b')",
            "INSERT INTO fullrow VALUES (1, 'x')")
    src = make_source(["public.items", "fullrow"])
    src.prepare()
    _, start = snapshot_all(src)
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO items VALUES (100, 'never')")
    conn.rollback()
    conn.close()
    execute(pg_dsn, "INSERT INTO other VALUES (1)")
    after_other = insert_lsn(pg_dsn)
    execute(pg_dsn, "DELETE FROM items WHERE id = 1")
    execute(pg_dsn, "UPDATE items SET v = 'B' WHERE id = 2")
    execute(pg_dsn, "UPDATE fullrow SET v = 'y' WHERE id = 1")
    execute(pg_dsn, "DELETE FROM fullrow WHERE id = 1")
    execute(pg_dsn, "TRUNCATE items")
    chunks = drain(src, start, insert_lsn(pg_dsn))
    got = rows(chunks)
    assert [(r.op, r.table) for r in got] == [
        ("d", "public.items"), ("u", "public.items"), ("u", "public.fullrow"), ("d", "public.fullrow"),
        ("t", "public.items")]
    d, u, fu, fd, t = got
    assert d.before == {"id": 1} and d.after is None and d.key == ("id",)
    assert u.before is None and u.after == {"id": 2, "v": "B"}
    assert fu.before == {"id": 1, "v": "x"} and fu.after == {"id": 1, "v": "y"} and fu.key == ("id",)
    assert fd.before == {"id": 1, "v": "y"}
    assert t.before is None and t.after is None
    # the unpublished table's transaction only advanced the position; the rollback never appeared
    assert any(c.commit and not c.changes and lsn_to_int(c.commit.position) >= after_other for c in chunks) \
        or lsn_to_int(next(c.commit.position for c in chunks if c.changes)) >= after_other
    assert all(r.after is None or r.after.get("v") != "never" for r in got)


def test_large_transaction_arrives_in_bounded_chunks(pg_dsn: str, make_source: Any) -> None:
    execute(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY, v int)", "INSERT INTO items VALUES (0, 0)")
    src = make_source(["items"], proto_version=2)
    src.prepare()
    abandoned = src.snapshot(None)
    next(abandoned)  # an interrupted snapshot leaves its slot behind ...
    abandoned.close()
    assert src.slot_exists and src.needs_snapshot(None)
    _, start = snapshot_all(src)  # ... which the next snapshot replaces
    execute(pg_dsn, "INSERT INTO items SELECT g, g FROM generate_series(1, 20000) g")
    chunks = [c for c in drain(src, start, insert_lsn(pg_dsn)) if c.changes or c.commit]
    data = [c for c in chunks if c.changes]
    assert len(data) >= 4 and all(len(c.changes) <= 5000 for c in data)
    first = chunks.index(data[0])  # before it: heartbeats / position advances
    last = next(i for i in range(first, len(chunks)) if chunks[i].commit)
    txn = chunks[first: last + 1]
    assert sum(len(c.changes) for c in txn) == 20000
    assert all(c.commit is None for c in txn[:-1]) and txn[-1].commit is not None
    assert sorted(r.after["id"] for c in txn for r in c.changes) == list(range(1, 20001))


def test_ack_confirms_exactly_and_resume_skips_acked(pg_dsn: str, make_source: Any) -> None:
    execute(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY)")
    src = make_source(["items"])
    src.prepare()
    _, start = snapshot_all(src)
    for i in range(1, 6):
        execute(pg_dsn, f"INSERT INTO items VALUES ({i})")
    chunks = drain(src, start, insert_lsn(pg_dsn))
    txns = [c for c in chunks if c.changes]
    assert [c.changes[0].after["id"] for c in txns] == [1, 2, 3, 4, 5]
    acked = txns[2].commit.position
    src.ack(acked)
    src.close()
    confirmed, _ = slot_state(pg_dsn, src.config.slot)
    assert confirmed == acked  # exactly the acked LSN, never beyond
    execute(pg_dsn, "INSERT INTO items VALUES (6)")
    src2 = make_source(["items"])
    src2.prepare()
    assert not src2.needs_snapshot(acked)
    again = rows(drain(src2, acked, insert_lsn(pg_dsn)))
    assert [r.after["id"] for r in again] == [4, 5, 6]
    assert src2.compare(acked, txns[3].commit.position) == -1
    assert src2.compare(acked, acked) == 0
    lag = src2.lag()
    assert lag["bytes"] >= 0 and lag["retained_bytes"] >= 0 and lag["seconds"] >= 0
    src2.close()


def test_lag_seconds_count_while_behind_even_when_nothing_arrives(pg_dsn: str, make_source: Any) -> None:
    """Behind the ERP means lag in seconds, also when no message is arriving: right after a restart
    (seeded, as the pipeline does, with the commit time the outbox holds) and while the server is still
    decoding a large transaction. Once everything is read and the ERP is quiet, the lag is 0."""
    execute(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY, pad text)")
    src = make_source(["items"])
    src.prepare()
    _, start = snapshot_all(src)
    src.ack(start)
    src.close()
    held_ts = time.time()  # commit time of the last transaction "the outbox holds"
    time.sleep(2)
    execute(pg_dsn, "INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series(1, 200000) g")
    end = insert_lsn(pg_dsn)
    src2 = make_source(["items"])
    src2.prepare()
    src2.last_commit_ts = held_ts
    lag = src2.lag()
    assert lag["bytes"] > 1 << 20 and lag["seconds"] >= 2, lag  # restarted behind: not "0 s"
    before_data: list[float] = []
    data_seen = False
    deadline = time.monotonic() + 60
    stream = src2.stream(start)
    for chunk in stream:
        data_seen = data_seen or bool(chunk.changes)
        if not data_seen:
            before_data.append(src2.lag()["seconds"])  # the server is decoding: still behind
        if chunk.commit and lsn_to_int(chunk.commit.position) >= end:
            break
        assert time.monotonic() < deadline
    assert all(s >= 2 for s in before_data), before_data
    src2.ack(int_to_lsn(end))
    idle_until = time.monotonic() + 3
    for _chunk in stream:  # read on while the ERP is quiet: caught up
        if time.monotonic() > idle_until:
            break
    assert src2.lag()["seconds"] == 0


def test_idle_database_confirms_heartbeats_while_others_write(pg_server: ThrowawayPostgres, pg_dsn: str,
                                                              make_source: Any) -> None:
    execute(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY)")
    src = make_source(["items"], heartbeat_seconds=0.5)
    src.prepare()
    _, start = snapshot_all(src)
    busy = pg_server.dsn()
    execute(busy, "CREATE TABLE IF NOT EXISTS noise (id serial, pad text)")
    execute(pg_dsn, "CREATE TABLE unpublished (id int)")
    stop = threading.Event()

    def noise() -> None:
        while not stop.is_set():
            execute(busy, "INSERT INTO noise (pad) SELECT repeat('x', 500) FROM generate_series(1, 200)")
            execute(pg_dsn, "INSERT INTO unpublished VALUES (1)")
            time.sleep(0.05)

    t = threading.Thread(target=noise)
    t.start()
    positions: list[str] = []
    deadline = time.monotonic() + 3.0
    try:
        for chunk in src.stream(start):
            assert not chunk.changes
            if chunk.commit:
                src.ack(chunk.commit.position)
                positions.append(chunk.commit.position)
            if time.monotonic() > deadline:
                break
    finally:
        stop.set()
        t.join()
    assert len(positions) >= 3
    mid, _ = slot_state(pg_dsn, src.config.slot, wait_inactive=False)
    assert lsn_to_int(mid) > lsn_to_int(start)  # confirmed while still streaming
    src.close()
    confirmed, _ = slot_state(pg_dsn, src.config.slot)
    assert confirmed == max(positions, key=lsn_to_int)
    execute(busy, "DROP TABLE noise")


def test_errors_tell_the_dba_what_to_do(pg_server: ThrowawayPostgres, pg_dsn: str, make_source: Any) -> None:
    execute(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY)", "CREATE TABLE other (id int PRIMARY KEY)",
            "CREATE ROLE plain LOGIN", "GRANT SELECT ON items TO plain")
    with pytest.raises(SourceError, match=r"ALTER ROLE \"plain\" WITH REPLICATION"):
        make_source(["items"], dsn=pg_dsn.replace("user=postgres", "user=plain")).prepare()
    with pytest.raises(SourceError, match=r"public\.nope"):
        make_source(["items", "public.nope"]).prepare()
    src = make_source(["items"])
    with pytest.raises(SourceError, match=r"re-snapshot.*erpsync snapshot --reset"):
        src.needs_snapshot("0/16B3748")
    bad = f"host=127.0.0.1 port={pg_server.port + 1} dbname=erp user=u password=s3cr3t connect_timeout=2"
    with pytest.raises(SourceError) as ei:
        make_source(["items"], dsn=bad).prepare()
    assert "s3cr3t" not in str(ei.value) and f"port={pg_server.port + 1}" in str(ei.value)
    # publication exists but misses a mapped table; an odd (quoted) name must not inject
    execute(pg_dsn, 'CREATE TABLE "we""ird; --" (id int PRIMARY KEY)')
    make_source(["items", 'we"ird; --']).prepare()
    assert execute(pg_dsn, "SELECT tablename FROM pg_publication_tables ORDER BY 1") == [
        ("items",), ('we"ird; --',)]
    with pytest.raises(SourceError, match=r'ALTER PUBLICATION "p_\w+" ADD TABLE "public"\."other";'):
        make_source(["items", "other"]).prepare()


def test_wal_level_and_slot_exhaustion_errors() -> None:
    with ThrowawayPostgres(wal_level="replica", extra_conf={"max_replication_slots": "1"}) as pg:
        execute(pg.dsn(), "CREATE TABLE items (id int PRIMARY KEY)")
        cfg = PostgresSourceConfig(dsn=pg.dsn(), slot="mine")
        with pytest.raises(SourceError, match=r"wal_level=logical.*ALTER SYSTEM SET wal_level = logical"):
            PostgresSource(cfg, ["items"]).prepare()
        execute(pg.dsn(), "ALTER SYSTEM SET wal_level = logical")
        pg.restart()
        execute(pg.dsn(), "SELECT pg_create_logical_replication_slot('someone_else', 'pgoutput')")
        src = PostgresSource(cfg, ["items"])
        with pytest.raises(SourceError, match=r"max_replication_slots"):
            src.prepare()
        src.close()


def test_lsn_helpers() -> None:
    assert lsn_to_int("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert int_to_lsn(lsn_to_int("0/0")) == "0/0"
    assert int_to_lsn(lsn_to_int("AB/CD")) == "AB/CD"


def test_connection_errors_are_typed(pg_server: ThrowawayPostgres, pg_dsn: str, make_source: Any) -> None:
    """Refused (time fixes it) vs an unknown role or table (a person must act), for the reader and the
    plain SQL connection alike; a connection the server drops under the reader is no raw driver error."""
    from cdc.changes import SourceMisconfigured, SourceUnavailable
    from cdc.sources.admin import ConnectError
    from cdc.sources.postgres.admin import connect_sql

    execute(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY)")
    refused = f"host=127.0.0.1 port={pg_server.port + 1} dbname=erp user=u password=s3cr3t connect_timeout=2"
    with pytest.raises(SourceUnavailable, match="cannot connect to PostgreSQL") as ei:
        make_source(["items"], dsn=refused).prepare()
    assert not isinstance(ei.value, SourceMisconfigured) and "s3cr3t" not in str(ei.value)
    with pytest.raises(SourceUnavailable, match="cannot connect to PostgreSQL") as ci:
        connect_sql(PostgresSourceConfig(dsn=refused))
    assert isinstance(ci.value, ConnectError) and "s3cr3t" not in str(ci.value)

    no_role = pg_dsn.replace("user=postgres", "user=nobody_here")
    with pytest.raises(SourceMisconfigured, match="nobody_here"):
        make_source(["items"], dsn=no_role).prepare()
    with pytest.raises(SourceMisconfigured, match="nobody_here") as ci:
        connect_sql(PostgresSourceConfig(dsn=no_role))
    assert isinstance(ci.value, ConnectError) and not isinstance(ci.value, SourceUnavailable)
    with pytest.raises(SourceMisconfigured, match=r"public\.nope"):
        make_source(["public.nope"]).prepare()

    src = make_source(["items"])
    src.prepare()
    execute(pg_dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'erpsync' AND datname = current_database()")
    with pytest.raises(SourceUnavailable, match="was lost"):
        src.lag()
