"""``erpsync status | doctor | setup | teardown``: the ERP-facing operations."""

from __future__ import annotations

import sys
from typing import Any

import click

from erpsync.cli.common import Fail, emit_json, load


@click.command()
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (same data)")
@click.option("--no-erp", is_flag=True, help="read only the outbox; do not connect to the ERP")
def status(config: str, as_json: bool, no_erp: bool) -> None:
    """Position, lag, pending / DLQ / last error per sink, slot or binlog retention. Exit 1 on a failure.

    Safe while `run` is running: the outbox is opened read-only."""
    from erpsync.status import FAIL, gather, render

    report = gather(load(config), erp=not no_erp)
    if as_json:
        emit_json(report)
    else:
        from erpsync.logs import redact

        click.echo(redact(render(report)))
    if report["status"] == FAIL:
        sys.exit(1)


@click.command()
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def doctor(config: str, as_json: bool) -> None:
    """Check every prerequisite on the ERP with the configured credentials (PASS / WARN / FAIL + fixes).
    Exit 1 on any FAIL."""
    from erpsync.doctor import FAIL, render, run_doctor

    checks = run_doctor(load(config))
    if as_json:
        emit_json({"ok": not any(c.status == FAIL for c in checks), "checks": [c.as_dict() for c in checks]})
    else:
        from erpsync.logs import redact

        click.echo(redact(render(checks)))
    if any(c.status == FAIL for c in checks):
        sys.exit(1)


@click.command()
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--print-sql", "print_sql", is_flag=True, help="print the SQL for review (the default)")
@click.option("--apply", is_flag=True, help="run it, connected as the DSN in --admin-dsn-env")
@click.option("--admin-dsn-env", default=None, metavar="VAR",
              help="env var holding an admin DSN (libpq string, or mysql://user:pw@host:port/)")
@click.option("--role", default=None, help="role/user to create (default: the config's user)")
@click.option("--password-env", default="ERPSYNC_DB_PASSWORD", show_default=True, metavar="VAR",
              help="env var holding the new role's password (never printed)")
@click.option("--host", "host_pattern", default="%", show_default=True, help="MySQL: the user's host part")
def setup(config: str, print_sql: bool, apply: bool, admin_dsn_env: str | None, role: str | None,
          password_env: str, host_pattern: str) -> None:
    """Least-privilege role, grants and publication for erpsync (print for review, or --apply)."""
    import os

    from erpsync import setup_sql

    cfg = load(config)
    admin_dsn = os.environ.get(admin_dsn_env) if admin_dsn_env else None
    if apply and not admin_dsn:
        raise Fail("--apply needs --admin-dsn-env VAR naming a set environment variable", 2)
    if apply and not os.environ.get(password_env):
        raise Fail(f"--apply needs the new role's password in ${password_env} (see --password-env)", 2)
    from erpsync.logs import register_secret

    register_secret(admin_dsn)
    register_secret(os.environ.get(password_env))
    if cfg.source.kind == "postgres":
        import psycopg2

        dsn_user = setup_sql.pg_dsn_part(cfg.source.dsn.get_secret_value(), "user")
        conn = None
        try:  # inspect the live server so the plan fits it (existing role/publication, keyless tables)
            conn = psycopg2.connect(admin_dsn or cfg.source.dsn.get_secret_value(), connect_timeout=10)
            conn.autocommit = True
            if role is None and dsn_user:
                with conn.cursor() as cur:
                    cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (dsn_user,))
                    row = cur.fetchone()
                # never hand a superuser's name to ALTER ROLE: a dedicated role is the point of setup
                role = "erpsync" if row and row[0] else dsn_user
            role = role or "erpsync"
            plan = setup_sql.plan_postgres(cfg, role, password_env, setup_sql.pg_live(conn, cfg, role))
        except psycopg2.Error as e:
            if apply:
                first = str(e).strip().splitlines()[0]
                raise Fail(f"cannot connect with ${admin_dsn_env}: {first}") from None
            role = role or (dsn_user if dsn_user not in (None, "postgres") else "erpsync")
            plan = setup_sql.plan_postgres(cfg, role, password_env)
            plan.header.append("(server not inspected: REPLICA IDENTITY needs and existing objects unknown)")
    else:
        import pymysql

        role = role or (cfg.source.user if cfg.source.user != "root" else "erpsync")
        plan = setup_sql.plan_mysql(cfg, role, password_env, host_pattern)
        conn = None
        if apply:
            try:
                conn = pymysql.connect(**setup_sql.mysql_dsn_args(admin_dsn or ""), connect_timeout=10)
            except (ValueError, pymysql.MySQLError) as e:
                raise Fail(f"cannot connect with ${admin_dsn_env}: {e}") from None
    try:
        if not apply:
            click.echo(plan.render(), nl=False)
            return
        try:
            for line in setup_sql.apply_plan(plan, conn):
                click.echo(f"applied: {line}")
        except Exception as e:
            raise Fail(f"setup failed: {str(e).strip().splitlines()[0]}") from None
    finally:
        if conn is not None:
            conn.close()
    click.echo("done; now run: erpsync doctor --config " + config)


@click.command()
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def teardown(config: str, yes: bool) -> None:
    """Drop erpsync's replication slot and publication on the ERP (decommissioning: no slot left behind
    retaining WAL). The outbox keeps its facts; its stored position (of the dropped slot) is cleared."""
    cfg = load(config)
    if cfg.source.kind != "postgres":
        click.echo("MySQL/MariaDB: erpsync keeps nothing on the server (no slot); drop the user if unused:")
        from erpsync.setup_sql import my_account

        click.echo(f"  DROP USER {my_account(cfg.source.user, '%')};")
        return
    from cdc.changes import SourceError
    from erpsync.pipeline import make_source

    s = cfg.source
    if not yes and not click.confirm(f"Drop replication slot {s.slot!r} and publication {s.publication!r}? "
                                     "The next `erpsync run` will take a full snapshot"):
        raise Fail("aborted", 1)
    src: Any = make_source(cfg, [])
    try:
        src.drop_slot()
        click.echo(f"replication slot {s.slot!r} dropped (or did not exist)")
        try:
            src.drop_publication()
            click.echo(f"publication {s.publication!r} dropped (or did not exist)")
        except Exception as e:
            from erpsync.setup_sql import pg_ident

            raise Fail(f"could not drop publication {s.publication!r} ({str(e).strip().splitlines()[0]}); "
                       f"as its owner run: DROP PUBLICATION {pg_ident(s.publication)};") from None
    except SourceError as e:
        raise Fail(str(e)) from None
    finally:
        src.close()
    from cdc.outbox.store import Outbox

    if cfg.outbox_path().exists():
        ob = Outbox(cfg.outbox_path())
        ob.reset()  # the stored position refers to the dropped slot
        ob.close()

