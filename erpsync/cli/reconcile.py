"""``erpsync reconcile``: exit 0 no drift, 3 drift found, 1 error, 2 bad usage / config."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

import click

from erpsync.config import Config
from reconciler.run import ReconcileResult

log = logging.getLogger("erpsync.reconcile")


def _echo_result(result: ReconcileResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"run_id": result.run_id, "exit_code": result.exit_code,
                               "drift_total": result.drift_total, "html": str(result.html_path),
                               "csv": str(result.csv_path), "emailed": result.emailed,
                               "sinks": result.summaries}, default=str, indent=2))
        return
    from reconciler.run import text_summary

    click.echo(text_summary(result).rsplit("\n\n", 1)[0])
    click.echo(f"report: {result.html_path}\ncsv:    {result.csv_path}"
               + ("\ne-mailed" if result.emailed else ""))


def publish_drift(result: ReconcileResult) -> None:
    """erpsync_drift_items{sink,kind} from a run's summaries (the reconciler itself keeps no metrics)."""
    from erpsync import metrics
    from reconciler.diff import DRIFT_KINDS

    for s in result.summaries:
        if s.get("error"):
            continue
        for kind in DRIFT_KINDS:
            metrics.drift_items.labels(s["sink"], kind).set(int(s.get(kind) or 0))


def scheduled_job(cfg: Config, **kw: Any) -> Callable[[], object]:
    """A reconcile for the scheduler thread of ``erpsync run`` (errors are logged by the scheduler)."""
    from reconciler.run import reconcile as run_reconcile

    def job() -> object:
        result = run_reconcile(cfg, progress=False, **kw)
        publish_drift(result)
        log.info("scheduled reconcile #%s: %s drift, report %s", result.run_id, result.drift_total,
                 result.html_path)
        return result

    return job


@click.command()
@click.option("--config", "-c", required=True, type=click.Path(dir_okay=False), help="YAML config file")
@click.option("--sink", "sinks", multiple=True, help="only this sink (repeatable; default: all)")
@click.option("--heal/--no-heal", default=None, help="queue the ERP value for drifted keys "
              "(default: reconcile.heal)")
@click.option("--force", is_flag=True, help="heal even above reconcile.heal_max_percent of the catalogue")
@click.option("--schedule", is_flag=True, help="run on reconcile.schedule until SIGTERM")
@click.option("--no-email", is_flag=True, help="do not send the report by e-mail")
@click.option("--json", "as_json", is_flag=True, help="machine-readable summary")
@click.pass_context
def reconcile(ctx: click.Context, config: str, sinks: tuple[str, ...], heal: bool | None, force: bool,
              schedule: bool, no_email: bool, as_json: bool) -> None:
    """Compare the ERP (through the mapping) with each shop, report drift, optionally heal it.

    Exit code: 0 no drift, 3 drift found, 1 error, 2 config."""
    from erpsync.cli.common import Fail, check_mapping_or_fail, load
    from reconciler.run import reconcile as run_reconcile

    cfg = load(config)
    unknown = set(sinks) - {s.name for s in cfg.sinks}
    if unknown:
        raise Fail(f"{config}: sinks: no sink named {', '.join(sorted(unknown))}", 2)
    check_mapping_or_fail(cfg, config)

    def once() -> int:
        result = run_reconcile(cfg, sinks=list(sinks) or None, heal_drift=heal, force=force,
                               progress=None, send_email=not no_email)
        publish_drift(result)
        _echo_result(result, as_json)
        for err in result.errors:
            click.echo(f"error: {err}", err=True)
        return result.exit_code

    if not schedule:
        try:
            code = once()
        except Exception as e:  # SMTP, history file locked, duckdb / driver errors: no common base
            raise Fail(f"reconcile failed: {type(e).__name__}: {e}") from None
        ctx.exit(code)
    if not cfg.reconcile or not cfg.reconcile.schedule:
        raise Fail(f"{config}: reconcile.schedule: not set (needed by --schedule)", 2)
    from reconciler.schedule import run_on_schedule

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_on_schedule(cfg.reconcile.schedule, once, stop)
