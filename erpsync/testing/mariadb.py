"""A throwaway MariaDB (mariadb-install-db into a temp dir, free port, binlog on) for tests and benches."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from typing import Any

from erpsync.testing import find_binary, free_port, wait_for

_DIRS = ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/mysql/bin"]


class ThrowawayMariaDB:
    """``with ThrowawayMariaDB() as db: pymysql.connect(**db.connect_args())``.

    Defaults are what a CDC source needs (log-bin, ROW, FULL row image). ``log_bin=False``,
    ``binlog_format="STATEMENT"`` or ``binlog_row_image="MINIMAL"`` start a misconfigured server for the
    doctor / error-message tests. As root, the server runs as the ``mysql`` user (it refuses root)."""

    def __init__(self, *, log_bin: bool = True, binlog_format: str = "ROW", binlog_row_image: str = "FULL",
                 server_id: int = 1, binlog_row_metadata: str | None = None,
                 extra_conf: dict[str, str] | None = None) -> None:
        self.log_bin = log_bin
        self.binlog_format = binlog_format
        self.binlog_row_image = binlog_row_image
        self.server_id = server_id
        self.binlog_row_metadata = binlog_row_metadata  # None: server default (NO_LOG), the harder case
        self.extra_conf = extra_conf or {}
        self.port = 0
        self.dir = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self.mariadbd = find_binary("mariadbd", _DIRS) or find_binary("mysqld", _DIRS)
        self.install_db = find_binary("mariadb-install-db", _DIRS) or find_binary("mysql_install_db", _DIRS)
        self.admin = find_binary("mariadb-admin", _DIRS) or find_binary("mysqladmin", _DIRS)
        if not (self.mariadbd and self.install_db and self.admin):
            raise RuntimeError("MariaDB server binaries not found: "
                               "apt-get install -y mariadb-server mariadb-client")

    @property
    def socket(self) -> str:
        return os.path.join(self.dir, "mysqld.sock")

    @property
    def datadir(self) -> str:
        return os.path.join(self.dir, "data")

    @property
    def cnf(self) -> str:
        return os.path.join(self.dir, "my.cnf")

    def start(self) -> ThrowawayMariaDB:
        self.dir = tempfile.mkdtemp(prefix="erpsync-mariadb-")
        user = "mysql" if os.geteuid() == 0 else None
        if user:
            pw = pwd.getpwnam(user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        conf: dict[str, str] = {
            "datadir": self.datadir,
            "socket": self.socket,
            "port": str(self.port),
            "bind-address": "127.0.0.1",
            "server_id": str(self.server_id),
            "innodb_flush_log_at_trx_commit": "2",
            "sync_binlog": "0",
            "innodb_buffer_pool_size": "64M",
            "innodb_log_file_size": "48M",
            "max_connections": "200",
            "skip-name-resolve": "1",
            "log-error": os.path.join(self.dir, "error.log"),
            "pid-file": os.path.join(self.dir, "mysqld.pid"),
        }
        if user:
            conf["user"] = user
        if self.log_bin:
            conf.update({"log_bin": os.path.join(self.datadir, "binlog"), "binlog_format": self.binlog_format,
                         "binlog_row_image": self.binlog_row_image})
            if self.binlog_row_metadata:
                conf["binlog_row_metadata"] = self.binlog_row_metadata
        else:
            conf["skip-log-bin"] = "1"
        conf.update(self.extra_conf)
        with open(self.cnf, "w") as f:
            f.write("[mysqld]\n" + "".join(f"{k}={v}\n" for k, v in conf.items()))
        os.chmod(self.cnf, 0o644)
        install = [self.install_db, f"--defaults-file={self.cnf}", "--auth-root-authentication-method=normal",
                   "--skip-test-db"]
        if user:
            install.append(f"--user={user}")
        out = subprocess.run(install, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {out.stderr[-2000:]}")
        # setsid: a Ctrl-C in the test runner must not kill the server before we shut it down cleanly
        self._proc = subprocess.Popen([self.mariadbd, f"--defaults-file={self.cnf}"], start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for(self._ping, timeout=60):
            log = ""
            try:
                with open(os.path.join(self.dir, "error.log")) as f:
                    log = f.read()[-2000:]
            except OSError:
                pass
            self.stop()
            raise RuntimeError(f"mariadbd did not start: {log}")
        return self

    def _ping(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"mariadbd exited with {self._proc.returncode}")
        r = subprocess.run([self.admin, f"--socket={self.socket}", "-uroot", "ping"], capture_output=True)
        return r.returncode == 0

    def stop(self) -> None:
        if not self.dir:
            return
        if self._proc is not None and self._proc.poll() is None:
            subprocess.run([self.admin, f"--socket={self.socket}", "-uroot", "shutdown"], capture_output=True,
                           timeout=60)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = ""

    def connect_args(self, database: str | None = None, user: str = "root",
                     password: str = "") -> dict[str, Any]:
        """Keyword arguments for ``pymysql.connect`` (TCP, so replication users with host '%' work)."""
        args: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "user": user, "password": password,
                                "charset": "utf8mb4", "autocommit": True}
        if database:
            args["database"] = database
        return args

    def connect(self, database: str | None = None, **kw: Any) -> Any:
        import pymysql

        return pymysql.connect(**{**self.connect_args(database), **kw})

    def create_database(self, name: str) -> str:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        finally:
            conn.close()
        return name

    def __enter__(self) -> ThrowawayMariaDB:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
