"""Differential value fidelity of the MariaDB source: every value the binlog stream yields is compared with
the server's own SELECT of the same row, with ``mariadb-binlog --verbose`` (the vendor's decoder) where it
prints the value, and with the snapshot of the same row. One table per type family, edge values, INSERT,
UPDATE (the key changes, so both images carry every column) and DELETE."""

from __future__ import annotations

import datetime as dt
import re
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cdc.changes import Chunk, SourceError, SourceMisconfigured
from cdc.sources.mysql.config import MySQLSourceConfig
from cdc.sources.mysql.replication import MySQLSource
from erpsync.testing.mariadb import ThrowawayMariaDB
from tests.fixtures_mariadb import USER_PASSWORD
from tests.test_mysql_source import sql

Norm = Callable[[Any], Any]


def _sql(server: ThrowawayMariaDB, db: str, *stmts: str) -> list[Any]:
    return sql(server, *stmts, db=db)


def _master_pos(server: ThrowawayMariaDB, db: str) -> tuple[str, int]:
    f, p = _sql(server, db, "SHOW MASTER STATUS")[0][:2]
    return str(f), int(p)


def _txns(it: Iterator[Chunk], n: int, timeout: float = 30.0) -> list[list[Any]]:
    out: list[list[Any]] = []
    cur: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} transactions arrived"
        ch = next(it)
        cur.extend(ch.changes)
        if ch.commit is not None and cur:
            out.append(cur)
            cur = []
    return out


def _binlog_rows(server: ThrowawayMariaDB, start: tuple[str, int], db: str,
                 table: str) -> list[list[str | None]]:
    """Per row image of ``db.table`` after ``start``, in order, the raw text mariadb-binlog -v prints for
    each column (None for NULL)."""
    out = subprocess.run(
        ["mariadb-binlog", "--read-from-remote-server", "--host=127.0.0.1", f"--port={server.port}",
         "--user=root", "--verbose", f"--start-position={start[1]}", "--to-last-log", start[0]],
        capture_output=True, text=True, errors="surrogateescape", check=True, timeout=60).stdout
    images: list[list[str | None]] = []
    ours = False
    for line in out.splitlines():
        if not line.startswith("### "):
            continue
        body = line[4:]
        m = re.match(r"(INSERT INTO|UPDATE|DELETE FROM) `([^`]*)`\.`([^`]*)`", body)
        if m:
            ours = (m[2], m[3]) == (db, table)
        elif body in ("SET", "WHERE") and ours:
            images.append([])
        elif ours and (v := re.match(r"\s+@\d+=(.*)$", body, re.S)):
            images[-1].append(None if v[1] == "NULL" else v[1])
    return images


def _unquote(text: str) -> bytes:
    """A value mariadb-binlog prints as a quoted string, back to its bytes."""
    assert text[0] == "'" and text[-1] == "'", text
    raw = text[1:-1].encode("utf-8", "surrogateescape")
    # only unprintable bytes are escaped (\xNN); a backslash or quote is printed as it is
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m[1], 16)]), raw)


class Case:
    """One table: its columns, the rows to insert, how the server's SELECT shows each column, and how a
    value the stream yields compares with that SELECT and with the text mariadb-binlog prints."""

    def __init__(self, name: str, columns: list[tuple[str, str]], rows: list[list[str]], *,
                 truth: dict[str, str] | None = None, norm: dict[str, Norm] | None = None,
                 vendor: dict[str, Callable[[Any, str], bool]] | None = None) -> None:
        self.name, self.columns, self.rows = name, columns, rows
        self.truth = truth or {}
        self.norm = norm or {}
        self.vendor = vendor or {}


