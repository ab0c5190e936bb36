"""A throwaway PostgreSQL cluster with wal_level=logical, started from the installed server binaries."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

from erpsync.testing import find_binary, free_port


def _bindirs() -> list[str]:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirs.insert(0, out.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return [*dirs, "/usr/local/bin"]


class ThrowawayPostgres:
    """``with ThrowawayPostgres() as pg: pg.dsn()``. As root, runs the server as the ``postgres`` user."""

    def __init__(self, *, wal_level: str = "logical", extra_conf: dict[str, str] | None = None,
                 fast: bool = True) -> None:
        self.wal_level = wal_level
        self.extra_conf = extra_conf or {}
        self.fast = fast
        self.port = 0
        self.dir = ""
        self._user: str | None = None
        bindirs = _bindirs()
        self.initdb = find_binary("initdb", bindirs)
        self.pg_ctl = find_binary("pg_ctl", bindirs)
        if not self.initdb or not self.pg_ctl:
            raise RuntimeError("PostgreSQL server binaries not found: apt-get install -y postgresql")

    def _cmd(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", self._user, "--", *args] if self._user else args

    def start(self) -> ThrowawayPostgres:
        self.dir = tempfile.mkdtemp(prefix="erpsync-pg-")
        if os.geteuid() == 0:
            self._user = "postgres"
            pw = pwd.getpwnam(self._user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = os.path.join(self.dir, "data")
        subprocess.run(self._cmd([self.initdb, "-D", data, "--auth=trust", "-E", "UTF8", "--locale=C",
                                  "-U", "postgres"]), check=True, capture_output=True)
        self.port = free_port()
        conf = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.dir}'",
            "wal_level": self.wal_level,
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "max_connections": "100",
            "wal_sender_timeout": "60s",
        }
        if self.fast:
            # synchronous_commit stays on: the walsender only sends flushed WAL, so "off" adds up to
            # wal_writer_delay (200 ms) of latency; with fsync off a flush costs nothing anyway.
            conf.update({"fsync": "off", "full_page_writes": "off"})
        conf.update(self.extra_conf)
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write("\n".join(f"{k} = {v}" for k, v in conf.items()) + "\n")
        with open(os.path.join(data, "pg_hba.conf"), "a") as f:
            f.write("host replication all 127.0.0.1/32 trust\n")
        subprocess.run(self._cmd([self.pg_ctl, "-D", data, "-w", "-l", os.path.join(self.dir, "log"),
                                  "start"]), check=True, capture_output=True)
        return self

    def restart(self) -> None:
        data = os.path.join(self.dir, "data")
        subprocess.run(self._cmd([self.pg_ctl, "-D", data, "-w", "-m", "fast", "restart", "-l",
                                  os.path.join(self.dir, "log")]), check=True, capture_output=True)

    def stop(self) -> None:
        if not self.dir:
            return
        data = os.path.join(self.dir, "data")
        subprocess.run(self._cmd([self.pg_ctl, "-D", data, "-w", "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = ""

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(self.dsn())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.dsn(name)

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

