"""Binlog event, ROWS_EVENT and column value decoding: bytes in, values out (no connection, no stream state).

Row events are decoded by functions generated per table layout (one straight-line function per
table/column-image, cached), so the hot loop has no per-column dispatch. Which statements decode one
column is looked up by its binlog column type in ``_COLUMN_CODE``.
"""

from __future__ import annotations

import codecs
import datetime as dt
import ipaddress
import json
import re
import struct
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cdc.changes import RowChange, SourceError, SourceInfo, SourceMisconfigured

# binlog event types
ROTATE, QUERY, STOP, FORMAT_DESCRIPTION, XID, TABLE_MAP, HEARTBEAT = 4, 2, 3, 15, 16, 19, 27
WRITE_V1, UPDATE_V1, DELETE_V1, WRITE_V2, UPDATE_V2, DELETE_V2 = 23, 24, 25, 30, 31, 32
MYSQL_GTID, MYSQL_ANON_GTID = 33, 34
MARIA_ANNOTATE, MARIA_GTID, MARIA_GTID_LIST = 160, 162, 163
MARIA_COMPRESSED = frozenset(range(166, 172))
ROWS = {WRITE_V1: ("c", 0), UPDATE_V1: ("u", 0), DELETE_V1: ("d", 0),
        WRITE_V2: ("c", 1), UPDATE_V2: ("u", 1), DELETE_V2: ("d", 1)}  # event type → (op, v2 post-header)
ARTIFICIAL = 0x20  # LOG_EVENT_ARTIFICIAL_F: fake rotate / resent FDE, not a real binlog position

# binlog column types (MYSQL_TYPE_*)
TINY, SHORT, LONG, FLOAT, DOUBLE, TIMESTAMP, LONGLONG, INT24 = 1, 2, 3, 4, 5, 7, 8, 9
DATE, TIME, DATETIME, YEAR, NEWDATE, VARCHAR, BIT = 10, 11, 12, 13, 14, 15, 16
TIMESTAMP2, DATETIME2, TIME2 = 17, 18, 19
JSON, NEWDECIMAL, ENUM, SET, BLOB, VAR_STRING, STRING, GEOMETRY = 245, 246, 247, 248, 252, 253, 254, 255

U16 = struct.Struct("<H").unpack_from
I32 = struct.Struct("<i").unpack_from


# --------------------------------------------------------------------------- value decoding


def _date(v: int) -> dt.date | None:
    d, m, y = v & 31, (v >> 5) & 15, v >> 9
    return dt.date(y, m, d) if d and m and y else None  # zero dates have no Python value


def _datetime2(x: int, us: int, tz: dt.tzinfo) -> dt.datetime | None:
    x -= 0x8000000000
    ymd, hms = x >> 17, x & 0x1FFFF
    ym = ymd >> 5
    y, m, d = ym // 13, ym % 13, ymd & 31
    if not (y and m and d):
        return None
    return dt.datetime(y, m, d, hms >> 12, (hms >> 6) & 63, hms & 63, us, tz)


def _timestamp(sec: int, us: int) -> dt.datetime | None:
    if not sec and not us:
        return None  # '0000-00-00 00:00:00'
    return dt.datetime.fromtimestamp(sec, dt.UTC).replace(microsecond=us)


def _time2(x: int, fb: int) -> dt.timedelta:
    """A TIME2 value read as one big-endian int of its 3 + ``fb`` bytes, as MySQL's
    my_time_packed_from_binary reads it (negative values keep their fraction binary-complemented)."""
    if fb == 3:
        packed = x - 0x800000000000
    else:
        bits = 8 * fb
        intpart, frac = (x >> bits) - 0x800000, x & ((1 << bits) - 1)
        if intpart < 0 and frac:
            intpart += 1
            frac -= 1 << bits
        packed = (intpart << 24) + frac * (10000 if fb == 1 else 100)
    neg = packed < 0
    if neg:
        packed = -packed
    hms = packed >> 24
    td = dt.timedelta(hours=(hms >> 12) & 0x3FF, minutes=(hms >> 6) & 63, seconds=hms & 63,
                      microseconds=packed & 0xFFFFFF)
    return -td if neg else td


