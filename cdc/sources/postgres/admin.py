"""PostgreSQL administration: ``erpsync doctor`` checks, the least-privilege ``setup`` plan, the slot's
part of ``erpsync status``, ``teardown`` and ``snapshot --reset`` — and the plugin the registry names.

Identifiers are always quoted ("...", embedded quotes doubled), so odd table or role names cannot break
out of the statement. The password is never printed: printable SQL carries a psql variable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdc.changes import Source, SourceMisconfigured
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
    ConnectMisconfigured,
    Ctx,
    DoctorInput,
    ErpStatus,
    Plan,
    SetupError,
    SetupRequest,
    Statement,
    connect_error,
    diagnose,
    dsn_syntax_problem,
    first_line,
    tls_check,
)
from cdc.sources.postgres.config import OWNED_MARK, PostgresSourceConfig

# -- quoting and the DSN ---------------------------------------------------------------------------------


def pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def pg_table(qualified: str) -> str:
    schema, dot, table = qualified.partition(".")
    return f"{pg_ident(schema)}.{pg_ident(table)}" if dot else pg_ident(qualified)


def pg_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"  # standard_conforming_strings=on (default since 9.1)


def pg_dsn_part(dsn: str, key: str) -> str | None:
    import psycopg2.extensions

    try:
        return psycopg2.extensions.parse_dsn(dsn).get(key)
    except Exception:
        return None


# -- doctor --------------------------------------------------------------------------------------------
def pg_wal_level(c: Ctx) -> Check:
    level = c.one("SHOW wal_level")
    if level == "logical":
        return Check("wal_level", PASS, "wal_level=logical")
    return Check("wal_level", FAIL, f"wal_level={level}; logical decoding needs wal_level=logical",
                 "ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL")


def pg_replication_slots(c: Ctx) -> Check:
    max_slots = int(c.one("SHOW max_replication_slots"))
    used = {r[0] for r in c.q("SELECT slot_name FROM pg_replication_slots")}
    ours = c.src.slot in used
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
    active = bool(c.one("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (c.src.slot,)))
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


def pg_least_privilege(c: Ctx) -> Check:
    user, sup = c.q("SELECT rolname, rolsuper FROM pg_roles WHERE rolname = current_user")[0]
    if sup:
        return Check("least privilege", WARN, f"source.dsn connects as superuser {user!r}: erpsync needs "
                     "only LOGIN REPLICATION and SELECT on the mapped tables",
                     f"erpsync setup --config {c.inp.origin} --role erpsync  (review, then --apply), and "
                     "point source.dsn at that role")
    return Check("least privilege", PASS, f"role {user!r} is not a superuser")


def pg_tls(c: Ctx) -> Check:
    info = c.conn.info
    params = c.conn.get_dsn_parameters()
    mode = params.get("sslmode", "prefer")
    host = info.host
    if not info.ssl_in_use:
        return tls_check("cleartext", host, f"sslmode={mode}, no TLS in use")
    if mode == "verify-full":
        return tls_check("verified", host, "sslmode=verify-full: certificate chain and host name checked")
    if mode == "verify-ca":
        return tls_check("verified", host, "sslmode=verify-ca: certificate chain checked, host name not")
    return tls_check("unverified", host, f"sslmode={mode}")


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
    pubname = c.src.publication
    row = c.q("SELECT puballtables FROM pg_publication WHERE pubname = %s", (pubname,))
    tables_sql = ", ".join(pg_table(t) for t in c.tables)
    if not row:
        create = f"CREATE PUBLICATION {pg_ident(pubname)} FOR TABLE {tables_sql};"
        if not c.src.create_publication:
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
        return Check("publication", WARN, f"publication {pubname!r} is FOR ALL TABLES: every table of the "
                     "database is decoded and sent to erpsync, not only the mapped ones",
                     f"DROP PUBLICATION {pg_ident(pubname)}; CREATE PUBLICATION {pg_ident(pubname)} "
                     f"FOR TABLE {tables_sql};  -- if erpsync is its only user")
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
    s = c.src
    rows = c.q("SELECT plugin, database, wal_status, active, active_pid FROM pg_replication_slots "
               "WHERE slot_name = %s", (s.slot,))
    if not rows:
        return Check("replication slot", PASS, f"slot {s.slot!r} does not exist yet; the first "
                     "`erpsync run` creates it with a consistent snapshot")
    plugin, db, wal_status, active, pid = rows[0]
    here = c.one("SELECT current_database()")
    reset = f"erpsync snapshot --reset --config {c.inp.origin}"
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
    budget_h = c.inp.outage_budget_hours
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


PG_CHECKS: list[CheckFn] = [
    pg_tls, pg_wal_level, pg_replication_slots, pg_wal_senders, pg_replication_privilege, pg_least_privilege,
    pg_select, pg_publication, pg_replica_identity_check, pg_slot, pg_slot_wal_keep]


# -- setup plan -----------------------------------------------------------------------------------------
@dataclass
class PgLive:
    """What the server already has (so the plan neither fails on re-runs nor adds needless statements)."""
    role_exists: bool = False
    role_ours: bool = False  # it carries OWNED_MARK (erpsync setup created it)
    role_super: bool = False
    publication_tables: set[str] | None = None  # None: no publication; FOR ALL TABLES counts as all
    needs_full_identity: dict[str, str] = field(default_factory=dict)  # table -> reason


def plan_postgres(src: PostgresSourceConfig, tables: list[str], role: str, password_env: str,
                  live: PgLive | None = None, adopt: bool = False) -> Plan:
    live = live or PgLive()
    dbname = pg_dsn_part(src.dsn.get_secret_value(), "dbname") or "postgres"
    p = Plan(role, password_env, ":'erpsync_password'")
    p.header = [f"erpsync least-privilege setup for PostgreSQL database {dbname!r}.",
                "Review, then run as a superuser (or the tables' owner for the publication), e.g.:",
                f'  psql "$ADMIN_DSN" -v erpsync_password="${password_env}" -f erpsync-setup.sql',
                "or: erpsync setup --config FILE --apply --admin-dsn-env ADMIN_DSN"]
    r = pg_ident(role)
    mark = f"COMMENT ON ROLE {r} IS {pg_literal(OWNED_MARK)}"
    if not live.role_exists:
        p.header.append(f"Creates role {role!r} (marked as erpsync's with a COMMENT).")
        p.statements.append(Statement(f"CREATE ROLE {r} WITH LOGIN REPLICATION PASSWORD {PASSWORD_MARK}",
                                      "REPLICATION: create the slot and read the WAL stream"))
        p.statements.append(Statement(mark, "setup and teardown touch only roles carrying this mark"))
    else:
        why = "created by erpsync setup" if live.role_ours else "taken over with --adopt-role"
        p.header.append(f"Role {role!r} exists ({why}): its password is reset and REPLICATION granted.")
        p.statements.append(Statement(f"ALTER ROLE {r} WITH LOGIN REPLICATION PASSWORD {PASSWORD_MARK}",
                                      "REPLICATION: create the slot and read the WAL stream"))
        if adopt and not live.role_ours:
            p.statements.append(Statement(mark, "adopted: from now on erpsync's"))
    p.statements.append(Statement(f"GRANT CONNECT ON DATABASE {pg_ident(dbname)} TO {r}"))
    for schema in sorted({t.partition(".")[0] for t in tables}):
        p.statements.append(Statement(f"GRANT USAGE ON SCHEMA {pg_ident(schema)} TO {r}"))
    for t in tables:
        p.statements.append(Statement(f"GRANT SELECT ON TABLE {pg_table(t)} TO {r}",
                                      "initial snapshot and reconcile read only mapped tables"))
    pub = pg_ident(src.publication)
    if live.publication_tables is None:
        p.statements.append(Statement(f"CREATE PUBLICATION {pub} FOR TABLE "
                                      + ", ".join(pg_table(t) for t in tables),
                                      "only the mapped tables are decoded and sent"))
        p.statements.append(Statement(f"COMMENT ON PUBLICATION {pub} IS {pg_literal(OWNED_MARK)}",
                                      "teardown drops only a publication carrying this mark"))
    else:
        missing = [t for t in tables if t not in live.publication_tables]
        if missing:
            p.statements.append(Statement(f"ALTER PUBLICATION {pub} ADD TABLE "
                                          + ", ".join(pg_table(t) for t in missing)))
    for t, why in sorted(live.needs_full_identity.items()):
        p.statements.append(Statement(f"ALTER TABLE {pg_table(t)} REPLICA IDENTITY FULL", why))
    p.footer = ["Recommended: bound what an abandoned slot may keep (needs a superuser, PostgreSQL >= 13):",
                "  ALTER SYSTEM SET max_slot_wal_keep_size = '20GB'; SELECT pg_reload_conf();",
                "Decommission with `erpsync teardown` so no slot is left retaining WAL."]
    return p


def pg_live(conn: Any, src: PostgresSourceConfig, tables: list[str], role: str) -> PgLive:
    """Inspect the server for plan_postgres (any role can read these catalogs)."""
    live = PgLive()
    with conn.cursor() as cur:
        cur.execute("SELECT rolsuper, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
                    (role,))
        row = cur.fetchone()
        if row is not None:
            live.role_exists, live.role_super, live.role_ours = True, bool(row[0]), row[1] == OWNED_MARK
        cur.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (src.publication,))
        row = cur.fetchone()
        if row is not None:
            if row[0]:
                live.publication_tables = set(tables)
            else:
                cur.execute("SELECT schemaname || '.' || tablename FROM pg_publication_tables "
                            "WHERE pubname = %s", (src.publication,))
                live.publication_tables = {r[0] for r in cur.fetchall()}
        for t in tables:
            ident = pg_replica_identity(cur, t)
            if ident and ident[1]:
                live.needs_full_identity[t] = ident[1]
    return live


def refuse_foreign_role(live: PgLive, role: str, adopt: bool) -> None:
    """Setup changes only a role it created (or one handed over with --adopt-role), never a superuser."""
    if live.role_super:
        raise SetupError(f"role {role!r} is a superuser: erpsync setup never alters it; pass --role NAME "
                         "for a dedicated least-privilege role")
    if live.role_exists and not live.role_ours and not adopt:
        raise SetupError(f"role {role!r} exists and was not created by erpsync setup (no erpsync COMMENT ON "
                         "ROLE): refusing to change its password or privileges. Pass --role NAME for a "
                         f"dedicated role, or --adopt-role to take {role!r} over (resets its password)")


def pg_replica_identity(cur: Any, table: str) -> tuple[str, str | None] | None:
    """(relreplident, problem or None) for a table, None if it does not exist."""
    schema, _, name = table.partition(".")
    cur.execute("SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid "
                "AND i.indisprimary) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s", (schema, name))
    row = cur.fetchone()
    if row is None:
        return None
    ident, has_pk = row
    if ident == "n":
        return ident, "REPLICA IDENTITY NOTHING: UPDATE/DELETE carry no key"
    if ident == "d" and not has_pk:
        return ident, "no primary key: UPDATE/DELETE would carry no key"
    return ident, None


# -- status ---------------------------------------------------------------------------------------------
def erp_postgres(conn: Any, slot: str) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT plugin, database, active, active_pid, restart_lsn::text, confirmed_flush_lsn::text, "
            "wal_status, safe_wal_size, (pg_current_wal_lsn() - confirmed_flush_lsn)::float8, "
            "(pg_current_wal_lsn() - restart_lsn)::float8, pg_current_wal_lsn()::text "
            "FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        row = cur.fetchone()
        if row is None:
            cur.execute("SELECT pg_current_wal_lsn()::text")
            return {"slot": slot, "slot_exists": False, "current_lsn": cur.fetchone()[0]}
    keys = ["plugin", "database", "active", "active_pid", "restart_lsn", "confirmed_flush_lsn", "wal_status",
            "safe_wal_size", "lag_bytes", "retained_bytes", "current_lsn"]
    out = {"slot": slot, "slot_exists": True, **dict(zip(keys, row, strict=True))}
    for k in ("lag_bytes", "retained_bytes", "safe_wal_size"):
        if out[k] is not None:
            out[k] = int(out[k])
    return out


# -- connection, status, setup, teardown -----------------------------------------------------------------
def connect_sql(src: PostgresSourceConfig) -> Any:
    """A plain autocommit connection for checks, the reconciler's snapshot and the schema check."""
    import psycopg2
    import psycopg2.extensions

    try:
        dsn = src.dsn.get_secret_value()
        opts = psycopg2.extensions.parse_dsn(dsn).get("options", "")
        # floats as stored even where the database or role sets extra_float_digits=0 (see SESSION_OPTIONS)
        conn = psycopg2.connect(dsn, connect_timeout=10, options=f"{opts} -c extra_float_digits=3".strip(),
                                **src.tls_kwargs())
    except psycopg2.OperationalError as e:
        raise connect_error(f"source.dsn: cannot connect to PostgreSQL: {first_line(e)}") from None
    except psycopg2.Error as e:  # a DSN libpq cannot parse: its message quotes a fragment (the password?)
        raise ConnectMisconfigured(f"source.dsn: {dsn_syntax_problem(str(e))}") from None
    conn.autocommit = True
    return conn


