"""The ``erpsync`` command line. Exit codes: 0 ok, 1 runtime failure, 2 bad usage / config / schema."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from erpsync import __version__

log = logging.getLogger("erpsync")


class Fail(click.ClickException):
    """A failure with a message for the operator and an exit code (1 runtime, 2 config)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = code

    def show(self, file: Any = None) -> None:
        from erpsync.logs import redact

        # not a log record, so the log filter never sees it: redact here too
        click.echo(f"error: {redact(self.format_message())}", err=True)


def _register_secrets(node: Any) -> None:
    """Every SecretStr in the config (and a DSN's password on its own) becomes redactable in any output."""
    from pydantic import BaseModel, SecretStr

    from erpsync.logs import register_secret

    if isinstance(node, SecretStr):
        value = node.get_secret_value()
        register_secret(value)
        from erpsync.setup_sql import pg_dsn_part

        register_secret(pg_dsn_part(value, "password"))
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            _register_secrets(getattr(node, name, None))
    elif isinstance(node, list | tuple):
        for v in node:
            _register_secrets(v)
    elif isinstance(node, dict):
        for v in node.values():
            _register_secrets(v)


def _load(config: str) -> Any:
    from erpsync.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise Fail(str(e), 2) from None
    _register_secrets(cfg)
    return cfg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="erpsync")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", default="auto", show_default=True, type=click.Choice(["auto", "json", "text"]),
              help="auto: JSON lines unless stderr is a terminal")
def main(log_level: str, log_format: str) -> None:
    """erpsync: stream ERP stock and prices to online shops, in near real time."""
    from erpsync.logs import setup

    setup(log_level, log_format)


@main.command()
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False), help="YAML config file")
@click.option("--drain-seconds", default=5.0, show_default=True,
              help="on SIGTERM, keep pushing pending facts for up to this long")
@click.option("--wait-for-erp", default=300.0, show_default=True,
              help="seconds to wait at start for an ERP that refuses connections, when the outbox exists "
                   "(a reboot may start erpsync before the database); then exit 1")
def run(config: str, drain_seconds: float, wait_for_erp: float) -> None:
    """Stream ERP changes to the shops until SIGTERM/SIGINT (then flush, confirm and exit 0)."""
    from cdc.changes import SourceError
    from erpsync.erpdb import ConnectError, SchemaError, check_mapping
    from erpsync.pipeline import Pipeline

    cfg = _load(config)
    stop = _stop_on_signals()
    # An outbox that already exists has worked here before: an ERP that is restarting (or not up yet after
    # a reboot) and a full or read-only outbox disk are faults to wait out, not configuration to stop for.
    outbox_worked = _outbox_exists(cfg.outbox_path())
    attempt = 0
    give_up = time.monotonic() + wait_for_erp
    while cfg.source.kind != "debezium":  # a Debezium bridge has no ERP connection to check against
        try:
            check_mapping(cfg)
            break
        except SchemaError as e:
            raise Fail(f"{config}: {e}", 2) from None
        except ConnectError as e:
            left = give_up - time.monotonic()
            if not (outbox_worked and _erp_restarting(str(e)) and left > 0):
                raise Fail(f"{config}: {e}") from None
            attempt += 1
            delay = min(30.0, 0.5 * 2 ** (attempt - 1), left)
            log.warning("%s; retrying in %.1fs (up to --wait-for-erp)", str(e).strip().splitlines()[0], delay)
            if stop.wait(delay):
                return
    from erpsync.ops_server import OpsListenError

    if cfg.reconcile and cfg.reconcile.schedule:  # the drift report runs beside the stream, same stop
        from erpsync.cli.reconcile import scheduled_job
        from reconciler.schedule import start_thread

        start_thread(cfg.reconcile.schedule, scheduled_job(cfg), stop)
    streamed = False
    attempt = 0
    pipeline: Any = None
    while True:
        # The ERP may restart or drop us: reconnect with backoff from the stored position (nothing is
        # confirmed beyond the outbox, so a reconnect can only re-read, never skip). Configuration and
        # prerequisite problems stop the service instead, with the message saying what to fix.
        pipeline = None
        try:
            pipeline = Pipeline(cfg, drain_seconds=drain_seconds, serve_ops=True)
            stats = pipeline.run(stop)
            break
        except OpsListenError as e:
            raise Fail(f"{config}: {e} (set ops.listen to a free host:port)") from None
        except SourceError as e:
            msg = str(e)
            # lost / refused connections end when the ERP is back; anything else needs a person
            lost = "cannot connect" in msg or ("was lost" in msg and "server_id" not in msg)
            back_soon = streamed or _progressed(pipeline) or (outbox_worked and _erp_restarting(msg))
            if not (lost and back_soon):
                raise Fail(msg) from None
            reason: Exception = e
            what = "source connection lost"
        except _transient_errors() as e:
            reason, what = e, "source connection lost"
        except sqlite3.OperationalError as e:  # outbox disk full / read-only: retry once it worked before
            if not (streamed or outbox_worked or _progressed(pipeline)):
                raise Fail(f"{config}: outbox.path: {e}") from None
            reason, what = e, f"outbox {cfg.outbox_path()} not writable"
        progressed = _progressed(pipeline)
        streamed = streamed or progressed
        if stop.is_set():
            return
        attempt = 1 if progressed else attempt + 1
        delay = min(30.0, 0.5 * 2 ** (attempt - 1))
        log.warning("%s (%s); reconnecting in %.1fs", what, _short(reason), delay)
        stop.wait(delay)
    log.info("stopped", extra={"fields": {"transactions": stats.transactions, "changes": stats.changes,
                                          "position": stats.position}})


