"""``erpsync snapshot --reset`` and ``erpsync dlq``: acting on the outbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from erpsync.cli.common import Fail, load


@click.command()
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--reset", is_flag=True, help="forget the stored position so the next run re-snapshots")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def snapshot(config: str, reset: bool, yes: bool) -> None:
    """Re-snapshot control: ``--reset`` drops the slot and stored position; the next ``run`` re-snapshots."""
    from cdc.outbox.store import Outbox

    cfg = load(config)
    if not reset:
        raise Fail("nothing to do: pass --reset to make the next run take a fresh snapshot", 2)
    if not yes and not click.confirm("Forget the stored position and re-snapshot on the next run?"):
        raise Fail("aborted", 1)
    from cdc.changes import SourceError
    from cdc.sources.registry import plugin_for
    from erpsync.doctor import mapped_tables

    try:  # the ERP first: with the ERP down nothing is cleared (a cleared position beside a live slot
        # would make the next run stream from the slot's old position, not snapshot)
        plugin_for(cfg.source.kind).reset_snapshot(cfg.source, mapped_tables(cfg))
    except SourceError as e:
        raise Fail(f"snapshot --reset: nothing was reset ({e})") from None
    ob = Outbox(cfg.outbox_path())
    ob.reset()
    ob.close()
    click.echo("stored position cleared; the next `erpsync run` takes a fresh snapshot")


@click.group()
def dlq() -> None:
    """Inspect and act on the dead-letter table (facts a shop refused)."""


def _outbox_conn(config: str) -> Any:
    from cdc.outbox.store import connect

    cfg = load(config)
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
    from cdc.outbox.views import dlq_list
    from erpsync.logs import neutralise, redact

    rows = dlq_list(_outbox_conn(config), sink)
    if as_json:  # redacted: a shop's error text may echo our token or signature back
        click.echo(redact(json.dumps(rows, default=str, indent=2)))
        return
    if not rows:
        click.echo("dead-letter table is empty")
        return
    for r in rows:  # SKUs and shop errors with their control characters escaped: one line, no terminal codes
        click.echo(neutralise(redact(f"{r['sink']:<14} {r['kind']:<6} {r['sku']:<24} {r['scope']:<12} "
                                     f"v{r['version']:<8} tries={r['attempts']:<3} {r['error']}")))


@dlq.command("retry")
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--sink", default=None)
@click.option("--sku", "skus", multiple=True, help="only these SKUs (repeatable)")
def dlq_retry_cmd(config: str, sink: str | None, skus: tuple[str, ...]) -> None:
    """Queue dead letters again (with the current value) for the running service to push."""
    from cdc.outbox.views import dlq_retry

    n = dlq_retry(_outbox_conn(config), sink, list(skus) or None)
    click.echo(f"{n} dead letter(s) queued again")


@dlq.command("drop")
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False))
@click.option("--sink", default=None)
@click.option("--sku", "skus", multiple=True)
def dlq_drop_cmd(config: str, sink: str | None, skus: tuple[str, ...]) -> None:
    """Forget dead letters (the shop keeps whatever it has)."""
    from cdc.outbox.views import dlq_drop

    n = dlq_drop(_outbox_conn(config), sink, list(skus) or None)
    click.echo(f"{n} dead letter(s) dropped")