def _old_datetime(v: int, tz: dt.tzinfo) -> dt.datetime | None:
    d, t = divmod(v, 1_000_000)
    if not d:
        return None
    return dt.datetime(d // 10000, d // 100 % 100, d % 100, t // 10000, t // 100 % 100, t % 100, 0, tz)


def _old_time(v: int) -> dt.timedelta:
    return dt.timedelta(hours=v // 10000, minutes=v // 100 % 100, seconds=v % 100)


def _set_value(bits: int, names: tuple[str, ...]) -> str:
    return ",".join(n for i, n in enumerate(names) if bits >> i & 1)


_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def _decimal_layout(precision: int, scale: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Byte size and (shift, mask, multiplier) per digit group of a binary DECIMAL read as one big-endian "
      "int."""
    intg = precision - scale
    groups: list[tuple[int, int]] = []  # (bytes, digits after this group)
    intg0, intg0x = divmod(intg, 9)
    frac0, frac0x = divmod(scale, 9)
    if intg0x:
        groups.append((_DIG2BYTES[intg0x], intg0 * 9 + scale))
    for k in range(intg0):
        groups.append((4, (intg0 - 1 - k) * 9 + scale))
    for k in range(frac0):
        groups.append((4, scale - (k + 1) * 9))
    if frac0x:
        groups.append((_DIG2BYTES[frac0x], 0))
    size = sum(g[0] for g in groups)
    out, off = [], 0
    for nbytes, after in groups:
        out.append((8 * (size - off - nbytes), (1 << (8 * nbytes)) - 1, 10**after))
        off += nbytes
    return size, out


def _json_str(v: Any) -> Any:
    # python-mysql-replication returns bytes for JSON strings/keys; the contract wants str
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, dict):
        return {_json_str(k): _json_str(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_str(x) for x in v]
    return v


# --------------------------------------------------------------------------- table layouts


@dataclass(slots=True)
class ColumnInfo:
    name: str
    data_type: str  # information_schema DATA_TYPE ("" when unknown)
    unsigned: bool = False
    encoding: str | None = "utf-8"  # None: binary (bytes)
    is_json: bool = False
    enum: tuple[str, ...] = ()
    set_: tuple[str, ...] = ()


@dataclass(slots=True)
class TableInfo:
    db: str
    table: str
    columns: list[ColumnInfo]
    key: tuple[str, ...]
    source: SourceInfo = field(init=False)

    def __post_init__(self) -> None:
        self.source = SourceInfo(connector="mysql", db=self.db, schema=self.db, table=self.table)


# information_schema DATA_TYPE → binlog column types it may be logged as
_COMPAT: dict[str, set[int]] = {
    "tinyint": {TINY}, "smallint": {SHORT}, "mediumint": {INT24}, "int": {LONG}, "bigint": {LONGLONG},
    "float": {FLOAT}, "double": {DOUBLE}, "decimal": {NEWDECIMAL}, "date": {DATE, NEWDATE},
    "datetime": {DATETIME, DATETIME2}, "timestamp": {TIMESTAMP, TIMESTAMP2}, "time": {TIME, TIME2},
    "year": {YEAR}, "char": {STRING}, "varchar": {VARCHAR, VAR_STRING}, "binary": {STRING},
    "varbinary": {VARCHAR, VAR_STRING}, "tinytext": {BLOB}, "text": {BLOB}, "mediumtext": {BLOB},
    "longtext": {BLOB}, "tinyblob": {BLOB}, "blob": {BLOB}, "mediumblob": {BLOB}, "longblob": {BLOB},
    "json": {JSON, BLOB}, "enum": {STRING}, "set": {STRING}, "bit": {BIT},
}
NUMERIC_TYPES = frozenset({TINY, SHORT, LONG, FLOAT, DOUBLE, LONGLONG, INT24, NEWDECIMAL})


class Layout:
    """A TABLE_MAP decoded: per-column binlog type/meta plus the information_schema column it maps to."""

    def __init__(self, info: TableInfo, types: bytes, metas: list[int], names: list[str] | None,
                 signed_bits: list[bool] | None, wanted: Collection[str] | None, tz: dt.tzinfo) -> None:
        self.info = info
        self.types = types
        self.metas = metas
        self.tz = tz
        by_name = {c.name: c for c in info.columns}
        cols: list[ColumnInfo] = []
        if names is not None:  # binlog_row_metadata=FULL: names are the stream's truth, across any DDL
            for i, n in enumerate(names):
                c = by_name.get(n)
                if c is None or (c.data_type in _COMPAT and types[i] not in _COMPAT[c.data_type]):
                    c = ColumnInfo(n, "", encoding="utf-8")
                    if signed_bits is not None and types[i] in NUMERIC_TYPES:
                        c.unsigned = not signed_bits[i]
                cols.append(c)
        else:
            cols = self._match(info, types)
        self.columns = cols
        self.wanted = None if wanted is None else set(wanted) | set(info.key)
        self._funcs: dict[tuple[str, bytes, bytes], Any] = {}
        self._g: dict[str, Any] = {}

    @staticmethod
    def _match(info: TableInfo, types: bytes) -> list[ColumnInfo]:
        def ok(cols: list[ColumnInfo]) -> bool:
            return all(c.data_type not in _COMPAT or t in _COMPAT[c.data_type] for c, t in zip(cols, types,
                                                                                            strict=True))

        if len(info.columns) == len(types) and ok(info.columns):
            return info.columns
        # reading behind an ALTER TABLE ... ADD COLUMN (at the end): older rows have a prefix of the columns
        if len(info.columns) > len(types) and ok(info.columns[: len(types)]):
            return info.columns[: len(types)]
        raise LayoutMismatch(f"{info.db}.{info.table}: {len(types)} columns in the binlog, "
                             f"{len(info.columns)} in information_schema")

    def decoder(self, kind: str, present: bytes, present_after: bytes) -> Any:
        k = (kind, present, present_after)
        f = self._funcs.get(k)
        if f is None:
            f = self._funcs[k] = _generate(self, kind, present, present_after)
        return f


class LayoutMismatch(Exception):
    pass


# --------------------------------------------------------------------------- per-type column code
#
# Each generator returns the statements that decode column ``i`` at ``b[p]`` into ``v{i}`` (only if
# ``keep``: a column the mapping does not use is skipped, not converted) and advance ``p``; helpers the
# statements call go into the generated function's globals ``g``.

ColumnCode = Callable[[int, ColumnInfo, int, bool, dict[str, Any]], list[str]]


def _text(c: ColumnInfo, g: dict[str, Any], expr: str) -> str:
    if c.is_json:
        g["_jl"] = json.loads
        return f"_jl(str({expr}, 'utf-8'))"
    if c.encoding is None:
        return f"bytes({expr})"
    table = CHARMAPS.get(c.encoding)
    if table is not None:  # a charset Python has no exact codec for, as a 256-character decoding table
        g["_cmd"] = codecs.charmap_decode
        g[f"_cm{c.encoding}"] = table
        return f"_cmd({expr}, 'strict', _cm{c.encoding})[0]"
    return f"str({expr}, {c.encoding!r})"  # strict: undecodable bytes stop the stream, naming the column


def _charmap(codec: str, overrides: dict[int, str]) -> str:
    """A 256-character decoding table: ``codec`` where it agrees with the server, else ``overrides``
    (U+FFFE: a byte the server maps to no character, which stops the stream)."""
    out = []
    for x in range(256):
        try:
            out.append(overrides.get(x) or bytes([x]).decode(codec))
        except UnicodeDecodeError:
            out.append("\ufffe")
    return "".join(out)


_NONE = "\ufffe"
# single-byte MariaDB charsets whose Python codec differs from the server's table on some bytes (checked
# byte for byte against CONVERT(... USING utf32) on MariaDB 10.11)
CHARMAPS: dict[str, str] = {
    "mariadb_latin1": _charmap("cp1252", {x: chr(x) for x in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}),
    "mariadb_hebrew": _charmap("iso8859_8", {0xAF: "\u203e"}),
    "mariadb_tis620": _charmap("tis_620", {x: "\ufffd" for x in (0xA0, 0xDB, 0xDC, 0xDD, 0xDE, 0xFC, 0xFD,
                                                                  0xFE, 0xFF)}),
    "mariadb_koi8u": _charmap("koi8_u", {0x95: "\u2022"}),
    "mariadb_greek": _charmap("iso8859_7", {0xA1: "\u02bd", 0xA2: "\u02bc", 0xA4: _NONE, 0xA5: _NONE,
                                            0xAA: _NONE}),
    "mariadb_cp866": _charmap("cp866", {0xFC: "\u207f", 0xFD: "\u00b2"}),
    "mariadb_cp1256": _charmap("cp1256", dict.fromkeys((0x8A, 0x8F, 0x98, 0x9A, 0x9F, 0xAA, 0xC0, 0xFF),
                                                       _NONE)),
}


def _fixed(signed_fmt: str, unsigned_fmt: str, size: int) -> ColumnCode:
    def code(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
        fmt = unsigned_fmt if c.unsigned else signed_fmt
        name = f"_s{fmt.strip('<>')}"
        g[name] = struct.Struct(fmt).unpack_from
        return ([f"v{i} = {name}(b, p)[0]"] if keep else []) + [f"p += {size}"]
    return code


def _tiny(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    val = f"v{i} = b[p]" if c.unsigned else f"v{i} = b[p] - 256 if b[p] > 127 else b[p]"
    return ([val] if keep else []) + ["p += 1"]


def _int24(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    v = f"v{i}"
    lines = [f"{v} = b[p] | b[p + 1] << 8 | b[p + 2] << 16"]
    if not c.unsigned:
        lines.append(f"if {v} & 0x800000: {v} -= 0x1000000")
    return (lines if keep else []) + ["p += 3"]


def _year(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    return ([f"v{i} = b[p] + 1900 if b[p] else 0"] if keep else []) + ["p += 1"]


def _newdecimal(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    precision, scale = meta >> 8, meta & 0xFF
    size, groups = _decimal_layout(precision, scale)
    top, full = 1 << (8 * size - 1), (1 << (8 * size)) - 1
    if not keep:
        return [f"p += {size}"]
    g["_D"] = Decimal
    terms = " + ".join(f"(x >> {sh} & {m}) * {mult}" if sh else f"(x & {m}) * {mult}"
                       for sh, m, mult in groups) or "0"
    suffix = f"E-{scale}" if scale else ""
    return _cached(i, g, size, [
        "x = k",
        f"if x & {top}:",
        f"    x ^= {top}; sg = ''",
        "else:",
        f"    x ^= {top ^ full}; sg = '-'",
        f"v{i} = _D(sg + str({terms}) + {suffix!r})"])


def _length_prefixed(i: int, c: ColumnInfo, lp: int, keep: bool, g: dict[str, Any]) -> list[str]:
    """A value after a 1- or 2-byte little-endian length."""
    n = "b[p]" if lp == 1 else "_u16(b, p)[0]"
    g["_u16"] = U16
    val = f"v{i} = {_text(c, g, f'b[p + {lp}:p + {lp} + n]')}"
    return [f"n = {n}", *([val] if keep else []), f"p += {lp} + n"]


def _varchar(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    return _length_prefixed(i, c, 1 if meta < 256 else 2, keep, g)


def _blob_value(i: int, lp: int, val: str, keep: bool, g: dict[str, Any]) -> list[str]:
    """A value after a little-endian length of ``lp`` (the column's meta) bytes."""
    n = "b[p]" if lp == 1 else "_u16(b, p)[0]" if lp == 2 else f"int.from_bytes(b[p:p + {lp}], 'little')"
    g["_u16"] = U16
    return [f"n = {n}"] + ([f"v{i} = {val}"] if keep else []) + [f"p += {lp} + n"]


def _blob(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    # BLOB/TEXT (MariaDB logs JSON as one), GEOMETRY
    return _blob_value(i, meta, _text(c, g, f"b[p + {meta}:p + {meta} + n]"), keep, g)


def _mysql_json(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    from pymysqlreplication.json_binary import parse_json

    g["_pj"] = lambda raw: _json_str(parse_json(raw[0], raw[1:])) if raw else None
    return _blob_value(i, meta, f"_pj(b[p + {meta}:p + {meta} + n])", keep, g)


def _enum(i: int, c: ColumnInfo, low: int, keep: bool, g: dict[str, Any]) -> list[str]:
    g[f"_e{i}"] = ("", *c.enum)  # 1-based index, 0 for ''
    n = "b[p]" if low == 1 else "_u16(b, p)[0]"
    g["_u16"] = U16
    return ([f"v{i} = _e{i}[{n}]"] if keep else []) + [f"p += {low}"]


def _set(i: int, c: ColumnInfo, low: int, keep: bool, g: dict[str, Any]) -> list[str]:
    g[f"_e{i}"] = c.set_  # a bitmask over the members
    g["_setv"] = _set_value
    return ([f"v{i} = _setv(int.from_bytes(b[p:p + {low}], 'little'), _e{i})"] if keep else []) + [
        f"p += {low}"]


def _string(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    real, low = meta >> 8, meta & 0xFF  # STRING carries ENUM and SET as its real type
    sub = _STRING_REAL.get(real)
    if sub is not None:
        return sub(i, c, low, keep, g)
    max_len = (((meta >> 4) & 0x300) ^ 0x300) + low
    lp = 1 if max_len < 256 else 2
    fmt = _BINARY_TEXT.get(c.data_type)
    if fmt is None and c.encoding is not None:
        return _length_prefixed(i, c, lp, keep, g)
    # BINARY(n) (and MariaDB's UUID/INET4/INET6, stored as one) is logged without its trailing 0x00 pad
    g["_u16"] = U16
    val = f"bytes(b[p + {lp}:p + {lp} + n]).ljust({max_len}, b'\\0')"
    if fmt is not None:
        g[f"_f{i}"] = fmt
        val = f"_f{i}({val})"
    n = "b[p]" if lp == 1 else "_u16(b, p)[0]"
    return [f"n = {n}", *([f"v{i} = {val}"] if keep else []), f"p += {lp} + n"]


def _inet6(raw: bytes) -> str:
    """An INET6 value as MariaDB prints it (IPv4-mapped and IPv4-compatible addresses end in a.b.c.d)."""
    a = ipaddress.IPv6Address(raw)
    if raw[:10] == bytes(10) and raw[10:12] in (b"\xff\xff", b"\0\0") and (raw[10] or raw[12:14] != bytes(2)):
        return ("::ffff:" if raw[10] else "::") + str(ipaddress.IPv4Address(raw[12:]))
    return str(a)


_BINARY_TEXT: dict[str, Callable[[bytes], str]] = {
    "uuid": lambda raw: str(uuid.UUID(bytes=raw)),
    "inet4": lambda raw: str(ipaddress.IPv4Address(raw)),
    "inet6": _inet6,
}


_STRING_REAL: dict[int, ColumnCode] = {ENUM: _enum, SET: _set}


def _bit(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    nbytes = (meta >> 8) + (1 if meta & 0xFF else 0)
    return ([f"v{i} = int.from_bytes(b[p:p + {nbytes}], 'big')"] if keep else []) + [f"p += {nbytes}"]


def _date_code(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    g["_date"] = _date
    if not keep:
        return ["p += 3"]
    return _cached(i, g, 3, [f"v{i} = _date((k & 0xFF) << 16 | k & 0xFF00 | k >> 16)"])


def _micros(fb: int) -> str:
    """Microseconds of a TIMESTAMP2/DATETIME2 value read as one big-endian int ``k`` with an ``fb``-byte
    fraction (fb = (fsp + 1) // 2)."""
    return "0" if not fb else f"(k & {(1 << 8 * fb) - 1})" + {1: " * 10000", 2: " * 100", 3: ""}[fb]


def _datetime2_code(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    fb = (meta + 1) // 2
    size = 5 + fb
    if not keep:
        return [f"p += {size}"]
    g["_dt2"] = _datetime2
    return _cached(i, g, size, [f"v{i} = _dt2(k >> {8 * fb}, {_micros(fb)}, _tz)"])


def _timestamp2_code(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    fb = (meta + 1) // 2
    size = 4 + fb
    if not keep:
        return [f"p += {size}"]
    g["_ts"] = _timestamp
    return _cached(i, g, size, [f"v{i} = _ts(k >> {8 * fb}, {_micros(fb)})"])


def _time2_code(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    fb = (meta + 1) // 2
    size = 3 + fb
    if not keep:
        return [f"p += {size}"]
    g["_t2"] = _time2
    return _cached(i, g, size, [f"v{i} = _t2(k, {fb})"])


def _old_timestamp_code(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    g["_ts"] = _timestamp
    g["_s_I"] = struct.Struct("<I").unpack_from
    return ([f"v{i} = _ts(_s_I(b, p)[0], 0)"] if keep else []) + ["p += 4"]


def _old_datetime_code(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    g["_odt"] = _old_datetime
    return ([f"v{i} = _odt(int.from_bytes(b[p:p + 8], 'little'), _tz)"] if keep else []) + ["p += 8"]


def _old_time_code(i: int, c: ColumnInfo, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    g["_otime"] = _old_time
    return ([f"v{i} = _otime(b[p] | b[p + 1] << 8 | b[p + 2] << 16)"] if keep else []) + ["p += 3"]


# binlog column type → generator of its decoding statements
_COLUMN_CODE: dict[int, ColumnCode] = {
    TINY: _tiny,
    SHORT: _fixed("<h", "<H", 2),
    INT24: _int24,
    LONG: _fixed("<i", "<I", 4),
    LONGLONG: _fixed("<q", "<Q", 8),
    FLOAT: _fixed("<f", "<f", 4),
    DOUBLE: _fixed("<d", "<d", 8),
    YEAR: _year,
    NEWDECIMAL: _newdecimal,
    VARCHAR: _varchar,
    VAR_STRING: _varchar,
    BLOB: _blob,
    GEOMETRY: _blob,
    JSON: _mysql_json,  # MySQL's binary JSON (MariaDB logs JSON as BLOB)
    STRING: _string,
    BIT: _bit,
    DATE: _date_code,  # 3 bytes, day | month << 5 | year << 9 (NEWDATE is never logged)
    DATETIME2: _datetime2_code,
    TIMESTAMP2: _timestamp2_code,
    TIME2: _time2_code,
    TIMESTAMP: _old_timestamp_code,
    DATETIME: _old_datetime_code,
    TIME: _old_time_code,
}


def column_code(i: int, c: ColumnInfo, t: int, meta: int, keep: bool, g: dict[str, Any]) -> list[str]:
    """Statements that decode column ``i`` (binlog type ``t``) at ``b[p]`` into ``v{i}`` (if ``keep``) and
    advance ``p``."""
    code = _COLUMN_CODE.get(t)
    if code is None:
        raise SourceMisconfigured(f"column {c.name!r}: binlog column type {t} is not supported by the MySQL "
                                  "source")
    return code(i, c, meta, keep, g)


_CACHE_MAX = 50_000


def _cached(i: int, g: dict[str, Any], size: int, compute: list[str]) -> list[str]:
    """Decode a fixed-size value through a per-column cache keyed by its raw bytes: prices, quantities and
    commit-time timestamps repeat a lot, and a dict hit is ~10x cheaper than building a Decimal/datetime."""
    g[f"_c{i}"] = {}
    return [f"k = int.from_bytes(b[p:p + {size}], 'big')",
            f"v{i} = _c{i}.get(k)",
            f"if v{i} is None:",
            *("    " + line for line in compute),
            f"    if len(_c{i}) > {_CACHE_MAX}: _c{i}.clear()",
            f"    _c{i}[k] = v{i}",
            f"p += {size}"]


# --------------------------------------------------------------------------- generated row decoders


def _image_code(layout: Layout, present: bytes, dict_name: str) -> list[str]:
    pres = [i for i in range(len(layout.types)) if present[i >> 3] >> (i & 7) & 1]
    g_lines: list[str] = []
    nbytes = (len(pres) + 7) // 8
    g_lines.append("nb = b[p]" if nbytes == 1 else f"nb = int.from_bytes(b[p:p + {nbytes}], 'little')")
    g_lines.append(f"p += {nbytes}")
    items = []
    for j, i in enumerate(pres):
        c = layout.columns[i]
        keep = layout.wanted is None or c.name in layout.wanted
        body = column_code(i, c, layout.types[i], layout.metas[i], keep, layout._g)
        if keep:
            g_lines += [f"if nb & {1 << j}:", f"    v{i} = None", "else:"]
            items.append(f"{c.name!r}: v{i}")
        else:
            g_lines.append(f"if not nb & {1 << j}:")
        g_lines.extend("    " + s for s in body)
    g_lines.append(f"{dict_name} = {{{', '.join(items)}}}")
    return g_lines


def _decodes(raw: bytes, encoding: str) -> bool:
    try:
        table = CHARMAPS.get(encoding)
        codecs.charmap_decode(raw, "strict", table) if table is not None else codecs.decode(raw, encoding)
    except UnicodeDecodeError:
        return False
    return True


def _undecodable(layout: Layout) -> Callable[[UnicodeDecodeError], None]:
    def bad(e: UnicodeDecodeError) -> None:
        text = [(c.name, c.encoding) for c in layout.columns if c.encoding is not None]
        if e.encoding == "charmap":  # a CHARMAPS table: the columns decoded by one that rejects these bytes
            cols = [n for n, enc in text if enc in CHARMAPS and not _decodes(e.object, enc)]
        else:
            name = codecs.lookup(e.encoding).name
            cols = [n for n, enc in text if enc not in CHARMAPS and codecs.lookup(enc).name == name]
        label = e.encoding
        if e.encoding == "charmap":
            label = ", ".join(sorted({str(enc).removeprefix("mariadb_") for n, enc in text if n in cols}))
        cols = cols or [n for n, _ in text]
        names = ", ".join(f"{layout.info.db}.{layout.info.table}.{n}" for n in cols)
        raise SourceError(f"{names}: bytes {e.object[e.start:e.end]!r} in the binlog are not valid "
                          f"{label}; stopping rather than emitting a wrong value") from None
    return bad


def _generate(layout: Layout, kind: str, present: bytes, present_after: bytes) -> Any:
    """Compile ``f(b, p, end, app, si, key)`` that appends one RowChange per row of a rows event body."""
    layout._g = g = {"_RC": RowChange, "_tz": layout.tz, "_bad": _undecodable(layout)}
    lines = ["def f(b, p, end, app, si, key):", "  try:", "    while p < end:"]
    if kind == "u":
        body = _image_code(layout, present, "bf") + _image_code(layout, present_after, "af")
        body.append("app(_RC('u', si, bf, af, key))")
    elif kind == "c":
        body = [*_image_code(layout, present, "af"), "app(_RC('c', si, None, af, key))"]
    else:
        body = [*_image_code(layout, present, "bf"), "app(_RC('d', si, bf, None, key))"]
    lines.extend("        " + s for s in body)
    lines += ["    return p", "  except UnicodeDecodeError as e:", "    _bad(e)"]
    exec(compile("\n".join(lines), f"<mysql rows {layout.info.db}.{layout.info.table}>", "exec"), g)
    return g["f"]


# --------------------------------------------------------------------------- events


def rows_header(pkt: bytes, etype: int) -> tuple[int, str, bytes, bytes, int]:
    """A rows event's table id, op, column-present bitmaps (before, after: ``b""`` unless an update) and
    the offset of its first row."""
    op, v2 = ROWS[etype]
    p = 28
    if v2:
        p += U16(pkt, 28)[0]
    ncols = pkt[p]
    p += 1
    if ncols >= 251:
        ncols = U16(pkt, p)[0]
        p += 2
    bl = (ncols + 7) // 8
    present = pkt[p:p + bl]
    p += bl
    present_after = b""
    if op == "u":
        present_after = pkt[p:p + bl]
        p += bl
    return int.from_bytes(pkt[20:26], "little"), op, present, present_after, p


def table_map_header(pkt: bytes) -> tuple[int, str, str, int]:
    """A TABLE_MAP's table id, schema, table and the offset of its column count."""
    tid = int.from_bytes(pkt[20:26], "little")
    dlen = pkt[28]
    db = pkt[29:29 + dlen].decode()
    tl = pkt[30 + dlen]
    table = pkt[31 + dlen:31 + dlen + tl].decode()
    return tid, db, table, 32 + dlen + tl


# binlog type → bytes of its TABLE_MAP metadata: 1, 2 (little-endian) or -2 (2 bytes, big-endian)
_META_BYTES = {FLOAT: 1, DOUBLE: 1, BLOB: 1, JSON: 1, GEOMETRY: 1, TIMESTAMP2: 1, DATETIME2: 1, TIME2: 1,
               VARCHAR: 2, VAR_STRING: 2, BIT: 2, NEWDECIMAL: -2, STRING: -2, ENUM: -2, SET: -2}


@dataclass(slots=True)
class TableMap:
    types: bytes
    metas: list[int]
    names: list[str] | None  # binlog_row_metadata=FULL only
    signed: list[bool] | None  # per column (True for non-numeric); MINIMAL or FULL only


def parse_table_map(pkt: bytes, p: int, end: int) -> TableMap:
    """The column part of a TABLE_MAP body from ``p`` (its column count) to ``end``."""
    ncols, p = lenenc(pkt, p)
    types = pkt[p:p + ncols]
    p += ncols
    mlen, p = lenenc(pkt, p)
    mend = p + mlen
    metas = []
    for t in types:
        nb = _META_BYTES.get(t, 0)
        if nb == 1:
            metas.append(pkt[p])
        elif nb == 2:
            metas.append(U16(pkt, p)[0])
        elif nb == -2:
            metas.append(pkt[p] << 8 | pkt[p + 1])
        else:
            metas.append(0)
        p += abs(nb)
    p = mend + (ncols + 7) // 8  # skip the nullability bitmap
    names: list[str] | None = None
    signed: list[bool] | None = None
    while p < end:  # optional metadata (binlog_row_metadata=MINIMAL/FULL)
        mtype = pkt[p]
        ln, p = lenenc(pkt, p + 1)
        val = pkt[p:p + ln]
        p += ln
        if mtype == 4:
            names, q = [], 0
            while q < len(val):
                n, q = lenenc(val, q)
                names.append(val[q:q + n].decode("utf-8", "replace"))
                q += n
        elif mtype == 1:
            bits = int.from_bytes(val, "big")
            nnum = sum(1 for t in types if t in NUMERIC_TYPES)
            flags = [bool(bits >> (len(val) * 8 - 1 - k) & 1) for k in range(nnum)]
            it = iter(flags)
            signed = [not next(it) if t in NUMERIC_TYPES else True for t in types]
    return TableMap(types, metas, names, signed)


def lenenc(b: bytes, p: int) -> tuple[int, int]:
    x = b[p]
    if x < 251:
        return x, p + 1
    if x == 252:
        return U16(b, p + 1)[0], p + 3
    if x == 253:
        return int.from_bytes(b[p + 1:p + 4], "little"), p + 4
    return int.from_bytes(b[p + 1:p + 9], "little"), p + 9


def query_text(pkt: bytes, end: int) -> bytes:
    # post-header: thread_id(4) exec_time(4) db_len(1) error_code(2) status_vars_len(2)
    dblen = pkt[28]
    svl = U16(pkt, 31)[0]
    return pkt[33 + svl + dblen + 1:end].strip()


_DDL_RE = re.compile(rb"^\s*(/\*.*?\*/\s*)*(ALTER|CREATE|DROP|RENAME|TRUNCATE)\b", re.I | re.S)


def is_ddl(q: bytes) -> bool:
    return bool(_DDL_RE.match(q))


def maria_gtid(pkt: bytes) -> tuple[int, int, int, int]:
    """A MariaDB GTID event's (domain, server_id, seq_no, flags)."""
    seq, domain, gflags = struct.unpack_from("<QIB", pkt, 20)
    return domain, I32(pkt, 6)[0] & 0xFFFFFFFF, seq, gflags


def mysql_gtid(pkt: bytes) -> tuple[str, int]:
    """A MySQL GTID event's (source uuid, transaction number)."""
    sid = pkt[21:37].hex()
    gno = struct.unpack_from("<q", pkt, 37)[0]
    return f"{sid[:8]}-{sid[8:12]}-{sid[12:16]}-{sid[16:20]}-{sid[20:]}", gno


def rotate(pkt: bytes, end: int) -> tuple[str, int]:
    """A ROTATE event's next file and offset."""
    return pkt[28:end].decode(), struct.unpack_from("<Q", pkt, 20)[0]
