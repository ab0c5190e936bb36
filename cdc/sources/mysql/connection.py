"""Connections to the MySQL / MariaDB server: plain PyMySQL connections, the binlog dump, and the
classification of what goes wrong on them.

Every ``SourceError`` of the MySQL source is a ``SourceUnavailable`` (time fixes it: refused, lost, timed
out, server shutting down) or a ``SourceMisconfigured`` (a person must act). The messages of the
unavailable ones say "cannot connect" or "was lost", and no misconfigured one does: that is how callers
that still read the text decide, so both agree.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import pymysql

from cdc.changes import SourceError, SourceMisconfigured, SourceUnavailable
from cdc.sources.admin import is_tls_failure
from cdc.sources.mysql.config import MySQLSourceConfig
from cdc.sources.mysql.position import BinlogPosition

IDLE_SECONDS = 0.25  # server heartbeat period: an empty chunk at least this often while idle
ER_MASTER_FATAL_READING_BINLOG = 1236
# the server refused the login (1045 wrong password, 1698 no password / unix_socket user)
# 1130: no account may connect from this host — a GRANT for the host is needed, time does not fix it
LOGIN_REFUSED = frozenset({1045, 1698, 1130})
# a missing grant: database, table, column, "you need (at least one of) the X privilege(s)"
ACCESS_DENIED = LOGIN_REFUSED | {1044, 1142, 1143, 1227}
# the connection died: lost during a query, gone away, killed, server shutting down
CONNECTION_LOST = frozenset({2013, 2006, 1927, 1053})
# what escapes PyMySQL and the socket when the connection, not the request, failed
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (pymysql.err.OperationalError,
                                                      pymysql.err.InterfaceError, OSError)


def error_code(e: BaseException) -> int:
    return e.args[0] if isinstance(e, pymysql.err.MySQLError) and e.args and isinstance(e.args[0], int) else 0


def error_text(e: BaseException) -> str:
    return str(e.args[-1]) if e.args else (str(e) or type(e).__name__)


def classify(cfg: MySQLSourceConfig, e: BaseException) -> SourceError:
    """A raw PyMySQL / socket error from a control connection, as the SourceError it means."""
    if isinstance(e, SourceError):
        return e
    where = f"{cfg.host}:{cfg.port}"
    msg = error_text(e)
    if error_code(e) in ACCESS_DENIED:
        return SourceMisconfigured(f"MySQL at {where} denied user {cfg.user!r}: {msg} — grant what it "
                                   "names (`erpsync doctor` lists the grants the source needs)")
    return SourceUnavailable(f"the connection to MySQL at {where} was lost ({type(e).__name__}: {msg})")


def connect(cfg: MySQLSourceConfig, **kw: Any) -> pymysql.connections.Connection:
    try:
        return pymysql.connect(host=cfg.host, port=cfg.port, user=cfg.user,
                               password=cfg.password.get_secret_value(), charset="utf8mb4", autocommit=True,
                               connect_timeout=10, **cfg.ssl_kwargs(), **kw)
    except CONNECTION_ERRORS as e:
        if cfg.tls is not None and is_tls_failure(error_text(e)):
            raise SourceMisconfigured(f"MySQL at {cfg.host}:{cfg.port}: the TLS handshake failed "
                                      f"({error_text(e)}) — check source.tls.ca_file and the server's "
                                      "certificate") from None
        if error_code(e) in LOGIN_REFUSED:
            raise SourceMisconfigured(f"MySQL at {cfg.host}:{cfg.port} refused the login of user "
                                      f"{cfg.user!r}: {e.args[1]} — check source.user / source.password"
                                      ) from None
        raise SourceUnavailable(f"cannot connect to MySQL at {cfg.host}:{cfg.port}: {error_text(e)}"
                                ) from None


def server_error(pkt: bytes) -> pymysql.err.OperationalError:
    code = struct.unpack_from("<H", pkt, 1)[0]
    msg = pkt[9:] if pkt[3:4] == b"#" else pkt[3:]
    return pymysql.err.OperationalError(code, msg.decode("utf-8", "replace"))


class Dump:
    """A PyMySQL connection switched into binlog dump mode; ``read()`` returns raw event packets."""

    def __init__(self, cfg: MySQLSourceConfig, mariadb: bool, pos: BinlogPosition, use_gtid: bool,
                 blocking: bool = True) -> None:
        self.conn = connect(cfg, read_timeout=max(30.0, IDLE_SECONDS * 8))
        self.checksum = 0
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT @@global.binlog_checksum")
                row = cur.fetchone()
                self.checksum = 4 if row and str(row[0]).upper() != "NONE" else 0
                cur.execute("SET @master_binlog_checksum = @@global.binlog_checksum")
                cur.execute("SET @master_heartbeat_period = %s", (int(IDLE_SECONDS * 1e9),))
                cur.execute("SET @mariadb_slave_capability = 4")  # send GTID events, not dummies
                if mariadb and use_gtid and pos.gtid:
                    cur.execute("SET @slave_connect_state = %s", (pos.gtid,))
                    cur.execute("SET @slave_gtid_strict_mode = 0")
                    cur.execute("SET @slave_gtid_ignore_duplicates = 0")
            if blocking:
                self._register(cfg)
            flags = 0 if blocking else 1  # BINLOG_DUMP_NON_BLOCK: EOF at the end instead of waiting
            # a probe uses server_id 0 (like mariadb-binlog): the server would otherwise drop a running
            # reader with our server_id
            sid = cfg.server_id if blocking else 0
            if use_gtid and pos.gtid and not mariadb:
                from pymysqlreplication.gtid import GtidSet

                gs = GtidSet(pos.gtid)
                body = (struct.pack("<HII", flags | 0x04, sid, 3) + b"\0\0\0" + struct.pack("<Q", 4)
                        + struct.pack("<I", gs.encoded_length) + gs.encoded())
                self._send(0x1E, body)
            else:
                name = b"" if (mariadb and use_gtid and pos.gtid) else pos.file.encode()
                self._send(0x12, struct.pack("<IHI", 4 if not name else pos.offset, flags, sid) + name)
        except BaseException:
            self.close()
            raise

    def _send(self, cmd: int, body: bytes) -> None:
        data = bytes([cmd]) + body
        self.conn._write_bytes(struct.pack("<I", len(data))[:3] + b"\0" + data)

    def _register(self, cfg: MySQLSourceConfig) -> None:
        # COM_REGISTER_SLAVE makes us visible in SHOW SLAVE HOSTS, which is how a server_id clash is found
        host = b"erpsync"
        user = cfg.user.encode()[:255]
        body = (struct.pack("<I", cfg.server_id) + bytes([len(host)]) + host + bytes([len(user)]) + user
                + b"\0"
                + struct.pack("<HII", 0, 0, 0))
        self._send(0x15, body)
        pkt = self.read()
        if pkt[0] == 0xFF:
            raise server_error(pkt)

    def read(self) -> bytes:
        rf = self.conn._rfile
        h = rf.read(4)
        if len(h) < 4:
            raise pymysql.err.OperationalError(2013, "Lost connection to server during binlog dump")
        n = h[0] | h[1] << 8 | h[2] << 16
        data = rf.read(n)
        while n == 0xFFFFFF:  # events over 16 MB arrive split over several packets
            h = rf.read(4)
            n = h[0] | h[1] << 8 | h[2] << 16
            data += rf.read(n)
        return data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
