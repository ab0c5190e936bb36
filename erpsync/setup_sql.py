"""Least-privilege SQL for ``erpsync setup`` (print for review, or apply as an admin) and ``teardown``.

Identifiers are always quoted (PostgreSQL "..." / MySQL `...`, embedded quotes doubled), so odd table or
role names cannot break out of the statement. The password is never printed: printable SQL carries a
placeholder (a psql variable for PostgreSQL) and ``--apply`` binds the value read from an env var.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

from erpsync.config import Config

_MARK = "\x00password\x00"  # where the secret goes; replaced by a placeholder or a bound parameter


def pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def pg_table(qualified: str) -> str:
    schema, dot, table = qualified.partition(".")
    return f"{pg_ident(schema)}.{pg_ident(table)}" if dot else pg_ident(qualified)


def pg_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"  # standard_conforming_strings=on (default since 9.1)


def my_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def my_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def my_account(user: str, host: str = "%") -> str:
    return f"{my_literal(user)}@{my_literal(host)}"


def mapped_tables(cfg: Config) -> list[str]:
    """Fully qualified tables the mapping reads (``schema.table``; the database for MySQL)."""
    from cdc.normalize.normalizer import table_name

    default = "public" if cfg.source.kind == "postgres" else cfg.source.database
    return [table_name(cfg.stock.table, default)] if cfg.stock else []


def pg_dsn_part(dsn: str, key: str) -> str | None:
    import psycopg2.extensions

    try:
        return psycopg2.extensions.parse_dsn(dsn).get(key)
    except Exception:
        return None


@dataclass
class Statement:
    sql: str  # may contain _MARK
    note: str = ""  # why, printed as a comment

    def printable(self, placeholder: str) -> str:
        text = self.sql.replace(_MARK, placeholder) + ";"
        return f"{text}  -- {self.note}" if self.note else text

    def executable(self, secret: str | None) -> tuple[str, tuple[Any, ...] | None]:
        """For a DB-API driver with %s parameters (psycopg2, PyMySQL)."""
        if _MARK not in self.sql:
            return self.sql, None
        if secret is None:
            raise ValueError("a password is needed for this statement")
        return self.sql.replace("%", "%%").replace(_MARK, "%s"), (secret,)


@dataclass
class Plan:
    dialect: str
    role: str
    password_env: str
    header: list[str] = field(default_factory=list)
    statements: list[Statement] = field(default_factory=list)
    footer: list[str] = field(default_factory=list)

    def placeholder(self) -> str:
        return ":'erpsync_password'" if self.dialect == "postgres" else f"'<value of ${self.password_env}>'"

    def render(self) -> str:
        out = [f"-- {line}" for line in self.header]
        out += [s.printable(self.placeholder()) for s in self.statements]
        out += [f"-- {line}" for line in self.footer]
        return "\n".join(out) + "\n"


@dataclass
class PgLive:
    """What the server already has (so the plan neither fails on re-runs nor adds needless statements)."""
    role_exists: bool = False
    publication_tables: set[str] | None = None  # None: no publication; FOR ALL TABLES counts as all
    needs_full_identity: dict[str, str] = field(default_factory=dict)  # table -> reason


def plan_postgres(cfg: Config, role: str, password_env: str, live: PgLive | None = None) -> Plan:
    assert cfg.source.kind == "postgres"
    live = live or PgLive()
    src = cfg.source
    dbname = pg_dsn_part(src.dsn.get_secret_value(), "dbname") or "postgres"
    tables = mapped_tables(cfg)
    p = Plan("postgres", role, password_env)
    p.header = [f"erpsync least-privilege setup for PostgreSQL database {dbname!r}.",
                "Review, then run as a superuser (or the tables' owner for the publication), e.g.:",
                f'  psql "$ADMIN_DSN" -v erpsync_password="${password_env}" -f erpsync-setup.sql',
                "or: erpsync setup --config FILE --apply --admin-dsn-env ADMIN_DSN"]
    r = pg_ident(role)
    verb = "ALTER" if live.role_exists else "CREATE"
    p.statements.append(Statement(f"{verb} ROLE {r} WITH LOGIN REPLICATION PASSWORD {_MARK}",
                                  "REPLICATION: create the slot and read the WAL stream"))
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


def plan_mysql(cfg: Config, role: str, password_env: str, host: str = "%") -> Plan:
    assert cfg.source.kind == "mysql"
    acct = my_account(role, host)
    p = Plan("mysql", role, password_env)
    p.header = ["erpsync least-privilege setup for MySQL / MariaDB. Review, then run as an admin.",
                f"The password placeholder stands for the value of ${password_env} (never printed);",
                "or: erpsync setup --config FILE --apply --admin-dsn-env ADMIN_DSN "
                "(ADMIN_DSN=mysql://root:pw@host:3306/)"]
    p.statements.append(Statement(f"CREATE USER IF NOT EXISTS {acct} IDENTIFIED BY {_MARK}"))
    p.statements.append(Statement(f"ALTER USER {acct} IDENTIFIED BY {_MARK}", "same password on re-runs"))
    p.statements.append(Statement(f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {acct}",
                                  "read the binlog; SHOW MASTER STATUS / BINARY LOGS"))
    for t in mapped_tables(cfg):
        db, _, table = t.partition(".")
        p.statements.append(Statement(f"GRANT SELECT ON {my_ident(db)}.{my_ident(table)} TO {acct}",
                                      "snapshot and reconcile read only mapped tables"))
    p.footer = ["Server settings erpsync needs (my.cnf, [mysqld]): log_bin=ON, binlog_format=ROW,",
                "binlog_row_image=FULL, binlog_row_metadata=FULL, binlog_expire_logs_seconds >= your outage "
                "budget; check with `erpsync doctor`."]
    return p


def pg_live(conn: Any, cfg: Config, role: str) -> PgLive:
    """Inspect the server for plan_postgres (any role can read these catalogs)."""
    live = PgLive()
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        live.role_exists = cur.fetchone() is not None
        cur.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (cfg.source.publication,))
        row = cur.fetchone()
        if row is not None:
            if row[0]:
                live.publication_tables = set(mapped_tables(cfg))
            else:
                cur.execute("SELECT schemaname || '.' || tablename FROM pg_publication_tables "
                            "WHERE pubname = %s", (cfg.source.publication,))
                live.publication_tables = {r[0] for r in cur.fetchall()}
        for t in mapped_tables(cfg):
            ident = pg_replica_identity(cur, t)
            if ident and ident[1]:
                live.needs_full_identity[t] = ident[1]
    return live


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


def apply_plan(plan: Plan, conn: Any) -> list[str]:
    """Run the plan's statements on an admin connection (autocommit); returns the printable forms."""
    secret = os.environ.get(plan.password_env)
    done = []
    with conn.cursor() as cur:
        for st in plan.statements:
            q, args = st.executable(secret)
            cur.execute(q, args)
            done.append(st.printable("<redacted>"))
    return done


def mysql_dsn_args(dsn: str) -> dict[str, Any]:
    """``mysql://user:password@host:port/`` → pymysql.connect() keyword arguments."""
    u = urlparse(dsn)
    if u.scheme not in ("mysql", "mariadb"):
        raise ValueError("expected a mysql://user:password@host:port/ URL")
    return {"host": u.hostname or "127.0.0.1", "port": u.port or 3306, "user": unquote(u.username or "root"),
            "password": unquote(u.password or ""), "autocommit": True}
