"""MySQL / MariaDB administration: ``erpsync doctor`` checks, the least-privilege ``setup`` plan, the
binlog part of ``erpsync status``, ``teardown`` — and the plugin the registry names.

Identifiers are always quoted (`...`, embedded backquotes doubled). The password is never printed: the
printable SQL carries a placeholder and ``--apply`` binds the value read from an env var.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlparse

from cdc.changes import Source
from cdc.sources.admin import (
    FAIL,
    PASS,
    PASSWORD_MARK,
    RETAINED_WARN_BYTES,
    STATUS_FAIL,
    STATUS_OK,
    STATUS_WARN,
    WARN,
    Check,
    CheckFn,
    Ctx,
    DoctorInput,
    ErpStatus,
    Plan,
    SetupError,
    SetupRequest,
    Statement,
    connect_error,
    diagnose,
    first_line,
    tls_check,
)
from cdc.sources.mysql.config import MySQLSourceConfig

# -- quoting -------------------------------------------------------------------------------------------


def my_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def my_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def my_account(user: str, host: str = "%") -> str:
    return f"{my_literal(user)}@{my_literal(host)}"


# -- doctor --------------------------------------------------------------------------------------------
def _var(c: Ctx, name: str) -> str | None:
    rows = c.q("SHOW GLOBAL VARIABLES LIKE %s", (name,))
    return str(rows[0][1]) if rows else None


def _is_mariadb(c: Ctx) -> bool:
    return "mariadb" in (c.one("SELECT VERSION()") or "").lower()


def my_log_bin(c: Ctx) -> Check:
    if (_var(c, "log_bin") or "").upper() == "ON":
        return Check("log_bin", PASS, "binary log is on")
    return Check("log_bin", FAIL, "the binary log is off; there is nothing to stream",
                 "my.cnf [mysqld]: log_bin=binlog  (and a server_id), then restart the server")


def my_binlog_format(c: Ctx) -> Check:
    fmt = (_var(c, "binlog_format") or "").upper()
    if fmt == "ROW":
        return Check("binlog_format", PASS, "binlog_format=ROW")
    return Check("binlog_format", FAIL, f"binlog_format={fmt}; erpsync reads row events only "
                 "(STATEMENT/MIXED log SQL text, not the changed rows)",
                 "SET GLOBAL binlog_format = 'ROW';  and in my.cnf [mysqld]: binlog_format=ROW")


def my_row_image(c: Ctx) -> Check:
    img = (_var(c, "binlog_row_image") or "FULL").upper()
    if img == "FULL":
        return Check("binlog_row_image", PASS, "binlog_row_image=FULL")
    return Check("binlog_row_image", FAIL, f"binlog_row_image={img}; updates would omit the columns the "
                 "mapping needs", "SET GLOBAL binlog_row_image = 'FULL';  and in my.cnf [mysqld]: "
                 "binlog_row_image=FULL")


def my_row_metadata(c: Ctx) -> Check:
    meta = _var(c, "binlog_row_metadata")
    if meta is None:
        return Check("binlog_row_metadata", WARN, "this server has no binlog_row_metadata (MySQL < 8.0.1 / "
                     "MariaDB < 10.5): column names come from information_schema, so a DDL racing the "
                     "stream can mislabel columns", "upgrade to MySQL >= 8 or MariaDB >= 10.5")
    if meta.upper() == "FULL":
        return Check("binlog_row_metadata", PASS, "binlog_row_metadata=FULL")
    return Check("binlog_row_metadata", WARN, f"binlog_row_metadata={meta}; row events carry no column names",
                 "SET GLOBAL binlog_row_metadata = 'FULL';  and in my.cnf [mysqld]: binlog_row_metadata=FULL")


def my_retention(c: Ctx) -> Check:
    secs = int(float(_var(c, "binlog_expire_logs_seconds") or 0))
    days = float(_var(c, "expire_logs_days") or 0)
    effective = secs if secs > 0 else days * 86400
    budget = c.inp.outage_budget_hours * 3600
    want = int(max(budget * 2, 3 * 86400))
    fix = (f"SET GLOBAL binlog_expire_logs_seconds = {want};  and in my.cnf [mysqld]: "
           f"binlog_expire_logs_seconds={want}")
    if effective <= 0:
        return Check("binlog retention", PASS, "binlogs are never purged automatically (watch the disk)")
    if effective < budget:
        return Check("binlog retention", FAIL, f"binlogs are kept {effective / 3600:g} h, less than "
                     f"ops.outage_budget_hours={c.inp.outage_budget_hours:g}: a longer outage forces a "
                     "re-snapshot", fix)
    return Check("binlog retention", PASS, f"binlogs kept {effective / 3600:g} h "
                 f"(outage budget {c.inp.outage_budget_hours:g} h)")


_GRANT = re.compile(r"^GRANT (?P<privs>.+?) ON (?P<obj>\S+) TO ", re.IGNORECASE)


def parse_grants(lines: list[str]) -> dict[str, set[str]]:
    """SHOW GRANTS lines → {object: {privileges}} with objects like ``*.*``, ``db.*``, ``db.tbl``."""
    out: dict[str, set[str]] = {}
    for line in lines:
        m = _GRANT.match(line.strip())
        if not m:
            continue
        obj = m["obj"].replace("`", "").replace('"', "")
        privs = re.sub(r"\([^)]*\)", "", m["privs"])  # column-level lists grant the privilege partially
        names = {p.strip().upper() for p in privs.split(",") if p.strip()}
        if "(" in m["privs"]:
            names = {n + " (COLUMNS)" for n in names}
        out.setdefault(obj, set()).update(names)
    return out


def my_grants(c: Ctx) -> Check:
    user_host = c.one("SELECT CURRENT_USER()") or "?@%"
    user, _, host = user_host.rpartition("@")
    acct = my_account(user, host)
    grants = parse_grants([r[0] for r in c.q("SHOW GRANTS")])
    glob = grants.get("*.*", set())
    all_ = "ALL PRIVILEGES" in glob or "ALL" in glob
    repl = all_ or bool(glob & {"REPLICATION SLAVE", "REPLICATION REPLICA"})
    client = all_ or bool(glob & {"REPLICATION CLIENT", "BINLOG MONITOR", "SUPER"})
    missing_sel = []
    for t in c.tables:
        db, _, tbl = t.partition(".")
        ok = False
        for obj in ("*.*", f"{db}.*", f"{db}.{tbl}"):
            p = grants.get(obj, set())
            if p & {"SELECT", "ALL PRIVILEGES", "ALL"}:
                ok = True
        if not ok:
            missing_sel.append(t)
    fixes = []
    lacking = [n for n, have in (("REPLICATION SLAVE", repl), ("REPLICATION CLIENT", client)) if not have]
    if lacking:
        fixes.append(f"GRANT {', '.join(lacking)} ON *.* TO {acct};")
    for t in missing_sel:
        db, _, tbl = t.partition(".")
        fixes.append(f"GRANT SELECT ON {my_ident(db)}.{my_ident(tbl)} TO {acct};")
    if fixes:
        what = lacking + [f"SELECT on {t}" for t in missing_sel]
        return Check("grants", FAIL, f"{user_host} lacks {', '.join(what)}", "\n".join(fixes))
    return Check("grants", PASS, f"{user_host} has REPLICATION SLAVE, REPLICATION CLIENT and SELECT on "
                 f"{', '.join(c.tables)}")


def my_least_privilege(c: Ctx) -> Check:
    user_host = c.one("SELECT CURRENT_USER()") or "?@%"
    glob = parse_grants([r[0] for r in c.q("SHOW GRANTS")]).get("*.*", set())
    broad = sorted(glob & {"ALL PRIVILEGES", "ALL", "SUPER"})
    if broad or user_host.rpartition("@")[0] == "root":
        return Check("least privilege", WARN, f"source.user is {user_host} with {', '.join(broad) or 'root'} "
                     "on *.*: erpsync needs only REPLICATION SLAVE, REPLICATION CLIENT and SELECT on the "
                     "mapped tables", f"erpsync setup --config {c.inp.origin} --role erpsync  (review, then "
                     "--apply), and set source.user to that user")
    return Check("least privilege", PASS, f"{user_host} has no global ALL / SUPER")


def my_tls(c: Ctx) -> Check:
    rows = c.q("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    cipher = str(rows[0][1]) if rows and rows[0][1] else ""
    tls = c.src.tls
    if not cipher:
        return tls_check("cleartext", c.src.host, "no TLS on this connection")
    if tls is not None and tls.verify:
        return tls_check("verified", c.src.host, f"{cipher}; source.tls checks the certificate and host name")
    return tls_check("unverified", c.src.host, f"{cipher}; the certificate is not checked")


def my_tables(c: Ctx) -> Check:
    missing, no_pk = [], []
    for t in c.tables:
        db, _, tbl = t.partition(".")
        if not c.q("SELECT 1 FROM information_schema.tables WHERE table_schema=%s AND table_name=%s",
                   (db, tbl)):
            missing.append(t)
        elif not c.q("SELECT 1 FROM information_schema.table_constraints WHERE table_schema=%s "
                     "AND table_name=%s AND constraint_type='PRIMARY KEY'", (db, tbl)):
            no_pk.append(t)
    if missing:
        return Check("mapped tables", FAIL, f"not found (or not visible to this user): {', '.join(missing)}",
                     "fix stock.table / source.database in the config, or grant SELECT")
    if no_pk and not c.inp.has_stock_key:
        return Check("mapped tables", WARN, f"no primary key on {', '.join(no_pk)}: rows are keyed by all "
                     "columns", "ALTER TABLE ... ADD PRIMARY KEY (...);  or set stock.key in the config")
    return Check("mapped tables", PASS, f"{', '.join(c.tables)} exist with a primary key")


def my_server_id(c: Ctx) -> Check:
    ours = c.src.server_id
    theirs = int(c.one("SELECT @@server_id"))
    fix = f"source.server_id: {ours + 1 if ours + 1 != theirs else ours + 2}  (in the erpsync config)"
    if theirs == ours:
        return Check("server_id", FAIL, f"source.server_id={ours} equals the server's own server_id", fix)
    replicas: list[int] = []
    for stmt in ("SHOW REPLICAS", "SHOW SLAVE HOSTS"):
        try:
            replicas = [int(r[0]) for r in c.q(stmt)]
            break
        except Exception:
            continue
    if ours in replicas:
        # erpsync itself registers while running, so this is only a warning.
        return Check("server_id", WARN, f"a replica with server_id={ours} is connected (SHOW SLAVE HOSTS); "
                     "unless it is this erpsync, two readers with one id disconnect each other", fix)
    return Check("server_id", PASS, f"source.server_id={ours} is unique (server {theirs}, "
                 f"{len(replicas)} other replica(s))")


def my_gtid(c: Ctx) -> Check:
    if _is_mariadb(c):
        pos = c.one("SELECT @@gtid_binlog_pos")
        return Check("gtid", PASS, f"MariaDB GTIDs (binlog pos {pos or 'empty'}): resume survives a failover")
    mode = (_var(c, "gtid_mode") or "OFF").upper()
    if mode == "ON":
        return Check("gtid", PASS, "gtid_mode=ON: resume by GTID survives a failover")
    return Check("gtid", WARN, f"gtid_mode={mode}: resume is by binlog file/offset, which a failover to "
                 "another server invalidates", "SET PERSIST enforce_gtid_consistency = ON; then step "
                 "gtid_mode through OFF_PERMISSIVE, ON_PERMISSIVE to ON (SET PERSIST gtid_mode = ...)")


MYSQL_CHECKS: list[CheckFn] = [
    my_tls, my_log_bin, my_binlog_format, my_row_image, my_row_metadata, my_retention, my_grants,
    my_least_privilege, my_tables, my_server_id, my_gtid]


# -- setup plan -----------------------------------------------------------------------------------------
def plan_mysql(tables: list[str], role: str, password_env: str, host: str = "%",
               exists: bool = False) -> Plan:
    """``exists``: the user is there already and is being taken over (--adopt-role): ALTER, not CREATE.
    Without it the plan's CREATE USER fails on an existing user, so nobody else's password is changed."""
    acct = my_account(role, host)
    p = Plan(role, password_env, f"'<value of ${password_env}>'")
    p.header = ["erpsync least-privilege setup for MySQL / MariaDB. Review, then run as an admin.",
                f"The password placeholder stands for the value of ${password_env} (never printed);",
                "or: erpsync setup --config FILE --apply --admin-dsn-env ADMIN_DSN "
                "(ADMIN_DSN=mysql://root:pw@host:3306/)"]
    if exists:
        p.header.append(f"User {acct} exists and is taken over (--adopt-role): its password is reset.")
        p.statements.append(Statement(f"ALTER USER {acct} IDENTIFIED BY {PASSWORD_MARK}", "--adopt-role"))
    else:
        p.header.append(f"Creates user {acct} (fails, changing nothing, if it exists: see --adopt-role).")
        p.statements.append(Statement(f"CREATE USER {acct} IDENTIFIED BY {PASSWORD_MARK}"))
    p.statements.append(Statement(f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {acct}",
                                  "read the binlog; SHOW MASTER STATUS / BINARY LOGS"))
    for t in tables:
        db, _, table = t.partition(".")
        p.statements.append(Statement(f"GRANT SELECT ON {my_ident(db)}.{my_ident(table)} TO {acct}",
                                      "snapshot and reconcile read only mapped tables"))
    p.footer = ["Server settings erpsync needs (my.cnf, [mysqld]): log_bin=ON, binlog_format=ROW,",
                "binlog_row_image=FULL, binlog_row_metadata=FULL, binlog_expire_logs_seconds >= your outage "
                "budget; check with `erpsync doctor`."]
    return p


def mysql_dsn_args(dsn: str) -> dict[str, Any]:
    """``mysql://user:password@host:port/`` → pymysql.connect() keyword arguments."""
    u = urlparse(dsn)
    if u.scheme not in ("mysql", "mariadb"):
        raise ValueError("expected a mysql://user:password@host:port/ URL")
    try:
        port = u.port
    except ValueError:  # its message quotes the text after ':' — with a '/' in the password, a piece of it
        raise ValueError("not a valid mysql://user:password@host:port/ URL (percent-encode a password "
                         "holding '/', '@', ':' or '%')") from None
    return {"host": u.hostname or "127.0.0.1", "port": port or 3306, "user": unquote(u.username or "root"),
            "password": unquote(u.password or ""), "autocommit": True}