def erp_status(conn: Any, src: PostgresSourceConfig, stored: str | None) -> ErpStatus:
    info = erp_postgres(conn, src.slot)
    st = ErpStatus({"reachable": True, **info})
    if not info["slot_exists"]:
        if stored:
            st.checks.append(("slot", STATUS_FAIL, f"replication slot {src.slot!r} is missing although a "
                                                   f"position is stored ({stored}); changes may be lost: "
                                                   "erpsync snapshot --reset"))
        else:
            st.checks.append(("slot", STATUS_OK, "no slot yet (created by the first `erpsync run`)"))
        return st
    st.lag_bytes = info["lag_bytes"]
    ws, retained = info["wal_status"], info["retained_bytes"] or 0
    if ws == "lost":
        st.checks.append(("slot", STATUS_FAIL, f"slot {src.slot!r} lost WAL it needed (wal_status=lost): "
                                               "re-snapshot with erpsync snapshot --reset"))
    elif ws in ("extended", "unreserved") or retained > RETAINED_WARN_BYTES:
        st.checks.append(("slot", STATUS_WARN, f"slot retains {retained / 2**20:.0f} MiB of WAL "
                                               f"(wal_status={ws}); is erpsync running and confirming?"))
    else:
        st.checks.append(("slot", STATUS_OK, f"wal_status={ws}, retained {retained / 2**20:.1f} MiB"))
    return st


