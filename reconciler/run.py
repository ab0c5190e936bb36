"""One reconcile run: ERP snapshot → per sink: shop snapshot, in-flight keys, diff, optional heal → history,
reports, e-mail. ``ReconcileResult.exit_code``: 0 no drift, 3 drift found, 1 error."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb

from cdc.mapping.model import LookupMapping, PriceMapping, StockMapping
from cdc.outbox.store import open_reader
from cdc.outbox.views import max_version, newer_keys, pending_keys, stored_position
from cdc.private_files import private_dir, private_umask
from cdc.redact import redact_values
from cdc.sources.registry import SourcePlugin, plugin_for
from reconciler import diff as d
from reconciler import history
from reconciler.config import ReconcileConfig, resolve
from reconciler.erp_snapshot import ErpSnapshot, snapshot_erp
from reconciler.heal import HealRefused, heal
from reconciler.report import LABELS, write_reports
from reconciler.shop_snapshot import CannotList, snapshot_shop
from sinks.base import Sink
from sinks.config import SinkConfig
from sinks.registry import make_sink as registry_make_sink

log = logging.getLogger("erpsync.reconcile")

EXIT_OK, EXIT_ERROR, EXIT_DRIFT = 0, 1, 3


@dataclass
class ReconcileResult:
    run_id: int
    summaries: list[dict[str, Any]] = field(default_factory=list)
    html_path: Path | None = None
    csv_path: Path | None = None
    emailed: bool = False
    seconds: float = 0.0

    @property
    def drift_total(self) -> int:
        return sum(int(s.get("drift_total") or 0) for s in self.summaries)

    @property
    def errors(self) -> list[str]:
        return [f"{s['sink']}: {s['error']}" for s in self.summaries
                if s.get("error") and not s.get("skipped")]

    @property
    def exit_code(self) -> int:
        if self.errors:
            return EXIT_ERROR
        return EXIT_DRIFT if self.drift_total else EXIT_OK


class Reconcilable(Protocol):
    """What a reconcile reads of the application's config (``erpsync.config.Config`` is one): the mapping,
    the source block (its plugin in cdc.sources.registry knows the database), the sinks, the schedule."""

    origin: str
    source: Any
    sinks: Sequence[SinkConfig]
    reconcile: ReconcileConfig | None
    lookups: dict[str, LookupMapping]
    stock: StockMapping | None
    prices: PriceMapping | None

    def outbox_path(self) -> Path: ...


@dataclass
class _ErpSide:
    """The ERP snapshot of a run and what the outbox said around it."""

    snap: ErpSnapshot
    caught_up: bool | None
    version_before: int  # outbox facts above this version were written during the run: in flight
    outbox: sqlite3.Connection | None


def wait_catch_up(ob: sqlite3.Connection, source: str, plugin: SourcePlugin, target: str,
                  timeout: float) -> bool | None:
    """Wait until the pipeline's stored position reaches ``target``: then every ERP change the snapshot
    saw is in the outbox (and in flight or delivered). None when no pipeline position exists at all."""
    deadline = time.monotonic() + timeout
    while True:
        stored = stored_position(ob, source)
        if stored is None:
            return None
        try:
            if plugin.compare(stored, target) >= 0:
                return True
        except Exception:  # a position format we cannot order: do not pretend
            return None
        if time.monotonic() >= deadline:
            log.warning("pipeline at %s has not reached the ERP snapshot position %s", stored, target)
            return False
        time.sleep(0.1)


def reconcile(cfg: Reconcilable, *, sinks: list[str] | None = None, heal_drift: bool | None = None,
              force: bool = False, progress: bool | None = False, send_email: bool = True,
              make_sink: Callable[[SinkConfig], Sink] = registry_make_sink) -> ReconcileResult:
    """One run over the selected sinks (default: all). ``result.summaries`` has one dict per sink (drift
    counts per kind, in flight, healed, error) — the caller publishes them as metrics if it has any."""
    rc = cfg.reconcile or ReconcileConfig()
    heal_drift = rc.heal if heal_drift is None else heal_drift
    selected = [s for s in cfg.sinks if not sinks or s.name in sinks]
    missing = set(sinks or []) - {s.name for s in cfg.sinks}
    if missing:
        raise ValueError(f"no sink named {', '.join(sorted(missing))}")
    started = time.monotonic()
    started_at = datetime.now(UTC)
    con = duckdb.connect()
    erp = _erp_side(cfg, rc, con, progress)
    summaries: list[dict[str, Any]] = []
    try:
        for scfg in selected:
            summary: dict[str, Any] = {"sink": scfg.name, "started_at": started_at,
                                       "erp_position": erp.snap.position, "erp_rows": erp.snap.rows,
                                       "caught_up": erp.caught_up, "healed": 0}
            summaries.append(summary)
            _reconcile_sink(cfg, rc, con, erp, scfg, summary, make_sink=make_sink, heal_drift=heal_drift,
                            force=force, by_name=bool(sinks), progress=progress)
            # a shop's error text may echo our credentials: summaries feed stdout, reports, mail, history
            summary.update({k: redact_values(v) for k, v in summary.items()})
    finally:
        if erp.outbox is not None:
            erp.outbox.close()
    result = _report(cfg, rc, con, summaries, send_email=send_email)
    result.seconds = time.monotonic() - started
    return result


def _erp_side(cfg: Reconcilable, rc: ReconcileConfig, con: duckdb.DuckDBPyConnection,
              progress: bool | None) -> _ErpSide:
    """The ERP snapshot into DuckDB, then wait for the pipeline to have read up to its position."""
    outbox_path = cfg.outbox_path()
    ob = open_reader(outbox_path) if Path(outbox_path).exists() else None
    version_before = max_version(ob) if ob else 0  # before the ERP snapshot: anything newer is in flight
    plugin = plugin_for(cfg.source.kind)
    erp_conn = plugin.connect_sql(cfg.source)
    try:
        snap = snapshot_erp(erp_conn, plugin.dialect(cfg.source), con, cfg, chunk_rows=rc.chunk_rows,
                            progress=progress)
    finally:
        erp_conn.close()
    caught_up = None
    if ob is not None and snap.position:
        caught_up = wait_catch_up(ob, plugin.source_id(cfg.source), plugin, snap.position,
                                  rc.catch_up_seconds)
    return _ErpSide(snap, caught_up, version_before, ob)


def _reconcile_sink(cfg: Reconcilable, rc: ReconcileConfig, con: duckdb.DuckDBPyConnection, erp: _ErpSide,
                    scfg: SinkConfig, summary: dict[str, Any], *, make_sink: Callable[[SinkConfig], Sink],
                    heal_drift: bool, force: bool, by_name: bool, progress: bool | None) -> None:
    """List one shop, diff it against the ERP side, heal if asked; the outcome goes into ``summary``."""
    ob = erp.outbox
    try:
        sink = make_sink(scfg)
    except Exception as e:
        summary["error"] = f"cannot create the sink: {e}"
        return
    try:
        before = pending_keys(ob, scfg.name) if ob else []
        try:
            snapshot_shop(sink, con, chunk_rows=rc.chunk_rows, progress=progress)
        except CannotList as e:
            summary["error"] = f"skipped: {e}"
            summary["skipped"] = not by_name  # only an error when asked for by name
            return
        after = pending_keys(ob, scfg.name) + newer_keys(ob, erp.version_before) if ob else []
        d.load_in_flight(con, before + after)
        res = d.classify(con, scfg.name, kinds=list(scfg.kinds), locations=list(scfg.locations) or None,
                         price_lists=list(scfg.price_lists) or None)
    except Exception as e:
        log.exception("reconcile of sink %s failed", scfg.name)
        summary["error"] = f"{type(e).__name__}: {e}"
        return
    finally:
        sink.close()
    summary.update(erp_keys=res.erp_keys, shop_keys=res.shop_keys, in_flight=res.in_flight,
                   drift_total=res.total, **res.counts)
    if heal_drift and res.total:
        sink_kinds = {s.name: list(s.kinds) for s in cfg.sinks}
        try:
            summary["healed"] = heal(con, cfg.outbox_path(), scfg.name, sink_kinds, catalogue=res.erp_keys,
                                     max_percent=rc.heal_max_percent, force=force,
                                     position=erp.snap.position or "")
        except HealRefused as e:
            summary["heal_refused"] = str(e)
            log.error("%s", e)
    log.info("reconciled %s: %s drift, %s in flight%s", scfg.name, res.total, res.in_flight,
             f", {summary['healed']} healed" if summary["healed"] else "")


def _report(cfg: Reconcilable, rc: ReconcileConfig, con: duckdb.DuckDBPyConnection,
            summaries: list[dict[str, Any]], *, send_email: bool) -> ReconcileResult:
    """History, HTML and CSV reports, e-mail."""
    con.execute(d.DRIFT_TABLE)
    finished = datetime.now(UTC)
    for s in summaries:
        s["finished_at"] = finished
    history.attach(con, resolve(cfg.origin, rc.history))
    run_id = history.next_run_id(con)
    history.record(con, run_id, summaries)
    trend = history.trend(con, rc.trend_runs)
    result = ReconcileResult(run_id, summaries)
    report_dir = private_dir(resolve(cfg.origin, rc.report_dir))
    with private_umask():  # the report files: 0600
        result.html_path, result.csv_path = write_reports(
            con, report_dir, summaries=summaries, trend=trend, run_id=run_id, max_items=rc.report_items)
    con.close()
    if send_email and rc.email and (result.drift_total or not rc.email.only_on_drift):
        from reconciler.mail import build_message, send

        msg = build_message(rc.email, subject(result), text_summary(result), result.html_path,
                            result.csv_path)
        send(rc.email, msg)
        result.emailed = True
    return result


def subject(result: ReconcileResult) -> str:
    if result.errors:
        return (f"[erpsync] reconcile #{result.run_id}: {len(result.errors)} error(s), "
                f"{result.drift_total} drift")
    if not result.drift_total:
        return f"[erpsync] reconcile #{result.run_id}: no drift"
    return f"[erpsync] reconcile #{result.run_id}: {result.drift_total:,} item(s) drifted"


def text_summary(result: ReconcileResult) -> str:
    lines = [subject(result).removeprefix("[erpsync] "), ""]
    for s in result.summaries:
        if s.get("error"):
            lines.append(f"{s['sink']}: {s['error']}")
            continue
        kinds = ", ".join(f"{LABELS[k].lower()}: {s[k]:,}" for k in LABELS if s.get(k))
        lines.append(f"{s['sink']}: {s['drift_total']:,} drifted ({kinds or 'none'}); "
                     f"{s['in_flight']:,} in flight; {s['healed']:,} healed")
        if s.get("heal_refused"):
            lines.append(f"  healing refused: {s['heal_refused']}")
    lines += ["", "The HTML report and a CSV of every item are attached."]
    return "\n".join(lines)