# -- connection, status, setup, teardown -----------------------------------------------------------------
def connect_sql(src: MySQLSourceConfig, *, select_database: bool = True) -> Any:
    """A plain autocommit connection. The doctor connects without selecting the database: a user lacking
    grants on it must still get its grants diagnosed."""
    import pymysql

    db = {"database": src.database} if select_database else {}
    try:
        return pymysql.connect(host=src.host, port=src.port, user=src.user,
                               password=src.password.get_secret_value(), connect_timeout=10, autocommit=True,
                               **src.ssl_kwargs(), **db)
    except pymysql.MySQLError as e:
        reason = first_line(e) if select_database else e.args[-1]
        raise connect_error(f"source: cannot connect to MySQL at {src.host}:{src.port}: {reason}") from None


def erp_mysql(conn: Any, stored: str | None) -> dict[str, Any]:
    from cdc.sources.mysql.position import BinlogPosition, binlog_lag_bytes

    with conn.cursor() as cur:
        try:
            cur.execute("SHOW BINARY LOGS")
            logs = [(r[0], int(r[1])) for r in cur.fetchall()]
        except Exception as e:  # needs REPLICATION CLIENT / BINLOG MONITOR
            return {"error": f"SHOW BINARY LOGS: {e}"}
    out: dict[str, Any] = {"binlogs": len(logs), "binlog_bytes": sum(s for _, s in logs)}
    if logs:
        out["current"] = f"{logs[-1][0]}:{logs[-1][1]}"
        out["oldest"] = logs[0][0]
    if stored:
        behind = binlog_lag_bytes(logs, BinlogPosition.parse(stored))
        out["stored_file_present"] = behind is not None
        if behind is not None:
            out["lag_bytes"], out["retained_bytes"] = behind
    return out


