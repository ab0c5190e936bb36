"""``erpsync doctor``: every prerequisite of a CDC source, checked with the configured credentials.

One function per check, each returning ``Check(name, status, detail, fix)``; ``fix`` is the exact SQL or
config line that resolves a WARN/FAIL. Checks never print secrets (SHOW GRANTS lines can carry password
hashes, so only parsed privilege names are reported).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from erpsync.config import Config
from erpsync.setup_sql import (
    mapped_tables,
    my_account,
    my_ident,
    pg_ident,
    pg_literal,
    pg_replica_identity,
    pg_table,
)

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Ctx:
    cfg: Config
    conn: Any
    tables: list[str]

    def q(self, query: str, args: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(query, args)
            return list(cur.fetchall()) if cur.description else []

    def one(self, query: str, args: Any = None) -> Any:
        rows = self.q(query, args)
        return rows[0][0] if rows else None


# -- PostgreSQL --------------------------------------------------------------------------------------
def pg_wal_level(c: Ctx) -> Check:
    level = c.one("SHOW wal_level")
    if level == "logical":
        return Check("wal_level", PASS, "wal_level=logical")
    return Check("wal_level", FAIL, f"wal_level={level}; logical decoding needs wal_level=logical",
                 "ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL")


def pg_replication_slots(c: Ctx) -> Check:
    max_slots = int(c.one("SHOW max_replication_slots"))
    used = {r[0] for r in c.q("SELECT slot_name FROM pg_replication_slots")}
    ours = c.cfg.source.slot in used
    free = max_slots - len(used)
    detail = f"{len(used)} of max_replication_slots={max_slots} in use" + (" (ours included)" if ours else "")
    fix = f"ALTER SYSTEM SET max_replication_slots = {max(max_slots + 2, 10)};  -- then restart PostgreSQL"
    if not ours and free <= 0:
        return Check("max_replication_slots", FAIL, detail + "; no free slot for erpsync", fix)
    if not ours and free == 1:
        return Check("max_replication_slots", WARN, detail + "; erpsync would take the last one", fix)
    return Check("max_replication_slots", PASS, detail)


def pg_wal_senders(c: Ctx) -> Check:
    max_senders = int(c.one("SHOW max_wal_senders"))
    used = int(c.one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'"))
    active = bool(c.one("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (c.cfg.source.slot,)))
    detail = f"{used} of max_wal_senders={max_senders} in use"
    fix = f"ALTER SYSTEM SET max_wal_senders = {max(max_senders + 2, 10)};  -- then restart PostgreSQL"
    if not active and used >= max_senders:
        return Check("max_wal_senders", FAIL, detail + "; erpsync could not start streaming", fix)
    if not active and used + 1 >= max_senders:
        return Check("max_wal_senders", WARN, detail + "; erpsync would take the last one", fix)
    return Check("max_wal_senders", PASS, detail)


def pg_replication_privilege(c: Ctx) -> Check:
    user, repl, sup = c.q("SELECT rolname, rolreplication, rolsuper FROM pg_roles "
                          "WHERE rolname = current_user")[0]
    if sup:
        return Check("replication privilege", PASS, f"role {user!r} is a superuser (works; a dedicated role "
                     "with REPLICATION is safer: erpsync setup --print-sql)")
    if repl:
        return Check("replication privilege", PASS, f"role {user!r} has REPLICATION")
    return Check("replication privilege", FAIL, f"role {user!r} has neither REPLICATION nor superuser",
                 f"ALTER ROLE {pg_ident(user)} WITH REPLICATION;")


def pg_select(c: Ctx) -> Check:
    user = c.one("SELECT current_user")
    missing, denied = [], []
    for t in c.tables:
        schema, _, name = t.partition(".")
        row = c.q("SELECT has_table_privilege(c.oid, 'SELECT') FROM pg_class c JOIN pg_namespace n "
                  "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
                  "AND c.relkind IN ('r', 'p')", (schema, name))
        if not row:
            missing.append(t)
        elif not row[0][0]:
            denied.append(t)
    if missing:
        return Check("select on mapped tables", FAIL, f"not found: {', '.join(missing)}",
                     "fix stock.table in the config (schema.table), or create the table")
    if denied:
        return Check("select on mapped tables", FAIL, f"role {user!r} cannot read {', '.join(denied)}",
                     "\n".join(f"GRANT SELECT ON TABLE {pg_table(t)} TO {pg_ident(user)};" for t in denied))
    return Check("select on mapped tables", PASS, f"SELECT on {', '.join(c.tables)}")


def pg_publication(c: Ctx) -> Check:
    pubname = c.cfg.source.publication
    row = c.q("SELECT puballtables FROM pg_publication WHERE pubname = %s", (pubname,))
    tables_sql = ", ".join(pg_table(t) for t in c.tables)
    if not row:
        create = f"CREATE PUBLICATION {pg_ident(pubname)} FOR TABLE {tables_sql};"
        if not c.cfg.source.create_publication:
            return Check("publication", FAIL, f"publication {pubname!r} does not exist "
                         "(source.create_publication is false)", create)
        sup = c.one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        can_create = c.one("SELECT has_database_privilege(current_database(), 'CREATE')")
        owns = all(c.one("SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c JOIN pg_namespace n "
                         "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                         tuple(t.split(".", 1))) for t in c.tables)
        if sup or (can_create and owns):
            return Check("publication", PASS, f"publication {pubname!r} does not exist yet; erpsync will "
                         "create it on the first run")
        return Check("publication", FAIL, f"publication {pubname!r} does not exist and this role may not "
                     "create it (needs CREATE on the database and ownership of the tables)",
                     f"{create}  -- as the tables' owner or a superuser")
    if row[0][0]:
        return Check("publication", PASS, f"publication {pubname!r} is FOR ALL TABLES (a narrower "
                     "FOR TABLE publication decodes less)")
    have = {r[0] for r in c.q("SELECT schemaname || '.' || tablename FROM pg_publication_tables "
                              "WHERE pubname = %s", (pubname,))}
    missing = [t for t in c.tables if t not in have]
    if missing:
        return Check("publication", FAIL, f"publication {pubname!r} lacks {', '.join(missing)}",
                     f"ALTER PUBLICATION {pg_ident(pubname)} ADD TABLE "
                     f"{', '.join(pg_table(t) for t in missing)};")
    return Check("publication", PASS, f"publication {pubname!r} covers {', '.join(c.tables)}")


def pg_replica_identity_check(c: Ctx) -> Check:
    problems, fixes, notes = [], [], []
    with c.conn.cursor() as cur:
        for t in c.tables:
            r = pg_replica_identity(cur, t)
            if r is None:
                continue  # reported by the SELECT check
            ident, problem = r
            if problem:
                problems.append(f"{t}: {problem}")
                fixes.append(f"ALTER TABLE {pg_table(t)} REPLICA IDENTITY FULL;  -- or add a PRIMARY KEY")
            else:
                notes.append(f"{t}: {dict(d='default (primary key)', f='full', i='index').get(ident, ident)}")
    if problems:
        return Check("replica identity", FAIL, "; ".join(problems), "\n".join(fixes))
    # The stock normalizer keys rows by PK and keeps row state, so the default identity is enough.
    return Check("replica identity", PASS, "; ".join(notes) or "no mapped tables")


def pg_slot(c: Ctx) -> Check:
    s = c.cfg.source
    rows = c.q("SELECT plugin, database, wal_status, active, active_pid FROM pg_replication_slots "
               "WHERE slot_name = %s", (s.slot,))
    if not rows:
        return Check("replication slot", PASS, f"slot {s.slot!r} does not exist yet; the first "
                     "`erpsync run` creates it with a consistent snapshot")
    plugin, db, wal_status, active, pid = rows[0]
    here = c.one("SELECT current_database()")
    reset = f"erpsync snapshot --reset --config {c.cfg.origin}"
    if plugin != "pgoutput" or db != here:
        return Check("replication slot", FAIL, f"slot {s.slot!r} exists but is for plugin={plugin}, "
                     f"database={db} (erpsync needs pgoutput on {here}); choose another source.slot or "
                     "drop it",
                     f"SELECT pg_drop_replication_slot({pg_literal(s.slot)});")
    if wal_status == "lost":
        return Check("replication slot", FAIL, f"slot {s.slot!r} lost WAL it needed (wal_status=lost): "
                     "changes were missed", reset)
    state = f"active (pid {pid})" if active else "inactive"
    if wal_status == "unreserved":
        return Check("replication slot", WARN, f"slot {s.slot!r} is {state} and about to lose WAL "
                     "(wal_status=unreserved); is erpsync running?",
                     "start `erpsync run` so the slot advances")
    return Check("replication slot", PASS, f"slot {s.slot!r} {state}, wal_status={wal_status}")


def pg_slot_wal_keep(c: Ctx) -> Check:
    if int(c.one("SHOW server_version_num")) < 130000:
        return Check("max_slot_wal_keep_size", WARN, "PostgreSQL < 13 cannot bound a slot's WAL: a stopped "
                     "erpsync can fill the ERP's disk; monitor erpsync_source_retained_bytes",
                     "upgrade to PostgreSQL >= 13")
    raw = c.one("SHOW max_slot_wal_keep_size")
    budget_h = c.cfg.ops.outage_budget_hours
    need = _pg_wal_for(c, budget_h)
    suggest = f"{max(10, math.ceil(need * 1.5 / 2**30)) if need else 20}GB"
    fix = (f"ALTER SYSTEM SET max_slot_wal_keep_size = '{suggest}'; SELECT pg_reload_conf();"
           f"  -- > WAL written in ops.outage_budget_hours={budget_h:g}, < free disk")
    if raw in ("-1", None):
        return Check("max_slot_wal_keep_size", WARN, "unlimited (-1): a dead or stopped erpsync makes the "
                     "slot keep WAL until the ERP's disk is full", fix)
    keep = _pg_size(raw)
    if need and keep is not None and keep < need:
        return Check("max_slot_wal_keep_size", WARN, f"{raw} is less than the ~{need / 2**30:.1f} GB of WAL "
                     f"written in {budget_h:g} h: an outage that long invalidates the slot (re-snapshot)",
                     fix)
    return Check("max_slot_wal_keep_size", PASS, f"max_slot_wal_keep_size={raw}")


def _pg_size(text: str) -> int | None:
    m = re.fullmatch(r"(\d+)\s*(B|kB|MB|GB|TB)?", text.strip())
    if not m:
        return None
    mult = {"B": 1, "kB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}[m.group(2) or "MB"]
    return int(m.group(1)) * mult


def _pg_wal_for(c: Ctx, hours: float) -> float | None:
    """WAL bytes the server writes in ``hours`` at its average rate since pg_stat_wal was reset (PG14+)."""
    try:
        row = c.q("SELECT wal_bytes::float8, extract(epoch FROM now() - stats_reset)::float8 "
                  "FROM pg_stat_wal")
    except Exception:  # pg_stat_wal is PostgreSQL 14+
        return None
    if not row or not row[0][1] or row[0][1] < 3600:
        return None  # less than an hour of history says nothing about a day
    return float(row[0][0]) / float(row[0][1]) * hours * 3600


PG_CHECKS: list[Callable[[Ctx], Check]] = [
    pg_wal_level, pg_replication_slots, pg_wal_senders, pg_replication_privilege, pg_select, pg_publication,
    pg_replica_identity_check, pg_slot, pg_slot_wal_keep]


# -- MySQL / MariaDB ---------------------------------------------------------------------------------
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
    budget = c.cfg.ops.outage_budget_hours * 3600
    want = int(max(budget * 2, 3 * 86400))
    fix = (f"SET GLOBAL binlog_expire_logs_seconds = {want};  and in my.cnf [mysqld]: "
           f"binlog_expire_logs_seconds={want}")
    if effective <= 0:
        return Check("binlog retention", PASS, "binlogs are never purged automatically (watch the disk)")
    if effective < budget:
        return Check("binlog retention", FAIL, f"binlogs are kept {effective / 3600:g} h, less than "
                     f"ops.outage_budget_hours={c.cfg.ops.outage_budget_hours:g}: a longer outage forces a "
                     "re-snapshot", fix)
    return Check("binlog retention", PASS, f"binlogs kept {effective / 3600:g} h "
                 f"(outage budget {c.cfg.ops.outage_budget_hours:g} h)")


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
    if no_pk and not (c.cfg.stock and c.cfg.stock.key):
        return Check("mapped tables", WARN, f"no primary key on {', '.join(no_pk)}: rows are keyed by all "
                     "columns", "ALTER TABLE ... ADD PRIMARY KEY (...);  or set stock.key in the config")
    return Check("mapped tables", PASS, f"{', '.join(c.tables)} exist with a primary key")


def my_server_id(c: Ctx) -> Check:
    ours = c.cfg.source.server_id
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


MYSQL_CHECKS: list[Callable[[Ctx], Check]] = [
    my_log_bin, my_binlog_format, my_row_image, my_row_metadata, my_retention, my_grants, my_tables,
    my_server_id, my_gtid]


def _mysql_connect(cfg: Config) -> Any:
    """Without selecting the database: a user lacking grants on it must still get its grants diagnosed."""
    import pymysql

    from erpsync.erpdb import ConnectError

    src = cfg.source
    try:
        return pymysql.connect(host=src.host, port=src.port, user=src.user,
                               password=src.password.get_secret_value(), connect_timeout=10, autocommit=True)
    except pymysql.MySQLError as e:
        where = f"{src.host}:{src.port}"
        raise ConnectError(f"source: cannot connect to MySQL at {where}: {e.args[-1]}") from None


def run_doctor(cfg: Config) -> list[Check]:
    from erpsync.erpdb import ConnectError, connect

    try:
        conn = connect(cfg) if cfg.source.kind == "postgres" else _mysql_connect(cfg)
    except ConnectError as e:
        fix = ("check source.dsn (host, port, dbname, user; password via ${ENV})"
               if cfg.source.kind == "postgres" else "check source.host/port/user/password/database")
        return [Check("connect", FAIL, str(e), fix)]
    ctx = Ctx(cfg, conn, mapped_tables(cfg))
    version = (f"PostgreSQL {ctx.one('SHOW server_version')}" if cfg.source.kind == "postgres"
               else ctx.one("SELECT VERSION()"))
    checks = [Check("connect", PASS, f"connected to {version}")]
    try:
        for fn in PG_CHECKS if cfg.source.kind == "postgres" else MYSQL_CHECKS:
            try:
                checks.append(fn(ctx))
            except Exception as e:  # one broken check must not hide the others
                name = fn.__name__.split("_", 1)[1].replace("_", " ")
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                checks.append(Check(name, WARN, f"could not check: {first}"))
    finally:
        conn.close()
    return checks


def render(checks: list[Check]) -> str:
    lines = []
    for ch in checks:
        lines.append(f"{ch.status:<5} {ch.name}: {ch.detail}")
        if ch.fix and ch.status != PASS:
            for i, fl in enumerate(ch.fix.splitlines()):
                lines.append(f"      {'fix: ' if i == 0 else '     '}{fl}")
    fails = sum(ch.status == FAIL for ch in checks)
    warns = sum(ch.status == WARN for ch in checks)
    lines.append(f"{len(checks)} checks: {fails} FAIL, {warns} WARN")
    return "\n".join(lines)
