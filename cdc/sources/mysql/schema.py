"""What the binlog does not say about the mapped tables, from information_schema and the server's
settings: column names, types, character sets, ENUM/SET members, primary keys, and the time zone that
DATETIME values are wall-clock times in."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import pymysql

from cdc.changes import SourceMisconfigured
from cdc.sources.mysql.decoder import ColumnInfo, TableInfo


def quote_ident(name: str) -> str:
    """A MySQL identifier quoted: in backticks, a backtick in it doubled."""
    return "`" + name.replace("`", "``") + "`"


Query = Callable[..., list[tuple[Any, ...]]]  # (sql, args=None) → rows

# MariaDB character set → the codec that decodes its bytes exactly: a Python codec, or a decoding table of
# decoder.CHARMAPS (single-byte charsets, checked byte for byte against the server's own conversion).
# A charset absent here (sjis: 0x815F is U+005C, not U+FF3C; armscii8, dec8, swe7, ...) has no faithful
# codec: its columns are refused.
_TEXT_ENC: dict[str, str | None] = {
    "utf8mb4": "utf-8", "utf8mb3": "utf-8", "utf8": "utf-8", "latin1": "mariadb_latin1", "ascii": "ascii",
    "ucs2": "utf-16-be", "utf16": "utf-16-be", "utf16le": "utf-16-le", "utf32": "utf-32-be", "binary": None,
    "latin2": "iso8859_2", "latin5": "iso8859_9", "latin7": "iso8859_13", "greek": "mariadb_greek",
    "hebrew": "mariadb_hebrew", "cp1250": "cp1250", "cp1251": "cp1251", "cp1256": "mariadb_cp1256",
    "cp1257": "cp1257",
    "cp850": "cp850", "cp852": "cp852", "cp866": "mariadb_cp866", "koi8r": "koi8_r", "koi8u": "mariadb_koi8u",
    "macroman": "mac_roman", "macce": "mac_latin2", "tis620": "mariadb_tis620",
    "cp932": "cp932", "ujis": "euc_jp", "euckr": "euc_kr", "gb2312": "gb2312", "gbk": "gbk", "big5": "big5",
}

_ENUM_ESC = {"0": "\0", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a", "b": "\b"}


def server_timezone(query: Query) -> dt.tzinfo:
    """Zone that DATETIME values are wall-clock times in: the server's time zone."""
    tzname, sys_tz, offset = query(
        "SELECT @@global.time_zone, @@system_time_zone, TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), "
        "NOW())")[0]
    name = sys_tz if tzname == "SYSTEM" else tzname
    tz: dt.tzinfo | None = None
    m = re.fullmatch(r"([+-])(\d{1,2}):(\d{2})", str(name))
    if m:
        sign = -1 if m[1] == "-" else 1
        tz = dt.timezone(sign * dt.timedelta(hours=int(m[2]), minutes=int(m[3])))
    else:
        try:
            tz = ZoneInfo(str(name))
        except (ValueError, KeyError, OSError):
            # an abbreviation like "CEST": only the current offset is knowable
            tz = dt.timezone(dt.timedelta(seconds=int(offset)))
    return dt.UTC if tz in (ZoneInfo("UTC"), dt.UTC) else tz


def _json_columns(query: Query) -> set[tuple[str, str, str]]:
    """MariaDB's JSON is LONGTEXT with a json_valid() check constraint: (schema, table, column) of each."""
    json_cols: set[tuple[str, str, str]] = set()
    try:
        for s, t, clause in query(
                "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE FROM "
                "information_schema.CHECK_CONSTRAINTS"
                " WHERE CHECK_CLAUSE LIKE 'json_valid(%%'"):
            m = re.fullmatch(r"json_valid\(`([^`]+)`\)", str(clause))
            if m:
                json_cols.add((s, t, m[1]))
    except pymysql.MySQLError:
        pass
    return json_cols


def load_table_info(query: Query, tables: list[str], mariadb: bool) -> dict[tuple[str, str], TableInfo]:
    """Columns and keys of ``tables`` (``db.table``) from information_schema; a table that does not exist
    (or that the user cannot see) is absent from the result."""
    if not tables:
        return {}
    pairs = [tuple(t.split(".", 1)) for t in tables]
    cond = " OR ".join(["(c.TABLE_SCHEMA = %s AND c.TABLE_NAME = %s)"] * len(pairs))
    args = [x for p in pairs for x in p]
    rows = query(
        "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, c.DATA_TYPE, c.COLUMN_TYPE, "
        "c.CHARACTER_SET_NAME,"
        " c.COLUMN_KEY FROM information_schema.COLUMNS c"
        f" WHERE {cond} ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION", args)
    json_cols = _json_columns(query) if mariadb else set()
    keys = {(s, t): [] for s, t in pairs}  # type: dict[tuple[str, str], list[str]]
    for s, t, col in query(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE"
            f" WHERE CONSTRAINT_NAME = 'PRIMARY' AND ({cond.replace('c.', '')}) ORDER BY "
            "ORDINAL_POSITION",
            args):
        keys.setdefault((s, t), []).append(col)
    info: dict[tuple[str, str], TableInfo] = {}
    for s, t, name, dtype, ctype, charset, _ckey in rows:
        ti = info.get((s, t))
        if ti is None:
            ti = info[(s, t)] = TableInfo(s, t, [], tuple(keys.get((s, t), ())))
        ti.columns.append(_column(s, t, name, str(dtype), str(ctype), charset, json_cols))
    return info


def _encoding(s: str, t: str, name: str, charset: Any) -> str | None:
    if not charset:
        return None
    cs = str(charset).lower()
    if cs not in _TEXT_ENC:
        raise SourceMisconfigured(f"{s}.{t}.{name}: character set {cs} has no exact decoding in erpsync; "
                                  "convert the column (ALTER TABLE ... CONVERT TO CHARACTER SET utf8mb4) or "
                                  "leave the table unmapped")
    return _TEXT_ENC[cs]


def _label(m: re.Match[str]) -> str:
    """One quoted ENUM/SET member of COLUMN_TYPE unescaped ('' is ', a backslash escapes)."""
    return re.sub(r"''|\\(.)", lambda e: "'" if e[0] == "''" else _ENUM_ESC.get(e[1], e[1]), m[1], flags=re.S)


def _column(s: str, t: str, name: str, dtype: str, ctype: str, charset: Any,
            json_cols: set[tuple[str, str, str]]) -> ColumnInfo:
    c = ColumnInfo(name=name, data_type=dtype.lower(), unsigned="unsigned" in ctype,
                   encoding=_encoding(s, t, name, charset),
                   is_json=dtype.lower() == "json" or (s, t, name) in json_cols)
    if c.data_type in ("enum", "set"):
        vals = tuple(_label(m) for m in re.finditer(r"'((?:[^'\\]|''|\\.)*)'", ctype, flags=re.S))
        if c.data_type == "enum":
            c.enum = vals
        else:
            c.set_ = vals
    if c.is_json:
        c.encoding = "utf-8"
    return c