def erp_status(conn: Any, stored: str | None) -> ErpStatus:
    info = erp_mysql(conn, stored)
    st = ErpStatus({"reachable": True, **info})
    if "error" in info:
        st.checks.append(("binlog", STATUS_WARN, info["error"]))
        return st
    st.lag_bytes = info.get("lag_bytes")
    if stored and not info.get("stored_file_present", True):
        st.checks.append(("binlog", STATUS_FAIL,
                          f"the stored position {stored} is in a binlog the server has purged "
                          f"(oldest kept: {info.get('oldest')}); re-snapshot with erpsync snapshot --reset"))
    elif (info.get("retained_bytes") or 0) > RETAINED_WARN_BYTES:
        st.checks.append(("binlog", STATUS_WARN,
                          f"{info['retained_bytes'] / 2**20:.0f} MiB of binlog not yet read"))
    else:
        st.checks.append(("binlog", STATUS_OK, f"current {info.get('current')}"))
    return st


def setup_plan(src: MySQLSourceConfig, req: SetupRequest) -> tuple[Plan, Any]:
    import pymysql

    role = req.role or (src.user if src.user != "root" else "erpsync")
    if role == "root":
        raise SetupError("erpsync setup never alters 'root': pass --role NAME for a dedicated user")
    if not req.apply:
        return plan_mysql(req.tables, role, req.password_env, req.host, exists=req.adopt_role), None
    try:
        conn = pymysql.connect(**mysql_dsn_args(req.admin_dsn or ""), connect_timeout=10)
    except ValueError as e:
        raise SetupError(f"cannot connect with ${req.admin_dsn_env}: {e}") from None
    except pymysql.MySQLError as e:
        raise SetupError(f"cannot connect with ${req.admin_dsn_env}: {e.args[-1]}") from None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM mysql.user WHERE User = %s AND Host = %s", (role, req.host))
            exists = cur.fetchone() is not None
    except Exception:
        conn.close()
        raise
    if exists and not req.adopt_role:
        conn.close()
        raise SetupError(f"user {my_account(role, req.host)} exists and erpsync setup did not create it in "
                         "this run: refusing to change its password or grants. Pass --role NAME for a "
                         "dedicated user, or --adopt-role to take it over (resets its password)")
    return plan_mysql(req.tables, role, req.password_env, req.host, exists=exists), conn


