"""``erpsync run`` and ``erpsync worker``: the long-running commands."""

from __future__ import annotations

import logging
import signal
import threading
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
    from erpsync.supervisor import Stop, Supervisor

    cfg = load(config)
    for warning in cfg.config_warnings():  # dangerous but accepted settings: the operator must see them
        log.warning("config: %s", warning)
    stop = _stop_on_signals()
    supervisor = Supervisor(cfg, drain_seconds=drain_seconds, wait_for_erp=wait_for_erp)
    try:
        if not supervisor.wait_until_mapping_fits(stop):
            return
        if cfg.reconcile and cfg.reconcile.schedule:  # the drift report runs beside the stream, same stop
            from erpsync.cli.reconcile import scheduled_job
            from reconciler.schedule import start_thread

            start_thread(cfg.reconcile.schedule, scheduled_job(cfg), stop)
        stats = supervisor.run_pipeline(stop)
    except Stop as e:
        raise Fail(str(e), e.code) from None
    if stats is not None:
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
    for warning in cfg.config_warnings():
        log.warning("config: %s", warning)
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


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM / SIGINT: the long-running commands finish their batch, then stop."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping after the current batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