def _run(server: ThrowawayMariaDB, db: str, case: Case) -> int:
    """Create, insert, update (new keys), delete; compare. Returns the number of values compared."""
    cols = ", ".join(f"`{n}` {t}" for n, t in case.columns)
    _sql(server, db, f"CREATE TABLE `{case.name}` (id INT PRIMARY KEY, {cols})")
    cfg = MySQLSourceConfig(port=server.port, user="erpsync", password=USER_PASSWORD, database=db)
    src = MySQLSource(cfg, [case.name])
    try:
        src.prepare()
        start = _master_pos(server, db)
        values = ", ".join(f"({i}, {', '.join(r)})" for i, r in enumerate(case.rows, 1))
        # not strict: a character the column's charset lacks is stored as '?' (and compared as such)
        _sql(server, db, "SET SESSION sql_mode = ''", f"INSERT INTO `{case.name}` VALUES {values}")
        names = ["id"] + [n for n, _ in case.columns]
        sel = ", ".join(["id"] + [case.truth.get(n, f"`{n}`") for n in names[1:]])
        truth1 = {r[0]: dict(zip(names, r, strict=True)) for r in
                  _sql(server, db, f"SELECT {sel} FROM `{case.name}`")}
        snap = {c.after["id"]: c.after for ch in src.snapshot([case.name]) for c in ch.changes}
        _sql(server, db, f"UPDATE `{case.name}` SET id = id + 1000")
        truth2 = {r[0]: dict(zip(names, r, strict=True)) for r in
                  _sql(server, db, f"SELECT {sel} FROM `{case.name}`")}
        _sql(server, db, f"DELETE FROM `{case.name}`")
        ins, upd, dele = _txns(src.stream(f"{start[0]}:{start[1]}"), 3)
    finally:
        src.close()
    streamed = [c.after for c in ins] + [x for c in upd for x in (c.before, c.after)]
    streamed += [c.before for c in dele]
    truths = [truth1[r["id"]] if r["id"] in truth1 else truth2[r["id"]] for r in streamed]
    vendor = _binlog_rows(server, start, db, case.name)
    assert len(vendor) == len(streamed) == 4 * len(case.rows), (len(vendor), len(streamed))
    compared = 0
    bad: list[str] = []
    for row, truth, printed in zip(streamed, truths, vendor, strict=True):
        for k, n in enumerate(names):
            v = row[n]
            got = case.norm.get(n, lambda x: x)(v) if v is not None else None
            if got != truth[n] or type(got) is not type(truth[n]):
                bad.append(f"{n} id={row['id']}: stream {v!r} -> {got!r}, SELECT {truth[n]!r}")
            check = case.vendor.get(n)
            if check is not None and ((printed[k] is None) != (v is None)
                                      or (v is not None and not check(v, str(printed[k])))):
                bad.append(f"{n} id={row['id']}: stream {v!r}, mariadb-binlog {printed[k]!r}")
            compared += 1 + (check is not None)
    for i, row in enumerate(r for r in streamed[:len(case.rows)]):
        if snap.get(row["id"]) != row:
            diff = [n for n in names if (snap.get(row["id"]) or {}).get(n) != row[n]]
            bad.append(f"snapshot row {i + 1} differs from the stream in {diff}")
        compared += len(names)
    assert not bad, f"{len(bad)} of {compared} comparisons differ:\n" + "\n".join(b[:300] for b in bad[:40])
    print(f"{case.name}: {compared} values compared")
    return compared


def _time_text(td: dt.timedelta, fsp: int) -> str:
    neg = td < dt.timedelta(0)
    us = abs(td) // dt.timedelta(microseconds=1)
    s, frac = divmod(us, 1_000_000)
    text = f"{'-' if neg else ''}{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
    if frac % 10 ** (6 - fsp):  # digits beyond the column's precision: show them all, so they differ
        return f"{text}.{frac:06d}"
    return text + (f".{frac:06d}"[:fsp + 1] if fsp else "")


def _time_case() -> Case:
    fsps = range(7)
    values = ["'00:00:00'", "'01:02:03.4'", "'-00:00:01.5'", "'-12:34:56.789012'", "'12:34:56.789012'",
              "'838:59:59'", "'-838:59:59'", "'-00:00:00.01'", "'00:00:00.000001'", "'-00:00:00.000001'",
              "'-01:00:00.999'", "'23:59:59.5'", "'-100:00:00.25'", "NULL"]
    cols = [(f"t{f}", f"TIME({f})") for f in fsps]
    return Case("times", cols, [[v] * len(cols) for v in values],
                truth={f"t{f}": f"CAST(`t{f}` AS CHAR)" for f in fsps},
                norm={f"t{f}": lambda v, f=f: _time_text(v, f) for f in fsps},
                vendor={f"t{f}": lambda v, p, f=f: _unquote(p).decode() == _time_text(v, f) for f in fsps})


def test_time_fractions_match_select_and_mariadb_binlog(mariadb_server, mariadb_db):
    """S2: TIME(0..6), positive and negative, with and without a fraction."""
    assert _run(mariadb_server, mariadb_db, _time_case()) > 300


