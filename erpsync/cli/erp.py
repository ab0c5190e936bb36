"""``erpsync status | doctor | setup | teardown``: the ERP-facing operations."""

from __future__ import annotations

import sys

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
@click.option("--adopt-role", is_flag=True,
              help="take over an existing role/user erpsync setup did not create (resets its password)")
def setup(config: str, print_sql: bool, apply: bool, admin_dsn_env: str | None, role: str | None,
          password_env: str, host_pattern: str, adopt_role: bool) -> None:
    """Least-privilege role, grants and publication for erpsync (print for review, or --apply). Only a
    role setup created itself is changed: an existing one needs --adopt-role."""
    import os

    from cdc.sources.admin import SetupError, SetupRequest, apply_plan
    from cdc.sources.registry import plugin_for
    from erpsync.doctor import mapped_tables

    cfg = load(config)
    admin_dsn = os.environ.get(admin_dsn_env) if admin_dsn_env else None
    if apply and not admin_dsn:
        raise Fail("--apply needs --admin-dsn-env VAR naming a set environment variable", 2)
    if apply and not os.environ.get(password_env):
        raise Fail(f"--apply needs the new role's password in ${password_env} (see --password-env)", 2)
    from erpsync.logs import register_secret

    register_secret(admin_dsn)
    register_secret(os.environ.get(password_env))
    req = SetupRequest(mapped_tables(cfg), role, password_env, host=host_pattern, admin_dsn=admin_dsn,
                       admin_dsn_env=admin_dsn_env, apply=apply, adopt_role=adopt_role)
    try:
        plan, conn = plugin_for(cfg.source.kind).setup_plan(cfg.source, req)
    except SetupError as e:
        raise Fail(str(e)) from None
    try:
        if not apply:
            click.echo(plan.render(), nl=False)
            return
        try:
            for line in apply_plan(plan, conn):
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
    from cdc.changes import SourceError
    from cdc.sources.registry import plugin_for

    cfg = load(config)
    plugin = plugin_for(cfg.source.kind)
    question = plugin.teardown_question(cfg.source)
    if question and not yes and not click.confirm(question):
        raise Fail("aborted", 1)
    try:
        position_void = plugin.teardown(cfg.source, click.echo)
    except SourceError as e:
        raise Fail(str(e)) from None
    from cdc.outbox.store import Outbox

    if position_void and cfg.outbox_path().exists():
        ob = Outbox(cfg.outbox_path())
        ob.reset()  # the stored position refers to the dropped slot
        ob.close()
