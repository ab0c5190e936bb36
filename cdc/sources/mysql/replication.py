"""MySQL / MariaDB binlog source on the same ``Source`` contract as PostgreSQL.

The connection is a plain PyMySQL connection turned into a binlog dump (COM_BINLOG_DUMP, or the GTID
variants; ``connection.py``); events are parsed here rather than by python-mysql-replication because its
pure-Python column decoding (≈25k rows/s) is far below what the server sends (``decoder.py`` generates
one straight-line row decoder per table layout). Positions and GTID state: ``position.py``; the initial
copy: ``snapshot.py``; what information_schema says about the tables: ``schema.py``.

Errors: every ``SourceError`` raised here is a ``SourceMisconfigured`` or a ``SourceUnavailable``, and
connection errors of PyMySQL or the socket never escape ``prepare()``, ``needs_snapshot()``,
``snapshot()`` or ``stream()`` unwrapped (see ``connection.classify``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import pymysql

from cdc.changes import (
    Chunk,
    Commit,
    RowChange,
    SourceError,
    SourceInfo,
    SourceMisconfigured,
    SourceUnavailable,
)
from cdc.sources.mysql.config import MySQLSourceConfig
from cdc.sources.mysql.connection import (
    CONNECTION_ERRORS,
    CONNECTION_LOST,
    ER_MASTER_FATAL_READING_BINLOG,
    IDLE_SECONDS,
    Dump,
    classify,
    connect,
    error_code,
    error_text,
    server_error,
)
from cdc.sources.mysql.decoder import (
    ARTIFICIAL,
    FORMAT_DESCRIPTION,
    HEARTBEAT,
    I32,
    MARIA_COMPRESSED,
    MARIA_GTID,
    MYSQL_GTID,
    QUERY,
    ROTATE,
    ROWS,
    TABLE_MAP,
    U16,
    XID,
    Layout,
    LayoutMismatch,
    TableInfo,
    TableMap,
    is_ddl,
    maria_gtid,
    mysql_gtid,
    parse_table_map,
    query_text,
    rotate,
    rows_header,
    table_map_header,
)
from cdc.sources.mysql.position import (
    BinlogPosition,
    binlog_lag_bytes,
    compare_positions,
    maria_gtid_state,
    maria_gtid_text,
    mysql_gtid_add,
)
from cdc.sources.mysql.schema import load_table_info, quote_ident, server_timezone
from cdc.sources.mysql.snapshot import read_snapshot

MAX_CHUNK = 5_000  # changes per chunk of a large transaction (bounded memory)
XA_PREPARE = 38  # XA_PREPARE_LOG_EVENT: the end of an XA transaction's PREPARE (its rows precede it)
FL_PREPARED_XA = 0x40  # MariaDB GTID flag: the transaction is an XA one ending in XA PREPARE
_XA_START_RE = re.compile(rb"^\s*XA\s+(START|BEGIN)\b", re.I)
_XA_END_RE = re.compile(rb"^\s*XA\s+(COMMIT|ROLLBACK)\s+X'([0-9a-f]*)'\s*,\s*X'([0-9a-f]*)'\s*,\s*(\d+)",
                        re.I)
_XA_ANY_RE = re.compile(rb"^\s*XA\s+(COMMIT|ROLLBACK)\b", re.I)
_IDENT = rb"(?:`(?:[^`]|``)+`|[^\s`.;]+)"
_TRUNCATE_RE = re.compile(rb"^\s*(?:/\*.*?\*/\s*)*TRUNCATE\s+(?:TABLE\s+)?(" + _IDENT + rb")(?:\s*\.\s*("
                          + _IDENT + rb"))?\s*;?\s*$", re.I | re.S)
_GRANT_ERRORS = (1227, 1045, 1044)  # what a missing REPLICATION CLIENT / SLAVE grant looks like


XaKey = tuple[bytes, bytes, int]  # an XA transaction's gtrid, bqual and formatID


def _xa_prepared_xid(pkt: bytes) -> XaKey:
    """The XID of an XA_PREPARE event: one_phase(1) formatID(4) gtrid_length(4) bqual_length(4) data."""
    fmt, glen, blen = I32(pkt, 21)[0], I32(pkt, 25)[0], I32(pkt, 29)[0]
    return pkt[33:33 + glen], pkt[33 + glen:33 + glen + blen], fmt


def _xid_text(key: XaKey) -> str:
    """An XID as XA RECOVER and a person write it: 'gtrid'[,'bqual'[,formatID]] (hex when not text)."""
    def lit(b: bytes) -> str:
        t = b.decode("utf-8", "replace")
        return f"'{t}'" if t.isprintable() and "'" not in t and "\ufffd" not in t else f"X'{b.hex()}'"

    g, b, fmt = key
    return lit(g) + ("" if not b and fmt == 1 else f",{lit(b)}") + ("" if fmt == 1 else f",{fmt}")


def _unquote(ident: bytes) -> str:
    if ident.startswith(b"`"):
        ident = ident[1:-1].replace(b"``", b"`")
    return ident.decode("utf-8", "replace")


def _query_db(pkt: bytes) -> str:
    """The default database of a QUERY event (the session's USE)."""
    dblen = pkt[28]
    svl = U16(pkt, 31)[0]
    return pkt[33 + svl:33 + svl + dblen].decode("utf-8", "replace")


def _truncated_table(q: bytes, default_db: str) -> tuple[str, str] | None:
    """(db, table) of a ``TRUNCATE [TABLE] [db.]table`` statement, None for any other statement."""
    m = _TRUNCATE_RE.match(q)
    if m is None:
        return None
    if m.group(2) is None:
        return default_db, _unquote(m.group(1))
    return _unquote(m.group(1)), _unquote(m.group(2))


class MySQLSource:
    """Binlog reader for the mapped tables. ``columns`` (optional, {table: column names}) limits decoding
    to the columns the mapping uses (key columns are always kept): the rest are skipped, not converted."""

    name = "mysql"

    def __init__(self, config: MySQLSourceConfig, tables: list[str],
                 columns: dict[str, Collection[str]] | None = None) -> None:
        self.cfg = config
        self.tables = [self._qualify(t) for t in tables]
        self.columns = {self._qualify(k): v for k, v in (columns or {}).items()}
        self._ctl: pymysql.connections.Connection | None = None
        self._dump: Dump | None = None
        self._mariadb: bool | None = None
        self._tz: dt.tzinfo | None = None
        self._info: dict[tuple[str, str], TableInfo] = {}
        self._acked: str | None = None
        self._read_pos: BinlogPosition | None = None
        self.last_commit_ts = 0.0
        self._closed = False

    # -- helpers

    def _qualify(self, t: str) -> str:
        return t if "." in t else f"{self.cfg.database}.{t}"

    @property
    def _where(self) -> str:
        return f"MySQL at {self.cfg.host}:{self.cfg.port}"

    def _conn(self) -> pymysql.connections.Connection:
        if self._ctl is None or not self._ctl.open:
            self._ctl = connect(self.cfg)
        return self._ctl

    def _query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        with self._conn().cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def _vars(self, *names: str) -> dict[str, str]:
        ph = ",".join(["%s"] * len(names))
        rows = self._query(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({ph})", names)
        return {k.lower(): str(v) for k, v in rows}

    @contextlib.contextmanager
    def _classified(self) -> Iterator[None]:
        """Connection errors of PyMySQL / the socket leave as SourceUnavailable (or SourceMisconfigured for
        an access denied)."""
        try:
            yield
        except CONNECTION_ERRORS as e:
            raise classify(self.cfg, e) from e

    @property
    def mariadb(self) -> bool:
        if self._mariadb is None:
            if self.cfg.flavor != "auto":
                self._mariadb = self.cfg.flavor == "mariadb"
            else:
                self._mariadb = "mariadb" in str(self._query("SELECT VERSION()")[0][0]).lower()
        return self._mariadb

    def _who(self) -> str:
        user, _, host = str(self._query("SELECT CURRENT_USER()")[0][0]).partition("@")
        return f"'{user}'@'{host}'"

    def server_timezone(self) -> dt.tzinfo:
        """Zone that DATETIME values are wall-clock times in: the server's time zone."""
        if self._tz is None:
            self._tz = server_timezone(self._query)
        return self._tz

    def _load_info(self) -> None:
        """Columns and keys of the mapped tables from information_schema (refreshed after DDL)."""
        if self.tables:
            self._info = load_table_info(self._query, self.tables, self.mariadb)

    def _table(self, qualified: str) -> TableInfo:
        s, t = qualified.split(".", 1)
        if (s, t) not in self._info:
            self._load_info()
        ti = self._info.get((s, t))
        if ti is None:
            raise SourceMisconfigured(f"table {qualified} does not exist (or user {self.cfg.user!r} cannot "
                                      "see it): create it or fix the mapping")
        return ti

    # -- Source protocol: prepare

    def prepare(self) -> None:
        with self._classified():
            self._check_binlog_settings()
            self._check_replication_grants()
            self._check_server_id_free()
            self._check_tables()
            self._load_info()
            for t in self.tables:
                self._table(t)

    def _check_binlog_settings(self) -> None:
        v = self._vars("log_bin", "binlog_format", "binlog_row_image", "server_id", "gtid_mode")
        where = self._where
        if v.get("log_bin", "OFF").upper() != "ON":
            raise SourceMisconfigured(f"binary logging is off on {where}: add log_bin=mysql-bin and a unique "
                                      "server_id to the [mysqld] section of my.cnf and restart the server "
                                      "(log_bin cannot be turned on at runtime)")
        if v.get("binlog_format", "").upper() != "ROW":
            raise SourceMisconfigured(f"binlog_format is {v.get('binlog_format')} on {where}, row events are "
                                      "needed: SET GLOBAL binlog_format = 'ROW' and put binlog_format=ROW in "
                                      "my.cnf (sessions already open keep the old format until they "
                                      "reconnect)")
        if v.get("binlog_row_image", "FULL").upper() != "FULL":
            raise SourceMisconfigured(f"binlog_row_image is {v.get('binlog_row_image')} on {where}, full "
                                      "before/after images are needed: SET GLOBAL binlog_row_image = 'FULL' "
                                      "and put binlog_row_image=FULL in my.cnf")
        if int(v.get("server_id", "0")) == self.cfg.server_id:
            raise SourceMisconfigured(f"source.server_id {self.cfg.server_id} is the server's own server_id: "
                                      "set source.server_id to a value no server or replica of this ERP uses")

    def _check_replication_grants(self) -> None:
        missing = []
        try:
            self._query("SHOW BINARY LOGS")
        except pymysql.err.MySQLError as e:
            if e.args[0] not in _GRANT_ERRORS:
                raise
            missing.append("REPLICATION CLIENT")
        try:
            self._trial_dump(None)
        except pymysql.err.MySQLError as e:
            if e.args[0] not in _GRANT_ERRORS:
                raise
            missing.append("REPLICATION SLAVE")
        if missing:
            raise SourceMisconfigured(f"user {self._who()} lacks {' and '.join(missing)} on {self._where}: "
                                      f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {self._who()}")

    def _check_server_id_free(self) -> None:
        try:
            hosts = self._query("SHOW SLAVE HOSTS")
        except pymysql.err.MySQLError:
            hosts = []  # needs REPLICATION MASTER ADMIN on MariaDB ≥ 10.5; the clash then shows at runtime
        for h in hosts:
            if int(h[0]) == self.cfg.server_id:
                raise SourceMisconfigured(f"another replica (host {h[1]!r}) is connected to {self._where} "
                                          f"with server_id {self.cfg.server_id}: the server would drop one "
                                          "of the two; set source.server_id to a unique value")

    def _check_tables(self) -> None:
        for t in self.tables:
            db, table = t.split(".", 1)
            try:
                self._query(f"SELECT 1 FROM {quote_ident(db)}.{quote_ident(table)} LIMIT 0")
            except pymysql.err.MySQLError as e:
                if e.args[0] in (1142, 1143, 1044):
                    raise SourceMisconfigured(f"user {self._who()} cannot read {t}: GRANT SELECT ON `{db}`.* "
                                              f"TO {self._who()}") from None
                if e.args[0] in (1146, 1049):
                    raise SourceMisconfigured(f"table {t} does not exist: create it or fix the mapping"
                                              ) from None
                raise

    def _trial_dump(self, pos: BinlogPosition | None) -> None:
        """Open a non-blocking dump at ``pos`` (default: the current end) and read until the first real
        event: a purged position or a missing REPLICATION SLAVE grant fails here, before any streaming."""
        if pos is None:
            rows = self._query("SHOW MASTER STATUS")
            pos = BinlogPosition(rows[0][0], int(rows[0][1])) if rows else BinlogPosition("", 4)
        d = Dump(self.cfg, self.mariadb, pos, self.cfg.use_gtid, blocking=False)
        try:
            for _ in range(8):
                pkt = d.read()
                if pkt[0] == 0xFF:
                    raise server_error(pkt)
                if pkt[0] == 0xFE:
                    return
                real = len(pkt) > 20 and not U16(pkt, 18)[0] & ARTIFICIAL
                if real and pkt[5] not in (ROTATE, FORMAT_DESCRIPTION):
                    return
        finally:
            d.close()

    def _purged_error(self, stored: str, detail: str) -> SourceMisconfigured:
        return SourceMisconfigured(
            f"the stored binlog position {stored} is no longer on the server: its binary logs were purged "
            f"({detail}). Changes made since then cannot be streamed; re-snapshot with `erpsync snapshot "
            "--reset` and keep binlogs longer (binlog_expire_logs_seconds ≥ 3 days)")

    def needs_snapshot(self, stored_position: str | None) -> bool:
        if not stored_position:
            return True
        pos = BinlogPosition.parse(stored_position)
        with self._classified():
            try:
                self._trial_dump(pos)
            except pymysql.err.MySQLError as e:
                if e.args[0] == ER_MASTER_FATAL_READING_BINLOG:
                    raise self._purged_error(stored_position, str(e.args[1])) from None
                raise
        return False

    # -- Source protocol: snapshot

    def snapshot(self, tables: list[str]) -> Iterator[Chunk]:
        with self._classified():
            tz = self.server_timezone()
            self._load_info()
            infos = [self._table(self._qualify(t)) for t in tables]
            yield from read_snapshot(self.cfg, infos, self.columns, tz, self.mariadb, self._who)

    # -- Source protocol: stream

    def stream(self, from_position: str) -> Iterator[Chunk]:
        try:
            yield from self._open_stream(from_position).chunks()
        except CONNECTION_ERRORS as e:
            if self._closed:
                return
            raise classify(self.cfg, e) from e

    def _open_stream(self, from_position: str) -> _Reader:
        start = BinlogPosition.parse(from_position)
        tz = self.server_timezone()
        self._load_info()
        use_gtid = self.cfg.use_gtid and bool(start.gtid)
        try:
            self._dump = dump = Dump(self.cfg, self.mariadb, start, self.cfg.use_gtid, blocking=True)
        except (pymysql.err.MySQLError, OSError) as e:
            raise self._stream_error(e, from_position) from None
        if self.mariadb and not start.gtid:
            # a bare file:offset: seed the full GTID state there so the positions we emit carry every domain
            try:
                got = self._query("SELECT BINLOG_GTID_POS(%s, %s)", (start.file, start.offset))
                start.gtid = str(got[0][0] or "") if got else ""
            except pymysql.err.MySQLError:
                pass
        self._read_pos = BinlogPosition(start.file, start.offset, start.gtid)
        return _Reader(self, dump, start, use_gtid, tz, from_position)

    def _layout(self, db: str, table: str, tm: TableMap, tz: dt.tzinfo) -> Layout:
        """The decoding layout of a mapped table's TABLE_MAP."""
        try:
            return Layout(self._table(f"{db}.{table}"), tm.types, tm.metas, tm.names, tm.signed,
                          self.columns.get(f"{db}.{table}"), tz)
        except LayoutMismatch:
            self._load_info()  # maybe a DDL we have not seen yet; retry with fresh columns
            try:
                return Layout(self._table(f"{db}.{table}"), tm.types, tm.metas, tm.names, tm.signed,
                              self.columns.get(f"{db}.{table}"), tz)
            except LayoutMismatch as e:
                raise SourceMisconfigured(
                    f"cannot decode {db}.{table} at this binlog position: {e}. The table was altered "
                    "after these rows were written and the server does not log column names: SET GLOBAL "
                    "binlog_row_metadata = 'FULL' (and put it in my.cnf) so future changes can always be "
                    "decoded, and re-snapshot with `erpsync snapshot --reset`") from None

    def _stream_error(self, e: BaseException, from_position: str) -> SourceError:
        """What a failed binlog dump means: unavailable only when the connection itself went away."""
        code = error_code(e)
        msg = error_text(e)
        low = msg.lower()
        if code == ER_MASTER_FATAL_READING_BINLOG and ("purged" in low or "not find" in low):
            return self._purged_error(from_position, msg)
        if code == ER_MASTER_FATAL_READING_BINLOG and ("same server" in low or "server_id" in low):
            return SourceMisconfigured(f"another replica uses server_id {self.cfg.server_id}: {msg} — set "
                                       "source.server_id to a unique value")
        if code in (1227, 1045):
            return SourceMisconfigured(f"binlog access denied ({msg}): GRANT REPLICATION SLAVE, REPLICATION "
                                       f"CLIENT ON *.* TO '{self.cfg.user}'@'%'")
        if code in CONNECTION_LOST or isinstance(e, OSError | pymysql.err.InterfaceError):
            lost = f"the binlog connection to {self.cfg.host}:{self.cfg.port} was lost ({msg})"
            if self._server_id_taken():
                return SourceMisconfigured(f"{lost}; another replica now uses server_id "
                                           f"{self.cfg.server_id}: set source.server_id to a unique value")
            return SourceUnavailable(lost)
        return SourceMisconfigured(f"binlog stream failed: {msg}")

    def _server_id_taken(self) -> bool:
        try:
            return any(int(h[0]) == self.cfg.server_id for h in self._query("SHOW SLAVE HOSTS"))
        except Exception:
            return False

    # -- Source protocol: the rest

    def ack(self, position: str) -> None:
        # MySQL keeps binlogs by time, not by reader: nothing to confirm, but remember it for status
        self._acked = position

    @property
    def acked(self) -> str | None:
        return self._acked

    def lag(self) -> dict[str, float]:
        pos = self._read_pos
        if pos is None:
            return {"bytes": 0.0, "seconds": 0.0}
        logs = [(str(r[0]), int(r[1])) for r in self._query("SHOW BINARY LOGS")]
        got = binlog_lag_bytes(logs, pos)
        if got is not None:
            behind = got[0]
        else:  # our file is not on the server (any more): every later file is still ahead of us
            key = pos.order_key()[:2]
            behind = sum(size for f, size in logs if BinlogPosition(f, 0).order_key()[:2] > key)
        secs = max(0.0, time.time() - self.last_commit_ts) if behind and self.last_commit_ts else 0.0
        return {"bytes": float(behind), "seconds": secs}

    def compare(self, a: str, b: str) -> int:
        return compare_positions(a, b)

    def close(self) -> None:
        self._closed = True
        if self._dump is not None:
            self._dump.close()
            self._dump = None
        if self._ctl is not None:
            with contextlib.suppress(Exception):
                self._ctl.close()
            self._ctl = None


class _Reader:
    """One ``stream()``: the binlog position reached and the transaction being read, event by event.

    ``chunks()`` is the loop; each other event kind has a handler that updates the state and may return a
    chunk to hand out."""

    def __init__(self, src: MySQLSource, dump: Dump, start: BinlogPosition, use_gtid: bool, tz: dt.tzinfo,
                 from_position: str) -> None:
        self.src = src
        self.dump = dump
        self.from_position = from_position
        self.tz = tz
        self.mariadb = src.mariadb
        self.use_gtid = use_gtid
        self.wanted_tables = {tuple(t.split(".", 1)) for t in src.tables}
        self.file, self.offset = start.file, start.offset
        self.maria_state = maria_gtid_state(start.gtid) if self.mariadb and start.gtid else {}
        self.mysql_gtid = start.gtid if not self.mariadb else ""
        self.start_state = dict(self.maria_state)
        self.start_key = start.order_key()
        self.layouts: dict[int, Layout | None] = {}  # table_id → layout (None: not a mapped table)
        self.layout_cache: dict[bytes, Layout] = {}
        self.changes: list[RowChange] = []
        self.sources: list[SourceInfo] = []  # SourceInfo objects of this transaction, stamped at commit
        self.txid: str | None = None
        self.skip = False  # this transaction is one the start position already holds
        self.in_txn = False
        self.standalone = False
        self.xa = False  # inside an XA transaction: its changes wait for XA COMMIT, never split out early
        self.prepared: dict[XaKey, tuple[list[RowChange], list[SourceInfo]]] = {}  # by XID, until COMMIT
        self.full_images: set[tuple[Layout, bytes, bytes]] = set()  # column-present bitmaps checked
        self.last_yield = time.monotonic()
        self.handlers: dict[int, Callable[[bytes, int], Chunk | None]] = {
            TABLE_MAP: self._table_map, QUERY: self._query, XID: self._xid, MARIA_GTID: self._maria_gtid,
            MYSQL_GTID: self._mysql_gtid, ROTATE: self._rotate, HEARTBEAT: self._heartbeat,
            XA_PREPARE: self._xa_prepare,
            **dict.fromkeys(MARIA_COMPRESSED, self._compressed)}

    def chunks(self) -> Iterator[Chunk]:
        ck = self.dump.checksum
        handlers = self.handlers
        src = self.src
        read = self.dump.read
        while not src._closed:
            try:
                pkt = read()
            except (pymysql.err.MySQLError, OSError) as e:
                if src._closed:
                    return
                raise src._stream_error(e, self.from_position) from None
            if pkt[0] != 0:
                self._not_an_event(pkt)
                return
            etype = pkt[5]
            end = len(pkt) - ck
            if etype in ROWS:
                if not self.skip and self._rows(pkt, etype, end) and not self.xa:
                    yield from self._split()
                continue
            log_pos = I32(pkt, 14)[0] & 0xFFFFFFFF
            if log_pos and not U16(pkt, 18)[0] & ARTIFICIAL:
                self.offset = log_pos
            handler = handlers.get(etype)
            if handler is not None:
                chunk = handler(pkt, end)
                if chunk is not None:
                    yield chunk
                    self.last_yield = time.monotonic()

    def _not_an_event(self, pkt: bytes) -> None:
        """An error packet or EOF instead of the next event: raises, unless the source was closed."""
        if pkt[0] == 0xFF:
            raise self.src._stream_error(server_error(pkt), self.from_position)
        if self.src._closed:
            return
        # The stream's dump is blocking: the server sends EOF only when it shuts down. Ending the
        # stream here made `erpsync run` exit 0 ("stopped") on a MariaDB restart, which a
        # supervisor with Restart=on-failure does not restart. A lost connection: reconnect.
        cfg = self.src.cfg
        raise SourceUnavailable(f"the binlog connection to {cfg.host}:{cfg.port} was lost: the server "
                                "ended the binlog dump (shutdown or restart)")

    def _rows(self, pkt: bytes, etype: int, end: int) -> bool:
        """Decode a rows event of a mapped table; True when more than a chunk's worth of changes waits."""
        tid, op, present, present_after, p = rows_header(pkt, etype)
        layout = self.layouts.get(tid)
        if layout is None:
            return False
        if (layout, present, present_after) not in self.full_images:
            self._check_full_image(layout, op, present, present_after)
            self.full_images.add((layout, present, present_after))
        # a per-transaction copy, so stamping this commit's position leaves other txns alone
        si = layout.info.source
        si = SourceInfo("mysql", si.db, si.schema, si.table, "", self.txid, 0)
        self.sources.append(si)
        layout.decoder(op, present, present_after)(pkt, p, end, self.changes.append, si, layout.info.key)
        return len(self.changes) > MAX_CHUNK

    def _check_full_image(self, layout: Layout, op: str, present: bytes, present_after: bytes) -> None:
        """A rows event must carry every column the mapping reads in each image (binlog_row_image=FULL): a
        MINIMAL or NOBLOB image, set by a session or globally after prepare(), stops the stream."""
        images = [("before" if op in "ud" else "after", present)] + ([("after", present_after)] if op == "u"
                                                                     else [])
        gaps = []
        for image, bits in images:
            missing = [c.name for i, c in enumerate(layout.columns) if not bits[i >> 3] >> (i & 7) & 1
                       and (layout.wanted is None or c.name in layout.wanted)]
            if missing:
                gaps.append(f"{image} image without {', '.join(missing)}")
        if gaps:
            kind = {"c": "insert", "u": "update", "d": "delete"}[op]
            raise SourceMisconfigured(
                f"the binlog holds a partial row image of {layout.info.db}.{layout.info.table} at "
                f"{self.file}:{self.offset} ({kind}, {'; '.join(gaps)}): the session that wrote it, or the "
                "server, uses binlog_row_image MINIMAL or NOBLOB, and full images are needed. SET GLOBAL "
                "binlog_row_image = 'FULL', put binlog_row_image=FULL in my.cnf and remove any SET SESSION "
                "binlog_row_image from the ERP's connections (a session keeps its value until it "
                "reconnects); these changes cannot be read in full: re-snapshot with `erpsync snapshot "
                "--reset`")

    def _split(self) -> Iterator[Chunk]:
        """A rows event holds many rows: hand out exactly MAX_CHUNK changes at a time, keep the rest."""
        changes = self.changes
        while len(changes) > MAX_CHUNK:
            yield Chunk(changes=changes[:MAX_CHUNK])
            changes = changes[MAX_CHUNK:]
        self.changes = changes
        self.last_yield = time.monotonic()

    def _table_map(self, pkt: bytes, end: int) -> None:
        tid, db, table, p = table_map_header(pkt)
        if (db, table) not in self.wanted_tables:
            self.layouts[tid] = None
            return
        body = pkt[28:end]
        lay = self.layout_cache.get(body)
        if lay is None:
            lay = self.layout_cache[body] = self.src._layout(db, table, parse_table_map(pkt, p, end), self.tz)
        self.layouts[tid] = lay

    def _query(self, pkt: bytes, end: int) -> Chunk | None:
        q = query_text(pkt, end)
        if q == b"BEGIN":
            self.in_txn = True
            return None
        if _XA_START_RE.match(q):
            self.xa = True
            return None
        if _XA_ANY_RE.match(q):
            return self._xa_end(pkt, q)
        if is_ddl(q):
            # columns may have changed: re-read information_schema before the next TABLE_MAP
            self.layout_cache.clear()
            self.layouts.clear()
            self.src._load_info()
            self._truncate(pkt, q)
        if self.in_txn and not self.standalone and q != b"COMMIT":
            return None  # SAVEPOINT and the like inside a transaction
        return self._commit(pkt)

    def _truncate(self, pkt: bytes, q: bytes) -> None:
        """TRUNCATE of a mapped table: one ``t`` change, as the PostgreSQL source emits it."""
        got = _truncated_table(q, _query_db(pkt))
        if got is None or got not in self.wanted_tables:
            return
        info = self.src._table(f"{got[0]}.{got[1]}")
        si = SourceInfo("mysql", info.db, info.db, info.table, "", self.txid, 0)
        self.sources.append(si)
        self.changes.append(RowChange("t", si, None, None, info.key))

    def _xa_prepare(self, pkt: bytes, end: int) -> None:
        """XA PREPARE: the transaction's changes wait under its XID for XA COMMIT (or are dropped at XA
        ROLLBACK). No position is handed out here, so a reader restarted before the COMMIT reads the
        PREPARE again. One held by the start position is not kept: its COMMIT then stops the stream."""
        held = self.skip or (not self.use_gtid and self._position().order_key() <= self.start_key)
        if not held:
            self.prepared[_xa_prepared_xid(pkt)] = (self.changes, self.sources)
        self.changes, self.sources = [], []
        self.in_txn = self.standalone = self.xa = self.skip = False
        self.txid = None

    def _xa_end(self, pkt: bytes, q: bytes) -> Chunk | None:
        """XA COMMIT / XA ROLLBACK of a prepared transaction, possibly from another connection."""
        m = _XA_END_RE.match(q)
        if m is None:
            raise SourceMisconfigured(f"cannot read the XID of {q[:200].decode('utf-8', 'replace')!r} at "
                                      f"{self.file}:{self.offset}")
        key = (bytes.fromhex(m.group(2).decode()), bytes.fromhex(m.group(3).decode()), int(m.group(4)))
        got = self.prepared.pop(key, None)
        held = self.skip or (not self.use_gtid and self._position().order_key() <= self.start_key)
        if m.group(1).upper() == b"COMMIT" and not held:
            if got is None:
                raise SourceMisconfigured(
                    f"XA COMMIT {_xid_text(key)} at {self.file}:{self.offset} commits a transaction whose XA "
                    f"PREPARE lies before the position this stream started from ({self.from_position}): its "
                    "changes are not in the stream from here, and guessing them would be wrong. Re-snapshot "
                    "with `erpsync snapshot --reset` (the snapshot holds the committed rows)")
            self.changes = got[0] + self.changes
            self.sources = got[1] + self.sources
        return self._commit(pkt)

    def _xid(self, pkt: bytes, end: int) -> Chunk | None:
        return self._commit(pkt)

    def _position(self) -> BinlogPosition:
        return BinlogPosition(self.file, self.offset,
                              maria_gtid_text(self.maria_state) if self.mariadb else self.mysql_gtid)

    def _commit(self, pkt: bytes) -> Chunk | None:
        """End of a transaction: its changes with their commit position (or, while idle, a bare position
        now and then); nothing for a transaction the start position already holds."""
        self.in_txn = self.standalone = self.xa = False
        ts = float(I32(pkt, 1)[0] & 0xFFFFFFFF)
        pos = self._position()
        self.src._read_pos = pos
        if self.skip or (not self.use_gtid and pos.order_key() <= self.start_key):
            self.skip = False
            self.changes.clear()
            self.sources.clear()
            return None
        self.src.last_commit_ts = ts
        chunk = None
        if self.changes or time.monotonic() - self.last_yield >= IDLE_SECONDS:
            ptext = str(pos)
            ts_ms = int(ts * 1000)
            for s in self.sources:
                s.position, s.ts_ms = ptext, ts_ms
            chunk = Chunk(changes=self.changes, commit=Commit(position=ptext, ts=ts, txid=self.txid))
            self.changes = []
        self.sources.clear()
        self.txid = None
        return chunk

    def _maria_gtid(self, pkt: bytes, end: int) -> None:
        domain, sid, seq, gflags = maria_gtid(pkt)
        self.txid = f"{domain}-{sid}-{seq}"
        # in GTID mode the server already starts after our state; this guards file/offset resume too
        prev = self.start_state.get(domain)
        self.skip = self.use_gtid and prev is not None and prev[0] == sid and seq <= prev[1]
        self.maria_state[domain] = (sid, seq)
        self.standalone = bool(gflags & 1)
        self.xa = bool(gflags & FL_PREPARED_XA)  # MySQL logs an "XA START" query instead
        self.in_txn = not self.standalone

    def _mysql_gtid(self, pkt: bytes, end: int) -> None:
        uuid, gno = mysql_gtid(pkt)
        self.txid = f"{uuid}:{gno}"
        self.mysql_gtid = mysql_gtid_add(self.mysql_gtid, uuid, gno)

    def _rotate(self, pkt: bytes, end: int) -> None:
        self.file, self.offset = rotate(pkt, end)
        if not U16(pkt, 18)[0] & ARTIFICIAL and I32(pkt, 1)[0]:
            self.layouts.clear()  # table ids are per server run; a rotate may mean a restart

    def _heartbeat(self, pkt: bytes, end: int) -> Chunk | None:
        return None if self.changes else Chunk()

    def _compressed(self, pkt: bytes, end: int) -> None:
        raise SourceMisconfigured("the server writes compressed binlog events (log_bin_compress=ON), which "
                                  "this source cannot read: SET GLOBAL log_bin_compress = OFF and remove it "
                                  "from my.cnf")