def _bin_case() -> Case:
    vals = [["UNHEX('0123456789ABCDEF0123456789ABCD00')", "x'00'", "x'0000'", "x'00'"],
            ["x'00'", "x'01'", "x'00000001'", "x'0100'"], ["x'01'", "x'00'", "x'01000000'", "x''"],
            ["UNHEX(REPEAT('00', 16))", "x'ff'", "x''", "x'00000000'"], ["UNHEX(REPEAT('FF', 16))", "NULL",
                                                                       "NULL", "NULL"]]
    vendor = {n: lambda v, p: v.rstrip(b"\0") == _unquote(p).rstrip(b"\0") for n in ("b16", "b1", "b4", "vb")}
    return Case("bins", [("b16", "BINARY(16)"), ("b1", "BINARY(1)"), ("b4", "BINARY(4)"),
                         ("vb", "VARBINARY(8)")], vals, vendor=vendor)


def test_binary_keeps_trailing_zero_bytes(mariadb_server, mariadb_db):
    """S3: BINARY(n) is logged without its 0x00 padding; the value is the padded one."""
    assert _run(mariadb_server, mariadb_db, _bin_case()) > 80


def test_binary_key_is_the_same_in_snapshot_and_stream(mariadb_server, mariadb_db):
    """S3: a BINARY(16) key (UUIDs stored as bytes) identifies one row the same way on both paths."""
    _sql(mariadb_server, mariadb_db, "CREATE TABLE k (k BINARY(16) PRIMARY KEY, qty INT)")
    cfg = MySQLSourceConfig(port=mariadb_server.port, user="erpsync", password=USER_PASSWORD,
                            database=mariadb_db)
    src = MySQLSource(cfg, ["k"])
    try:
        src.prepare()
        keys = [bytes(15) + b"\1", bytes(16), bytes(range(15)) + b"\0", b"\xff" * 8 + bytes(8)]
        _sql(mariadb_server, mariadb_db, "INSERT INTO k VALUES " + ", ".join(
            f"(x'{k.hex()}', {i})" for i, k in enumerate(keys)))
        pos = list(src.snapshot(["k"]))[-1].commit.position
        snap = sorted(c.after["k"] for ch in src.snapshot(["k"]) for c in ch.changes)
        _sql(mariadb_server, mariadb_db, "UPDATE k SET qty = qty + 1", "DELETE FROM k")
        upd, dele = _txns(src.stream(pos), 2)
    finally:
        src.close()
    assert snap == sorted(keys)
    assert sorted(c.before["k"] for c in upd) == sorted(c.after["k"] for c in upd) == sorted(keys)
    assert sorted(c.before["k"] for c in dele) == sorted(keys)


# a pool of characters from many scripts: each charset's column gets those its codec can encode
_POOL = ("AZaz09 !~\t'\"\\%_" + "".join(map(chr, range(0xA0, 0x180))) + "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ"
         + "ΑΒΓΔαβγωάέ" + "АБВГДабвгдЁёЇїІіЄєҐґЎў" + "אבגדהשת" + "ءابتثجحپچگ" + "กขคงจฉ฿"
         + "ĄąĆćĘęŁłŃńŚśŹźŻżŐőŰű" + "あいうえおカキクケコ漢字日本語表示" + "한국어가나다" + "中文简体繁體字碼"
         + "─│┌┐└┘├┤═║╔╗░▒▓█" + "ğĞışŞ" + "ėĖųŲūŪ")


def _query(server: ThrowawayMariaDB, db: str) -> Callable[..., list[tuple[Any, ...]]]:
    def query(q: str, args: Any = None) -> list[tuple[Any, ...]]:
        conn = server.connect(db)
        try:
            with conn.cursor() as cur:
                cur.execute(q, args)
                return list(cur.fetchall())
        finally:
            conn.close()
    return query


def _charsets(server: ThrowawayMariaDB, db: str) -> list[tuple[str, int]]:
    return [(str(r[0]), int(r[3])) for r in _sql(server, db, "SHOW CHARACTER SET")]


def _server_text(server: ThrowawayMariaDB, db: str, cs: str, raw: bytes) -> str:
    return str(_sql(server, db, f"SELECT CONVERT(_{cs} x'{raw.hex()}' USING utf8mb4)")[0][0])


