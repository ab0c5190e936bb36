"""The pure pgoutput decoder: real captured messages, and hand-built ones per the protocol docs."""

from __future__ import annotations

import struct
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import psycopg2
import pytest

from cdc.changes import UNCHANGED_TOAST, RowChange
from cdc.sources.postgres.decoder import (
    SESSION_OPTIONS,
    Begin,
    CommitMsg,
    DecodeError,
    Message,
    Origin,
    PgOutputDecoder,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    TypeMsg,
    converter_for,
    int_to_lsn,
)


def capture(dsn: str, statements: list[str]) -> list[bytes]:
    """Real pgoutput bytes via the SQL decoding interface (same plugin and format as the stream)."""
    conn = psycopg2.connect(dsn, options=SESSION_OPTIONS)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    cur.execute("CREATE PUBLICATION cap FOR TABLE items")
    cur.execute("SELECT pg_create_logical_replication_slot('cap_' || current_database(), 'pgoutput')")
    for s in statements:
        cur.execute(s)
    cur.execute("SELECT data FROM pg_logical_slot_get_binary_changes('cap_' || current_database(), NULL,"
                " NULL, 'proto_version', '1', 'publication_names', 'cap', 'messages', 'true')")
    out = [bytes(r[0]) for r in cur.fetchall()]
    cur.execute("SELECT pg_drop_replication_slot('cap_' || current_database())")
    conn.close()
    return out


def test_captured_messages_follow_alter_table(pg_dsn: str) -> None:
    msgs = capture(pg_dsn, [
        "INSERT INTO items VALUES (1, 'a')",
        "ALTER TABLE items ADD COLUMN price numeric(10,2)",
        "INSERT INTO items VALUES (2, 'b', 9.99)",
        "UPDATE items SET price = 1.5 WHERE id = 1",
        "DELETE FROM items WHERE id = 2",
        "SELECT pg_logical_emit_message(true, 'erpsync.heartbeat', 'hb')",
        "TRUNCATE items",
    ])
    dec = PgOutputDecoder(db="erp")
    out = [dec.decode(m) for m in msgs]
    rels = [o for o in out if isinstance(o, Relation)]
    changes: list[RowChange] = []
    for o in out:
        changes.extend(o if isinstance(o, list) else [o] if isinstance(o, RowChange) else [])
    assert [r.names for r in rels[:2]] == [("id", "name"), ("id", "name", "price")]
    assert rels[0].key == ("id",) and rels[0].schema == "public"
    assert [(c.op, c.before, c.after) for c in changes] == [
        ("c", None, {"id": 1, "name": "a"}),
        ("c", None, {"id": 2, "name": "b", "price": Decimal("9.99")}),
        ("u", None, {"id": 1, "name": "a", "price": Decimal("1.50")}),
        ("d", {"id": 2}, None),
        ("t", None, None),
    ]
    assert any(isinstance(o, Message) and o.prefix == "erpsync.heartbeat" and o.content == b"hb" for o in out)
    begins = [o for o in out if isinstance(o, Begin)]
    commits = [o for o in out if isinstance(o, CommitMsg)]
    assert len(begins) == len(commits) >= 6
    assert all(b.final_lsn == c.commit_lsn and c.end_lsn > c.commit_lsn for b, c in zip(begins, commits,
                                                                                           strict=False))
    assert all(abs(c.ts - datetime.now(UTC).timestamp()) < 60 for c in commits)
    first = changes[0].source
    assert first.db == "erp" and first.table == "items" and first.position == int_to_lsn(begins[0].final_lsn)
    assert first.txid == begins[0].xid and first.ts_ms == int(begins[0].ts * 1000)


# --- hand-built messages ----------------------------------------------------------------------------

def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def tup(*vals: bytes | str | None) -> bytes:
    out = struct.pack(">h", len(vals))
    for v in vals:
        if v is None:
            out += b"n"
        elif v == "u":
            out += b"u"
        else:
            assert isinstance(v, bytes)
            out += b"t" + struct.pack(">i", len(v)) + v
    return out


def relation(oid: int, cols: list[tuple[int, str, int]], ident: bytes = b"d",
             xid: int | None = None) -> bytes:
    out = b"R" + (struct.pack(">I", xid) if xid is not None else b"") + struct.pack(">I", oid)
    out += cstr("erp") + cstr("stock") + ident + struct.pack(">h", len(cols))
    for flag, name, typ in cols:
        out += bytes([flag]) + cstr(name) + struct.pack(">Ii", typ, -1)
    return out


def begin(final_lsn: int, ts_us: int, xid: int) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, ts_us, xid)


def commit(commit_lsn: int, end_lsn: int, ts_us: int) -> bytes:
    return b"C" + struct.pack(">BQQq", 0, commit_lsn, end_lsn, ts_us)


COLS = [(1, "id", 23), (0, "qty", 1700), (0, "note", 25), (0, "at", 1184)]