def setup_plan(src: PostgresSourceConfig, req: SetupRequest) -> tuple[Plan, Any]:
    """The plan, fitted to the live server when it can be inspected, and the admin connection to apply it
    with (None when not connected; the caller closes it)."""
    import psycopg2

    role = req.role
    dsn_user = pg_dsn_part(src.dsn.get_secret_value(), "user")
    conn = None
    try:  # inspect the live server so the plan fits it (existing role/publication, keyless tables)
        conn = psycopg2.connect(req.admin_dsn or src.dsn.get_secret_value(), connect_timeout=10)
        conn.autocommit = True
        if role is None and dsn_user:
            with conn.cursor() as cur:
                cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (dsn_user,))
                row = cur.fetchone()
            # never hand a superuser's name to ALTER ROLE: a dedicated role is the point of setup
            role = "erpsync" if row and row[0] else dsn_user
        role = role or "erpsync"
        live = pg_live(conn, src, req.tables, role)
        refuse_foreign_role(live, role, req.adopt_role)
        return plan_postgres(src, req.tables, role, req.password_env, live, req.adopt_role), conn
    except SetupError:
        if conn is not None:
            conn.close()
        raise
    except psycopg2.Error as e:
        if conn is not None:
            conn.close()
        reason = first_line(e) if isinstance(e, psycopg2.OperationalError) else dsn_syntax_problem(str(e))
        if req.apply:
            raise SetupError(f"cannot connect with ${req.admin_dsn_env}: {reason}") from None
        role = role or (dsn_user if dsn_user not in (None, "postgres") else "erpsync")
        plan = plan_postgres(src, req.tables, role, req.password_env)
        plan.header.append("(server not inspected: REPLICA IDENTITY needs and existing objects unknown; if "
                           f"role {role!r} exists and is not erpsync's, pass --role NAME instead)")
        return plan, None