def teardown(src: MySQLSourceConfig, say: Callable[[str], None]) -> bool:
    """Nothing to drop; name the user to drop by hand — only when it looks like erpsync's setup user
    (never root, never one with global ALL / SUPER)."""
    say("MySQL/MariaDB: erpsync keeps nothing on the server (no slot).")
    if src.user == "root":
        return False
    try:
        conn = connect_sql(src, select_database=False)
    except Exception:
        say(f"If user {src.user!r} was created by `erpsync setup` and nothing else uses it, drop it by hand.")
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            user_host = str(cur.fetchone()[0])
            cur.execute("SHOW GRANTS")
            glob = parse_grants([r[0] for r in cur.fetchall()]).get("*.*", set())
    finally:
        conn.close()
    user, _, host = user_host.rpartition("@")
    if glob & {"ALL PRIVILEGES", "ALL", "SUPER"}:
        say(f"User {user_host} has global {', '.join(sorted(glob & {'ALL PRIVILEGES', 'ALL', 'SUPER'}))}: "
            "not erpsync's setup user; leave it.")
        return False
    say("If nothing else uses it, drop the user erpsync setup created:")
    say(f"  DROP USER {my_account(user, host)};")
    return False


class MySQLPlugin:
    kind = "mysql"
    config_class = MySQLSourceConfig
    has_sql = True

    def dialect(self, src: MySQLSourceConfig) -> str:
        return "mysql"

    def default_schema(self, src: MySQLSourceConfig) -> str:
        return src.database

    def source_id(self, src: MySQLSourceConfig) -> str:
        return f"mysql:{src.server_id}"

    def secrets(self, src: MySQLSourceConfig) -> list[str]:
        return [src.password.get_secret_value()]

    def make_source(self, src: MySQLSourceConfig, tables: list[str]) -> Source:
        from cdc.sources.mysql.replication import MySQLSource

        return MySQLSource(src, tables)

    def compare(self, a: str, b: str) -> int:
        from cdc.sources.mysql.position import compare_positions

        return int(compare_positions(a, b))

    def connect_sql(self, src: MySQLSourceConfig) -> Any:
        return connect_sql(src)

    def doctor_checks(self, src: MySQLSourceConfig, inp: DoctorInput) -> list[Check]:
        return diagnose(src, inp, lambda: connect_sql(src, select_database=False),
                        "check source.host/port/user/password/database",
                        lambda c: str(c.one("SELECT VERSION()")), MYSQL_CHECKS)

    def setup_plan(self, src: MySQLSourceConfig, req: SetupRequest) -> tuple[Plan, Any]:
        return setup_plan(src, req)

    def erp_status(self, conn: Any, src: MySQLSourceConfig, stored: str | None) -> ErpStatus:
        return erp_status(conn, stored)

    def teardown_question(self, src: MySQLSourceConfig) -> str | None:
        return None  # nothing to drop on the server

    def teardown(self, src: MySQLSourceConfig, say: Callable[[str], None]) -> bool:
        return teardown(src, say)

    def reset_snapshot(self, src: MySQLSourceConfig, tables: list[str]) -> None:
        return None  # a binlog reader holds nothing on the server


PLUGIN = MySQLPlugin()
