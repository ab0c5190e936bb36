"""``erpsync run`` and ``erpsync worker``: the long-running commands."""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import click

from erpsync.cli.common import Fail, load

log = logging.getLogger("erpsync")


@click.command()
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

    cfg = load(config)
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


@click.command()
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

    cfg = load(config)
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