def teardown(src: PostgresSourceConfig, say: Callable[[str], None]) -> bool:
    """Drop the slot and the publication — only erpsync's own: a same-named slot of another plugin or
    database, or a publication without erpsync's mark, is left alone and named. True: the stored position
    (of the dropped slot) is void."""
    from cdc.sources.postgres.replication import PostgresSource

    reader = PostgresSource(src, [])
    try:
        reader.drop_slot()  # refuses a slot that is not erpsync's
        say(f"replication slot {src.slot!r} dropped (or did not exist)")
        state = reader.publication_state()
        if state == "foreign":
            say(f"publication {src.publication!r} left alone: it does not carry erpsync's mark (another "
                "tool's, or made by hand); if it is erpsync's, as its owner run: "
                f"DROP PUBLICATION {pg_ident(src.publication)};")
            return True
        try:
            reader.drop_publication()
        except Exception as e:
            raise SourceMisconfigured(
                f"could not drop publication {src.publication!r} ({first_line(e)}); as its owner run: "
                f"DROP PUBLICATION {pg_ident(src.publication)};") from None
        say(f"publication {src.publication!r} dropped (or did not exist)")
    finally:
        reader.close()
    return True


class PostgresPlugin:
    kind = "postgres"
    config_class = PostgresSourceConfig
    has_sql = True

    def dialect(self, src: PostgresSourceConfig) -> str:
        return "postgres"

    def default_schema(self, src: PostgresSourceConfig) -> str:
        return "public"

    def source_id(self, src: PostgresSourceConfig) -> str:
        return f"postgres:{src.slot}"

    def secrets(self, src: PostgresSourceConfig) -> list[str]:
        dsn = src.dsn.get_secret_value()
        return [dsn, pg_dsn_part(dsn, "password") or ""]  # the password alone, as a driver may echo it

    def make_source(self, src: PostgresSourceConfig, tables: list[str]) -> Source:
        from cdc.sources.postgres.replication import PostgresSource

        return PostgresSource(src, tables)

    def compare(self, a: str, b: str) -> int:
        from cdc.sources.postgres.decoder import lsn_to_int

        x, y = lsn_to_int(a), lsn_to_int(b)
        return (x > y) - (x < y)

    def connect_sql(self, src: PostgresSourceConfig) -> Any:
        return connect_sql(src)

    def doctor_checks(self, src: PostgresSourceConfig, inp: DoctorInput) -> list[Check]:
        return diagnose(src, inp, lambda: connect_sql(src),
                        "check source.dsn (host, port, dbname, user; password via ${ENV})",
                        lambda c: f"PostgreSQL {c.one('SHOW server_version')}", PG_CHECKS)

    def setup_plan(self, src: PostgresSourceConfig, req: SetupRequest) -> tuple[Plan, Any]:
        return setup_plan(src, req)

    def erp_status(self, conn: Any, src: PostgresSourceConfig, stored: str | None) -> ErpStatus:
        return erp_status(conn, src, stored)

    def teardown_question(self, src: PostgresSourceConfig) -> str | None:
        return (f"Drop replication slot {src.slot!r} and publication {src.publication!r}? "
                "The next `erpsync run` will take a full snapshot")

    def teardown(self, src: PostgresSourceConfig, say: Callable[[str], None]) -> bool:
        return teardown(src, say)

    def reset_snapshot(self, src: PostgresSourceConfig, tables: list[str]) -> None:
        """Drop the slot: the next run creates it again with a fresh snapshot."""
        from cdc.sources.postgres.replication import PostgresSource

        reader = PostgresSource(src, tables)
        try:
            reader.drop_slot()
        finally:
            reader.close()


PLUGIN = PostgresPlugin()