def _defined_bytes(server: ThrowawayMariaDB, db: str, cs: str) -> list[int]:
    """The bytes 0x01..0xFF that single-byte charset ``cs`` maps to a character (the server converts the
    others to '?')."""
    hexes = _sql(server, db, "SELECT " + ", ".join(f"HEX(CONVERT(_{cs} x'{x:02x}' USING utf32))"
                                                   for x in range(1, 256)))[0]
    return [x for x, h in zip(range(1, 256), hexes, strict=True) if h != "0000003F" or x == 0x3F]


def test_every_charset_with_a_codec_decodes_like_the_server(mariadb_server, mariadb_db):
    """S4: each character set the server lists that erpsync supports: text through the utf8mb4 connection,
    and for single-byte charsets every byte 0x00..0xFF, decode exactly as the server converts them."""
    from cdc.sources.mysql.schema import load_table_info

    supported = {}
    for cs, maxlen in _charsets(mariadb_server, mariadb_db):
        if cs == "binary":
            continue
        _sql(mariadb_server, mariadb_db,
             f"CREATE TABLE probe_{cs} (id INT PRIMARY KEY, c TEXT CHARACTER SET {cs})")
        try:
            info = load_table_info(_query(mariadb_server, mariadb_db), [f"{mariadb_db}.probe_{cs}"], True)
        except SourceMisconfigured:
            continue  # refused at prepare (tested below), never decoded wrongly
        assert info[(mariadb_db, f"probe_{cs}")].columns[1].name == "c"
        supported[cs] = maxlen
    assert len(supported) >= 25, sorted(supported)
    cols = [(f"c_{cs}", f"TEXT CHARACTER SET {cs}") for cs in supported]
    # the pool through the utf8mb4 connection: the server stores what its charset can hold ('?' for the rest)
    rows = [["'" + _POOL.replace("\\", "\\\\").replace("'", "''") + "'"] * len(cols)]
    defined = {cs: _defined_bytes(mariadb_server, mariadb_db, cs) for cs, ml in supported.items() if ml == 1}
    for lo in (0, 0x80):  # every byte the server maps to a character, in two rows; multi-byte charsets NULL
        rows.append([f"_{cs} x'{bytes(x for x in defined[cs] if lo <= x < lo + 0x80).hex()}'" if cs in defined
                     else "NULL" for cs in supported])
    rows.append(["''"] * len(cols))
    # the bytes mariadb-binlog printed, converted by the server itself, are the streamed text
    vendor = {f"c_{cs}": lambda v, p, cs=cs: _server_text(mariadb_server, mariadb_db, cs, _unquote(p)) == v
              for cs in supported}
    n = _run(mariadb_server, mariadb_db, Case("texts", cols, rows, vendor=vendor))
    print(f"charsets compared: {len(supported)}: {' '.join(sorted(supported))}")
    assert n > 600


@pytest.mark.parametrize("cs", ["sjis", "eucjpms", "armscii8", "dec8", "swe7", "hp8", "keybcs2", "geostd8"])
def test_charset_without_a_faithful_codec_is_refused_naming_the_column(mariadb_server, mariadb_db, cs):
    """S4: no garbage: a column in a charset erpsync cannot decode exactly stops prepare with its name
    (sjis: Python's shift_jis reads 0x815F as U+FF3C where the server has U+005C)."""
    _sql(mariadb_server, mariadb_db,
         f"CREATE TABLE odd (id INT PRIMARY KEY, name VARCHAR(9) CHARACTER SET {cs})")
    cfg = MySQLSourceConfig(port=mariadb_server.port, user="erpsync", password=USER_PASSWORD,
                            database=mariadb_db)
    src = MySQLSource(cfg, ["odd"])
    try:
        with pytest.raises(SourceMisconfigured, match=rf"{mariadb_db}\.odd\.name: character set {cs}"):
            src.prepare()
    finally:
        src.close()


def test_enum_and_set_labels_with_backslashes_and_quotes(mariadb_server, mariadb_db):
    """S9: ENUM/SET labels holding a backslash, a quote, a newline, an empty label."""
    labels = ["C:\\\\temp", "it''s", "a\\nb", "\\\\\\\\", "x\\\\", "plain", "é€"]
    enum = "ENUM(" + ", ".join(f"'{x}'" for x in labels) + ", '')"
    set_ = "SET('a\\\\b', 'c''d', 'x', '\\\\')"
    sets = ["'a\\\\b'", "'c''d,x'", "''", "'\\\\'", "'a\\\\b,\\\\'", "NULL", "'x'"]
    rows = [[f"'{x}'", s] for x, s in zip(labels, sets, strict=True)] + [["''", "'a\\\\b,c''d,x,\\\\'"]]
    assert _run(mariadb_server, mariadb_db, Case("labels", [("e", enum), ("s", set_)], rows)) > 60


