"""The MySQL source's errors by type: SourceUnavailable (time fixes it) or SourceMisconfigured (a person must
act), against real throwaway MariaDB servers — and never a raw PyMySQL / socket error."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest

from cdc.changes import SourceError, SourceMisconfigured, SourceUnavailable
from cdc.sources.mysql.config import MySQLSourceConfig
from cdc.sources.mysql.connection import classify
from cdc.sources.mysql.replication import MySQLSource
from erpsync.testing import free_port
from erpsync.testing.mariadb import ThrowawayMariaDB
from tests.fixtures_mariadb import USER_PASSWORD


def lost_by_text(msg: str) -> bool:
    """How `erpsync run` decided "the connection was lost, reconnect" from the text before the types
    (erpsync/cli/run.py): the types must make the same decision."""
    return "cannot connect" in msg or ("was lost" in msg and "server_id" not in msg)


def raised(call: Callable[[], Any]) -> SourceError:
    with pytest.raises(SourceError) as e:
        call()
    err = e.value
    assert type(err) in (SourceUnavailable, SourceMisconfigured), type(err)
    assert isinstance(err, SourceUnavailable) == lost_by_text(str(err)), str(err)
    return err


def every_entry_point(src: MySQLSource, position: str) -> dict[str, Callable[[], Any]]:
    return {"prepare": src.prepare,
            "needs_snapshot": lambda: src.needs_snapshot(position),
            "snapshot": lambda: next(src.snapshot(["t"])),
            "stream": lambda: next(src.stream(position))}


@pytest.fixture
def sources() -> Iterator[Callable[..., MySQLSource]]:
    made: list[MySQLSource] = []

    def make(**kw: Any) -> MySQLSource:
        s = MySQLSource(MySQLSourceConfig(**{"user": "erpsync", "password": USER_PASSWORD, **kw}), ["t"])
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_refused_connection_is_unavailable(sources):
    port = free_port()  # nothing listens there
    src = sources(port=port, database="erp")
    for name, call in every_entry_point(src, "binlog.000001:4").items():
        err = raised(call)
        assert isinstance(err, SourceUnavailable), (name, err)
        assert f"cannot connect to MySQL at 127.0.0.1:{port}" in str(err), (name, err)


def test_bad_password_is_misconfigured(mariadb_server, mariadb_db, sources):
    sql = mariadb_server.connect(mariadb_db)
    with sql.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY)")
        cur.execute("SHOW MASTER STATUS")
        f, p = cur.fetchone()[:2]
    sql.close()
    src = sources(port=mariadb_server.port, database=mariadb_db, password="not-the-password")
    for name, call in every_entry_point(src, f"{f}:{p}").items():
        err = raised(call)
        assert isinstance(err, SourceMisconfigured), (name, err)
        assert "refused the login of user 'erpsync'" in str(err) and "Access denied" in str(err), (name, err)
        assert "not-the-password" not in str(err)


def test_unparsable_position_is_misconfigured(sources):
    src = sources(port=free_port(), database="erp")
    for call in (lambda: src.needs_snapshot("0/16B3748"), lambda: next(src.stream("0/16B3748")),
                 lambda: src.compare("0/16B3748", "binlog.000001:4")):
        assert isinstance(raised(call), SourceMisconfigured)


def _stream_on(server: ThrowawayMariaDB, sources: Callable[..., MySQLSource]) -> Iterator[Any]:
    conn = server.connect()
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS erp")
        cur.execute("CREATE TABLE IF NOT EXISTS erp.t (id INT PRIMARY KEY)")
        cur.execute("SHOW MASTER STATUS")
        f, p = cur.fetchone()[:2]
    conn.close()
    src = sources(port=server.port, user="root", password="", database="erp", server_id=4242)
    it = src.stream(f"{f}:{p}")
    next(it)  # connected and streaming (heartbeats)
    return it


def _drain_until_error(it: Iterator[Any], timeout: float = 30.0) -> SourceError:
    deadline = time.monotonic() + timeout

    def drain() -> None:
        while time.monotonic() < deadline:
            next(it)
        raise AssertionError("the stream kept going")

    return raised(drain)


def test_killed_dump_connection_is_unavailable(mariadb_server, sources):
    it = _stream_on(mariadb_server, sources)
    conn = mariadb_server.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")
        for (tid,) in cur.fetchall():
            cur.execute(f"KILL {tid}")
    conn.close()
    err = _drain_until_error(it)
    assert isinstance(err, SourceUnavailable), err
    assert "the binlog connection to 127.0.0.1:" in str(err) and "was lost" in str(err)


def test_server_shutdown_under_a_stream_is_unavailable(sources):
    """A clean shutdown ends the dump with EOF (it used to escape as a bare ConnectionError)."""
    with ThrowawayMariaDB() as server:
        it = _stream_on(server, sources)
        subprocess.run([server.admin, f"--socket={server.socket}", "-uroot", "shutdown"], capture_output=True,
                       timeout=60)
        err = _drain_until_error(it)
        assert isinstance(err, SourceUnavailable), err
        assert "was lost" in str(err), err


@pytest.mark.parametrize(("exc", "kind", "needle"), [
    (pymysql.err.OperationalError(2013, "Lost connection to server during query"), SourceUnavailable,
     "was lost"),
    (pymysql.err.OperationalError(2006, "MySQL server has gone away"), SourceUnavailable, "gone away"),
    (pymysql.err.OperationalError(1053, "Server shutdown in progress"), SourceUnavailable, "shutdown"),
    (pymysql.err.InterfaceError(0, ""), SourceUnavailable, "was lost"),
    (ConnectionResetError(104, "Connection reset by peer"), SourceUnavailable, "reset by peer"),
    (TimeoutError("timed out"), SourceUnavailable, "timed out"),
    (pymysql.err.OperationalError(1236, "Could not find first log file name in binary log index file"),
     SourceMisconfigured, "erpsync snapshot --reset"),
    (pymysql.err.OperationalError(1236, "A slave with the same server_uuid/server_id as this slave has "
                                        "connected to the master"), SourceMisconfigured, "unique value"),
    (pymysql.err.OperationalError(1227, "Access denied; you need the REPLICATION SLAVE privilege"),
     SourceMisconfigured, "GRANT REPLICATION SLAVE"),
    (pymysql.err.OperationalError(1064, "something else"), SourceMisconfigured, "binlog stream failed"),
])
def test_binlog_stream_errors_by_type(sources, exc, kind, needle):
    src = sources(port=free_port(), database="erp")  # no server: the server_id clash lookup fails quietly
    err = src._stream_error(exc, "binlog.000001:4")
    assert type(err) is kind and needle in str(err), err
    assert isinstance(err, SourceUnavailable) == lost_by_text(str(err)), str(err)


@pytest.mark.parametrize(("exc", "kind"), [
    (pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"), SourceUnavailable),
    (pymysql.err.InterfaceError(0, ""), SourceUnavailable),
    (BrokenPipeError(32, "Broken pipe"), SourceUnavailable),
    (OSError(113, "No route to host"), SourceUnavailable),
    (pymysql.err.OperationalError(1142, "SELECT command denied to user 'x'@'%' for table 't'"),
     SourceMisconfigured),
    (pymysql.err.OperationalError(1130, "Host '10.0.0.5' is not allowed to connect to this MariaDB server"),
     SourceMisconfigured),
])
def test_raw_connection_errors_are_classified(exc, kind):
    err = classify(MySQLSourceConfig(database="erp"), exc)
    assert type(err) is kind, err
    assert isinstance(err, SourceUnavailable) == lost_by_text(str(err)), str(err)