def test_hand_built_transaction() -> None:
    dec = PgOutputDecoder(db="erp")
    ts_us = 24 * 365 * 86400 * 1_000_000  # 2024-ish since 2000-01-01
    b = dec.decode(begin(0x1_0000_0010, ts_us, 77))
    assert isinstance(b, Begin) and b.xid == 77
    assert isinstance(dec.decode(b"O" + struct.pack(">Q", 5) + cstr("origin1")), Origin)
    t = dec.decode(b"Y" + struct.pack(">I", 99999) + cstr("public") + cstr("mood"))
    assert isinstance(t, TypeMsg) and t.name == "mood"
    dec.decode(relation(500, COLS))
    ins = dec.decode(b"I" + struct.pack(">I", 500) + b"N"
                     + tup(b"1", b"NaN", None, b"2024-01-01 00:00:00+00"))
    assert isinstance(ins, RowChange) and ins.op == "c"
    assert ins.after["qty"].is_nan() and ins.after["note"] is None
    assert ins.after["at"] == datetime(2024, 1, 1, tzinfo=UTC)
    upd = dec.decode(b"U" + struct.pack(">I", 500) + b"K" + tup(b"1", None, None, None)
                     + b"N" + tup(b"2", b"3.50", "u", b"2024-01-01 01:00:00+01"))
    assert isinstance(upd, RowChange)
    assert upd.before == {"id": 1}  # 'K': only the identity columns, not NULLs for the rest
    assert upd.after == {"id": 2, "qty": Decimal("3.50"), "note": UNCHANGED_TOAST,
                         "at": datetime(2024, 1, 1, tzinfo=UTC)}
    old = dec.decode(b"D" + struct.pack(">I", 500) + b"O" + tup(b"2", b"3.50", b"x", None))
    assert isinstance(old, RowChange)
    assert old.before == {"id": 2, "qty": Decimal("3.50"), "note": "x", "at": None}
    tr = dec.decode(b"T" + struct.pack(">iBI", 1, 0, 500))
    assert isinstance(tr, list) and tr[0].op == "t" and tr[0].table == "erp.stock"
    msg = dec.decode(b"M" + bytes([1]) + struct.pack(">Q", 9) + cstr("p") + struct.pack(">i", 2) + b"hi")
    assert isinstance(msg, Message) and msg.transactional and msg.content == b"hi"
    c = dec.decode(commit(0x1_0000_0010, 0x1_0000_0040, ts_us))
    assert isinstance(c, CommitMsg) and c.end_lsn == 0x1_0000_0040
    assert ins.source.position == "1/10" and ins.source.txid == 77
    assert ins.source.ts_ms == (ts_us + 946_684_800_000_000) // 1000


def test_relation_resent_replaces_columns_and_full_identity_key() -> None:
    dec = PgOutputDecoder(db="erp", key_resolver=lambda rel: ("id",))
    dec.decode(begin(1, 0, 1))
    dec.decode(relation(500, COLS[:2]))
    a = dec.decode(b"I" + struct.pack(">I", 500) + b"N" + tup(b"1", b"2"))
    dec.decode(relation(500, [(1, c, t) for _, c, t in COLS], ident=b"f"))  # ALTER TABLE ... + FULL
    b = dec.decode(b"I" + struct.pack(">I", 500) + b"N" + tup(b"1", b"2", b"n", None))
    assert isinstance(a, RowChange) and isinstance(b, RowChange)
    assert a.after == {"id": 1, "qty": Decimal(2)} and b.after == {"id": 1, "qty": Decimal(2), "note": "n",
                                                                    "at": None}
    assert b.key == ("id",)  # FULL flags every column; the resolver gives the real key


def test_stream_messages_v2() -> None:
    dec = PgOutputDecoder(db="erp")
    s = dec.decode(b"S" + struct.pack(">IB", 42, 1))
    assert isinstance(s, StreamStart) and s.xid == 42 and s.first_segment
    dec.decode(relation(7, COLS[:1], xid=42))
    row = dec.decode(b"I" + struct.pack(">II", 42, 7) + b"N" + tup(b"5"))
    assert isinstance(row, RowChange) and row.after == {"id": 5} and row.source.txid == 42
    assert isinstance(dec.decode(b"E"), StreamStop)
    sc = dec.decode(b"c" + struct.pack(">IBQQq", 42, 0, 10, 20, 0))
    assert isinstance(sc, StreamCommit) and (sc.xid, sc.end_lsn) == (42, 20)
    sa = dec.decode(b"A" + struct.pack(">II", 43, 44))
    assert isinstance(sa, StreamAbort) and (sa.xid, sa.subxid) == (43, 44)


def test_errors() -> None:
    dec = PgOutputDecoder()
    with pytest.raises(DecodeError, match="unknown relation"):
        dec.decode(b"I" + struct.pack(">I", 1) + b"N" + tup(b"1"))
    with pytest.raises(DecodeError, match="unknown pgoutput message"):
        dec.decode(b"Z")


@pytest.mark.parametrize(("oid", "text", "value"), [
    (21, b"-5", -5), (20, b"9223372036854775807", 2**63 - 1), (1700, b"-0.001", Decimal("-0.001")),
    (701, b"Infinity", float("inf")), (16, b"f", False), (1042, b"ab ", "ab "),
    (1082, b"infinity", "infinity"), (1082, b"2024-02-29", date(2024, 2, 29)),
    (1114, b"2024-01-02 03:04:05.5", datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)),
    (1184, b"2024-01-02 03:04:05+05:30", datetime(2024, 1, 1, 21, 34, 5, tzinfo=UTC)),
    (1083, b"23:59:59.999999", time(23, 59, 59, 999999)), (17, b"\\x", b""), (114, b"[1]", [1]),
    (3802, b'{"a": "\xc3\xa9"}', {"a": "é"}), (869, b"::1", "::1"), (1007, b"{1,2}", "{1,2}"),
])
def test_converters(oid: int, text: bytes, value: Any) -> None:
    got = converter_for(oid)(text)
    assert got == value and type(got) is type(value)