@main.command()
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False), help="YAML config file")
@click.option("--sink", "sink_name", required=True, help="the sink (name in the config) to deliver")
@click.option("--partitions", default="all", show_default=True, help="e.g. 0-3 or 0,2,4 (bus: nats)")
@click.option("--name", default=None, help="worker name in metrics and logs (default: host-pid)")
@click.option("--batch", default=500, show_default=True, help="messages per fetch and partition")
@click.option("--ack-wait", default=60.0, show_default=True, help="seconds before JetStream redelivers")
@click.option("--metrics-listen", default=None, help="host:port for Prometheus metrics (off by default)")
def worker(config: str, sink_name: str, partitions: str, name: str | None, batch: int, ack_wait: float,
           metrics_listen: str | None) -> None:
    """Deliver one sink's facts from the NATS bus (durable pull consumers) until SIGTERM/SIGINT."""
    import os
    import socket

    from erpsync.config import ConfigError
    from erpsync.delivery.nats_bus import parse_partitions
    from erpsync.delivery.nats_worker import Worker

    cfg = _load(config)
    if cfg.bus.kind != "nats":
        raise Fail(f"{config}: bus: `erpsync worker` needs bus: {{kind: nats, ...}}", 2)
    try:
        parts = parse_partitions(partitions, cfg.bus.partitions)
        cfg.sink(sink_name)
    except (ValueError, ConfigError) as e:
        raise Fail(str(e), 2) from None
    if metrics_listen:
        from prometheus_client import start_http_server

        from erpsync.metrics import REGISTRY

        host, _, port = metrics_listen.rpartition(":")
        start_http_server(int(port), host or "127.0.0.1", registry=REGISTRY)
    stop = _stop_on_signals()
    Worker(cfg, sink_name, parts, name=name or f"{socket.gethostname()}-{os.getpid()}", batch=batch,
           ack_wait=ack_wait).run(stop)


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors after which `run` reconnects instead of exiting: the connection, not the config, failed."""
    import psycopg2
    import pymysql

    return (ConnectionError, TimeoutError, psycopg2.OperationalError, psycopg2.InterfaceError,
            pymysql.err.OperationalError, pymysql.err.InterfaceError)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM / SIGINT: the long-running commands finish their batch, then stop."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping after the current batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _progressed(pipeline: Any) -> bool:
    """This attempt got as far as a position (snapshot done or a commit streamed)."""
    return pipeline is not None and pipeline.stats.position is not None


def _outbox_exists(path: str | Path) -> bool:
    # Not opened: on a full disk even a read-only open fails (SQLite needs its -shm file).
    try:
        return Path(path).stat().st_size > 0
    except OSError:
        return False


_RESTARTING = ("connection refused", "the database system is", "can't connect", "could not connect",
               "timeout expired", "timed out", "lost connection", "server closed the connection")


def _erp_restarting(message: str) -> bool:
    """A connection failure only time fixes (refused, starting up, shutting down) — not credentials."""
    m = message.lower()
    return any(t in m for t in _RESTARTING) and "password" not in m and "access denied" not in m


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


@main.command()
@click.option("--transactions", "-n", default=2000, show_default=True, help="ERP transactions in the burst")
@click.option("--rate", default=500, show_default=True, help="ERP transactions per second")
@click.option("--skus", default=200, show_default=True)
def demo(transactions: int, rate: int, skus: int) -> None:
    """Run the whole path on a throwaway PostgreSQL and a shop emulator, then print a summary."""
    from erpsync.demo.run import run_demo

    sys.exit(run_demo(transactions=transactions, rate=rate, skus=skus))


@main.command()
@click.argument("platform")
@click.option("--port", default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--skus", default=1000, show_default=True, help="catalogue size (shop platforms)")
@click.option("--secret-env", default=None, help="webhook: env var holding the HMAC secret")
def emulate(platform: str, port: int, host: str, skus: int, secret_env: str | None) -> None:
    """Serve a shop API emulator (webhook, shopify, woocommerce, magento, prestashop) in the foreground."""
    import os

    if platform == "webhook":
        from sinks.emulators.webhook import WebhookEmulator

        emu: Any = WebhookEmulator(secret=os.environ.get(secret_env) if secret_env else None)
    else:
        try:
            from sinks.registry import make_emulator
        except ImportError:
            raise Fail(f"unknown platform {platform!r}", 2) from None
        try:
            emu = make_emulator(platform, skus=skus)
        except (KeyError, ValueError):
            raise Fail(f"unknown platform {platform!r}", 2) from None
    click.echo(f"{platform} emulator on http://{host}:{port} (Ctrl-C to stop)", err=True)
    with contextlib.suppress(KeyboardInterrupt):
        emu.serve_forever(port, host)


@main.command()
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--reset", is_flag=True, help="forget the stored position so the next run re-snapshots")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def snapshot(config: str, reset: bool, yes: bool) -> None:
    """Re-snapshot control: ``--reset`` drops the slot and stored position; the next ``run`` re-snapshots."""
    from cdc.outbox.store import Outbox

    cfg = _load(config)
    if not reset:
        raise Fail("nothing to do: pass --reset to make the next run take a fresh snapshot", 2)
    if not yes and not click.confirm("Forget the stored position and re-snapshot on the next run?"):
        raise Fail("aborted", 1)
    ob = Outbox(cfg.outbox_path())
    ob.reset()
    ob.close()
    if cfg.source.kind == "postgres":
        from erpsync.pipeline import make_source

        src: Any = make_source(cfg, [cfg.stock.table] if cfg.stock else [])
        if hasattr(src, "drop_slot"):
            src.drop_slot()
        src.close()
    click.echo("stored position cleared; the next `erpsync run` takes a fresh snapshot")


@main.group()
def dlq() -> None:
    """Inspect and act on the dead-letter table (facts a shop refused)."""


def _outbox_conn(config: str) -> Any:
    from cdc.outbox.store import connect

    cfg = _load(config)
    path = cfg.outbox_path()
    if not Path(path).exists():
        raise Fail(f"{config}: outbox.path: {path} does not exist (has `erpsync run` ever run?)")
    return connect(path, durable=False)


@dlq.command("list")
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--sink", default=None)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def dlq_list_cmd(config: str, sink: str | None, as_json: bool) -> None:
    """List dead letters (oldest first)."""
    from cdc.outbox.store import dlq_list
    from erpsync.logs import redact

    rows = dlq_list(_outbox_conn(config), sink)
    if as_json:  # redacted: a shop's error text may echo our token or signature back
        click.echo(redact(json.dumps(rows, default=str, indent=2)))
        return
    if not rows:
        click.echo("dead-letter table is empty")
        return
    for r in rows:
        click.echo(redact(f"{r['sink']:<14} {r['kind']:<6} {r['sku']:<24} {r['scope']:<12} "
                          f"v{r['version']:<8} tries={r['attempts']:<3} {r['error']}"))


@dlq.command("retry")
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--sink", default=None)
@click.option("--sku", "skus", multiple=True, help="only these SKUs (repeatable)")
def dlq_retry_cmd(config: str, sink: str | None, skus: tuple[str, ...]) -> None:
    """Queue dead letters again (with the current value) for the running service to push."""
    from cdc.outbox.store import dlq_retry

    n = dlq_retry(_outbox_conn(config), sink, list(skus) or None)
    click.echo(f"{n} dead letter(s) queued again")


@dlq.command("drop")
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--sink", default=None)
@click.option("--sku", "skus", multiple=True)
def dlq_drop_cmd(config: str, sink: str | None, skus: tuple[str, ...]) -> None:
    """Forget dead letters (the shop keeps whatever it has)."""
    from cdc.outbox.store import dlq_drop

    n = dlq_drop(_outbox_conn(config), sink, list(skus) or None)
    click.echo(f"{n} dead letter(s) dropped")


@main.group("config")
def config_group() -> None:
    """Validate a config file or print its JSON Schema."""


@config_group.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--offline", is_flag=True, help="do not check against the live ERP schema")
def config_validate(file: str, offline: bool) -> None:
    """Check FILE (and, unless --offline, its mapping against the live ERP schema)."""
    from erpsync.erpdb import ConnectError, SchemaError, check_mapping

    cfg = _load(file)
    if not offline:
        try:
            check_mapping(cfg)
        except SchemaError as e:
            raise Fail(f"{file}: {e}", 2) from None
        except ConnectError as e:
            raise Fail(f"{file}: {e}") from None
    click.echo(f"{file}: OK" + (" (not checked against the ERP)" if offline else ""))


@config_group.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the config file (for editors)."""
    from erpsync.config import Config

    click.echo(json.dumps(Config.model_json_schema(), indent=2))



