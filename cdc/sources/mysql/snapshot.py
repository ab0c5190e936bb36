"""The consistent snapshot: every mapped row as of one binlog position, with values equal to what the binlog
decoder produces for the same row (so a snapshot row and a streamed row compare equal)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import pymysql

from cdc.changes import Chunk, Commit, RowChange, SourceMisconfigured
from cdc.sources.mysql.config import MySQLSourceConfig
from cdc.sources.mysql.connection import connect
from cdc.sources.mysql.decoder import ColumnInfo, TableInfo
from cdc.sources.mysql.position import BinlogPosition
from cdc.sources.mysql.schema import quote_ident


def snapshot_position(conn: pymysql.connections.Connection, mariadb: bool, use_gtid: bool,
                      who: Callable[[], str]) -> BinlogPosition:
    """Start a consistent-snapshot transaction on ``conn`` and return the binlog position it is at."""
    with conn.cursor() as cur:
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if mariadb:
            # MariaDB reports the binlog position matching a consistent snapshot: no lock at all
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
            st = {k.lower(): v for k, v in cur.fetchall()}
            pos = BinlogPosition(st["binlog_snapshot_file"], int(st["binlog_snapshot_position"]))
            if use_gtid:
                cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (pos.file, pos.offset))
                pos.gtid = (cur.fetchone() or ("",))[0] or ""
            return pos
        # MySQL: a brief global read lock only while the snapshot starts and the position is read
        try:
            cur.execute("FLUSH TABLES WITH READ LOCK")
        except pymysql.err.MySQLError as e:
            raise SourceMisconfigured("cannot take the brief read lock for a consistent snapshot "
                                      f"({e.args[-1]}): "
                                      f"GRANT RELOAD ON *.* TO {who()}") from None
        try:
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            try:
                cur.execute("SHOW BINARY LOG STATUS")
            except pymysql.err.MySQLError:
                cur.execute("SHOW MASTER STATUS")
            row = cur.fetchone()
        finally:
            cur.execute("UNLOCK TABLES")
        has_gtid = row and len(row) > 4 and row[4] and use_gtid
        gtid = str(row[4]).replace("\n", "") if has_gtid else ""
        return BinlogPosition(row[0], int(row[1]), gtid)


def snapshot_converter(c: ColumnInfo, tz: dt.tzinfo) -> Any:
    """Per-column conversion of PyMySQL's values into what the binlog decoder produces for the same value."""
    t = c.data_type
    if c.is_json:
        return lambda v: json.loads(v) if isinstance(v, str | bytes) else v
    if t == "datetime":
        return lambda v: v.replace(tzinfo=tz) if isinstance(v, dt.datetime) else None
    if t == "timestamp":
        return lambda v: v.replace(tzinfo=dt.UTC) if isinstance(v, dt.datetime) else None
    if t == "date":
        return lambda v: v if isinstance(v, dt.date) else None
    if t == "bit":
        return lambda v: int.from_bytes(v, "big") if isinstance(v, bytes) else v
    if t in ("float", "double"):
        return float
    if t in ("uuid", "inet4", "inet6"):
        return lambda v: v.decode("ascii") if isinstance(v, bytes) else v
    if c.encoding is None and t in ("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"):
        return lambda v: bytes(v)
    return None


def read_snapshot(cfg: MySQLSourceConfig, infos: list[TableInfo], columns: dict[str, Collection[str]],
                  tz: dt.tzinfo, mariadb: bool, who: Callable[[], str]) -> Iterator[Chunk]:
    """Op "r" chunks of at most ``cfg.snapshot_chunk_rows`` rows of ``infos`` (only the ``columns`` the
    mapping uses, plus keys), the last one carrying the position to stream from."""
    conn = connect(cfg, cursorclass=pymysql.cursors.SSCursor)
    try:
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")  # TIMESTAMP values come back in UTC, as in the binlog
        pos = snapshot_position(conn, mariadb, cfg.use_gtid, who)
        pending: list[RowChange] = []
        n = cfg.snapshot_chunk_rows
        for ti in infos:
            for rows in _table_rows(conn, ti, columns.get(f"{ti.db}.{ti.table}"), tz, n):
                pending.extend(rows)
                while len(pending) >= n:  # rows of several tables share chunks of at most n
                    yield Chunk(changes=pending[:n], snapshot=True)
                    pending = pending[n:]
        conn.commit()
        yield Chunk(changes=pending, commit=Commit(position=str(pos), ts=time.time()), snapshot=True)
    finally:
        conn.close()


def _table_rows(conn: pymysql.connections.Connection, ti: TableInfo, wanted: Collection[str] | None,
                tz: dt.tzinfo, batch: int) -> Iterator[list[RowChange]]:
    cols = [c for c in ti.columns if wanted is None or c.name in wanted or c.name in ti.key]
    convs = [snapshot_converter(c, tz) for c in cols]
    names = [c.name for c in cols]
    # FLOAT as its exact stored float32 (as the binlog has it), not the 6 digits the server prints
    sel = ", ".join(f"CAST({quote_ident(c.name)} AS DOUBLE)" if c.data_type == "float"
                    else quote_ident(c.name) for c in cols)
    with conn.cursor() as cur:
        cur.execute(f"SELECT {sel} FROM {quote_ident(ti.db)}.{quote_ident(ti.table)}")
        while True:
            rows = cur.fetchmany(batch)
            if not rows:
                return
            yield [RowChange("r", ti.source, None,
                             {n: (f(x) if f is not None and x is not None else x)
                              for n, f, x in zip(names, convs, r, strict=True)}, ti.key)
                   for r in rows]
