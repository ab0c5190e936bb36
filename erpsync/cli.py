"""The ``erpsync`` command line. Exit codes: 0 ok, 1 runtime failure, 2 bad usage / config / schema."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
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
        click.echo(f"error: {self.format_message()}", err=True)


def _load(config: str) -> Any:
    from erpsync.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as e:
        raise Fail(str(e), 2) from None


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
def run(config: str, drain_seconds: float) -> None:
    """Stream ERP changes to the shops until SIGTERM/SIGINT (then flush, confirm and exit 0)."""
    from cdc.changes import SourceError
    from erpsync.erpdb import ConnectError, SchemaError, check_mapping
    from erpsync.pipeline import Pipeline

    cfg = _load(config)
    try:
        check_mapping(cfg)
    except SchemaError as e:
        raise Fail(f"{config}: {e}", 2) from None
    except ConnectError as e:
        raise Fail(f"{config}: {e}") from None
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping after the current batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        pipeline = Pipeline(cfg, drain_seconds=drain_seconds)
        stats = pipeline.run(stop)
    except SourceError as e:
        raise Fail(str(e)) from None
    log.info("stopped", extra={"fields": {"transactions": stats.transactions, "changes": stats.changes,
                                          "position": stats.position}})


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
        except KeyError:
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
    from cdc.outbox import Outbox

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
    from cdc.outbox import connect

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
    from cdc.outbox import dlq_list

    rows = dlq_list(_outbox_conn(config), sink)
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    if not rows:
        click.echo("dead-letter table is empty")
        return
    for r in rows:
        click.echo(f"{r['sink']:<14} {r['kind']:<6} {r['sku']:<24} {r['scope']:<12} v{r['version']:<8} "
                   f"tries={r['attempts']:<3} {r['error']}")


@dlq.command("retry")
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--sink", default=None)
@click.option("--sku", "skus", multiple=True, help="only these SKUs (repeatable)")
def dlq_retry_cmd(config: str, sink: str | None, skus: tuple[str, ...]) -> None:
    """Queue dead letters again (with the current value) for the running service to push."""
    from cdc.outbox import dlq_retry

    n = dlq_retry(_outbox_conn(config), sink, list(skus) or None)
    click.echo(f"{n} dead letter(s) queued again")


@dlq.command("drop")
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--sink", default=None)
@click.option("--sku", "skus", multiple=True)
def dlq_drop_cmd(config: str, sink: str | None, skus: tuple[str, ...]) -> None:
    """Forget dead letters (the shop keeps whatever it has)."""
    from cdc.outbox import dlq_drop

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


if __name__ == "__main__":
    main()