# -- operations: status, doctor, setup, teardown -------------------------------------------------------
def _emit_json(obj: Any) -> None:
    from erpsync.logs import redact

    click.echo(redact(json.dumps(obj, default=str, indent=2)))


@main.command()
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (same data)")
@click.option("--no-erp", is_flag=True, help="read only the outbox; do not connect to the ERP")
def status(config: str, as_json: bool, no_erp: bool) -> None:
    """Position, lag, pending / DLQ / last error per sink, slot or binlog retention. Exit 1 on a failure.

    Safe while `run` is running: the outbox is opened read-only."""
    from erpsync.status import FAIL, gather, render

    report = gather(_load(config), erp=not no_erp)
    if as_json:
        _emit_json(report)
    else:
        from erpsync.logs import redact

        click.echo(redact(render(report)))
    if report["status"] == FAIL:
        sys.exit(1)


@main.command()
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def doctor(config: str, as_json: bool) -> None:
    """Check every prerequisite on the ERP with the configured credentials (PASS / WARN / FAIL + fixes).
    Exit 1 on any FAIL."""
    from erpsync.doctor import FAIL, render, run_doctor

    checks = run_doctor(_load(config))
    if as_json:
        _emit_json({"ok": not any(c.status == FAIL for c in checks), "checks": [c.as_dict() for c in checks]})
    else:
        from erpsync.logs import redact

        click.echo(redact(render(checks)))
    if any(c.status == FAIL for c in checks):
        sys.exit(1)


@main.command()
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

    cfg = _load(config)
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


@main.command()
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def teardown(config: str, yes: bool) -> None:
    """Drop erpsync's replication slot and publication on the ERP (decommissioning: no slot left behind
    retaining WAL). The outbox keeps its facts; its stored position (of the dropped slot) is cleared."""
    cfg = _load(config)
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

from erpsync.cli.reconcile import reconcile as _reconcile_cmd  # noqa: E402  (the command lives with its package)

main.add_command(_reconcile_cmd)

if __name__ == "__main__":
    main()