def _net_case() -> Case:
    uuids = ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "ffffffff-ffff-4fff-bfff-ffffffffff00",
             "00000000-0000-0000-0000-000000000000", "6ccd780c-baba-1026-9564-5b8c656024db",
             "01234567-89ab-cdef-0123-456789abcd00", "ffffffff-ffff-ffff-ffff-ffffffffffff"]
    v4 = ["10.0.0.1", "0.0.0.0", "255.255.255.255", "192.168.1.0", "1.0.0.0", "127.0.0.1"]
    v6 = ["2001:db8::1", "2001:db8::", "::", "::1", "::ffff:1.2.3.4", "::1.2.3.4"]
    rows = [[f"'{u}'", f"'{a}'", f"'{b}'"] for u, a, b in zip(uuids, v4, v6, strict=True)]
    rows += [["NULL", "NULL", "NULL"], ["'11111111-2222-3333-4444-555555555555'", "'0.0.0.1'", "'fe80::1:2'"]]
    return Case("nets", [("u", "UUID"), ("i4", "INET4"), ("i6", "INET6")], rows)


def test_uuid_inet4_inet6_are_text(mariadb_server, mariadb_db):
    """S10: MariaDB's UUID, INET4 and INET6 as the text the server shows, not storage bytes."""
    assert _run(mariadb_server, mariadb_db, _net_case()) > 80


def _f32(p: str) -> float:
    return struct.unpack("<f", struct.pack("<f", float(p)))[0]


def test_float_is_the_same_in_stream_snapshot_and_select(mariadb_server, mariadb_db):
    """S12: FLOAT is the stored float32 on both paths (the SELECT casts it to DOUBLE to show all digits)."""
    vals = ["47085.63", "123456.789", "0.1", "-3.4028234e38", "1.17549435e-38", "1e-45", "0", "-1.5",
            "3.14159", "16777217", "NULL"]
    rows = [[v, v if v in ("NULL", "0", "-1.5", "0.1", "47085.63", "3.14159") else "1.25", v] for v in vals]
    vendor = {n: lambda v, p: abs(v - float(p)) <= abs(v) * 1e-5 for n in ("f", "f2", "d")}
    case = Case("floats", [("f", "FLOAT"), ("f2", "FLOAT(10,2)"), ("d", "DOUBLE")], rows,
                truth={"f": "CAST(f AS DOUBLE)", "f2": "CAST(f2 AS DOUBLE)"}, vendor=vendor)
    assert _run(mariadb_server, mariadb_db, case) > 100


@pytest.mark.parametrize(("cs", "raw", "label"), [("ascii", "41e9", "ascii"), ("greek", "41a4", "greek")])
def test_bytes_the_charset_does_not_define_stop_the_stream_naming_the_column(mariadb_server, mariadb_db, cs,
                                                                             raw, label):
    """S4: the server stores bytes the column's charset does not define (SELECT shows '?'); the stream stops
    naming db.table.column instead of emitting U+FFFD or a guess."""
    _sql(mariadb_server, mariadb_db,
         f"CREATE TABLE raw (id INT PRIMARY KEY, a VARCHAR(9) CHARACTER SET {cs}, u VARCHAR(9))")
    cfg = MySQLSourceConfig(port=mariadb_server.port, user="erpsync", password=USER_PASSWORD,
                            database=mariadb_db)
    src = MySQLSource(cfg, ["raw"])
    try:
        src.prepare()
        start = _master_pos(mariadb_server, mariadb_db)
        _sql(mariadb_server, mariadb_db, "SET SESSION sql_mode = ''",
             f"INSERT INTO raw VALUES (1, _{cs} x'{raw}', 'é')")
        assert _sql(mariadb_server, mariadb_db, "SELECT a FROM raw") == [("A?",)]
        with pytest.raises(SourceError, match=rf"^{mariadb_db}\.raw\.a: bytes b'\\x{raw[2:]}' .* "
                                              rf"not valid {label};"):
            _txns(src.stream(f"{start[0]}:{start[1]}"), 1)
    finally:
        src.close()
