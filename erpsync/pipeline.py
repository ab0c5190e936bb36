"""Wiring of the data path: source → normalizer → outbox (one SQLite commit with the position) → ack;
and one delivery thread per sink from the outbox to the shop.

Concurrency model: threads. The ERP side runs on the calling thread (the blocking replication clients are
not thread-safe, and nothing sits between the reader and the outbox, so no queue can grow); each sink has
a delivery thread. The only hand-off is the outbox file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from cdc.changes import Chunk, Source
from cdc.facts import Fact, FactKey
from cdc.normalize.normalizer import normalizer_for
from cdc.outbox.store import Outbox
from cdc.outbox.views import dlq_counts, pending_counts
from cdc.sources.registry import plugin_for
from erpsync import metrics
from erpsync.config import Config
from erpsync.delivery.embedded import Deliverer
from erpsync.logs import fields
from erpsync.ops_server import OpsServer
from sinks.base import Sink
from sinks.registry import make_sink

log = logging.getLogger("erpsync.pipeline")

_TABLE_OP = attrgetter("source.table", "op")


def source_id(cfg: Config) -> str:
    return plugin_for(cfg.source.kind).source_id(cfg.source)


def make_source(cfg: Config, tables: list[str]) -> Source:
    """The configured database's reader (its secrets were registered for redaction when cfg was loaded)."""
    return plugin_for(cfg.source.kind).make_source(cfg.source, tables)


@dataclass
class RunStats:
    transactions: int = 0
    changes: int = 0
    facts: int = 0
    commits: int = 0
    position: str | None = None
    started: float = field(default_factory=time.time)


class Pipeline:
    """``Pipeline(cfg).run(stop_event)`` until the event is set; then flush, confirm and return."""

    def __init__(self, cfg: Config, *, source: Source | None = None, sinks: list[Sink] | None = None,
                 drain_seconds: float = 5.0, serve_ops: bool = False) -> None:
        self.cfg = cfg
        self.drain_seconds = drain_seconds
        self.serve_ops = serve_ops  # the ops HTTP endpoint (cfg.ops.listen); `erpsync run` turns it on
        self.ops: OpsServer | None = None
        # bus=nats: `erpsync worker` delivers from JetStream, so the outbox queues nothing for the sinks
        nats_bus = cfg.bus.kind == "nats"
        queued = {} if nats_bus else {s.name: list(s.kinds) for s in cfg.sinks}
        self.outbox = Outbox(cfg.outbox_path(), queued)
        self.bus: Any = None  # NatsPublisher, connected in run()
        # stock + prices + lookups; `tables` lists every table it reads, lookup tables included
        self.normalizer = normalizer_for(cfg, self.outbox.conn)
        self.source = source or make_source(cfg, self.normalizer.tables)
        self.source_id = source_id(cfg)
        self.sinks = sinks if sinks is not None else [] if nats_bus else [make_sink(s) for s in cfg.sinks]
        # paired with its config by name (cfg.sink raises naming the sink when there is none)
        self.deliverers = [Deliverer(s, cfg.outbox_path(), max_attempts=cfg.sink(s.name).max_attempts)
                           for s in self.sinks]
        self.stats = RunStats()
        self._last_lag = 0.0
        self._clamped_seen = self._errors_seen = 0

    # ERP side -------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> RunStats:
        try:
            if self.serve_ops:  # first, so /healthz answers during a long snapshot
                self.ops = OpsServer(self.cfg.ops, self.cfg.outbox_path(), [s.name for s in self.cfg.sinks])
                self.ops.start()
            if self.cfg.bus.kind == "nats":
                from erpsync.delivery.nats_bus import NatsPublisher

                self.bus = NatsPublisher(self.cfg.bus, {s.name: list(s.kinds) for s in self.cfg.sinks})
            self.source.prepare()
            stored = self.outbox.position(self.source_id)
            if self.source.needs_snapshot(stored):
                stored = self._snapshot(stop)
            # Sinks start after the snapshot: it holds the outbox's write lock until it is complete.
            for d in self.deliverers:
                d.start()
            if stored is not None and not stop.is_set():
                # lag in seconds counts from the last transaction the outbox holds until a newer one is read
                self.source.last_commit_ts = self.source.last_commit_ts or self.outbox.position_commit_ts(
                    self.source_id)
                metrics.source_connected.set(1)
                self._stream(stored, stop)
        finally:
            metrics.source_connected.set(0)
            self.outbox.rollback()
            self.source.close()
            for d in self.deliverers:
                d.stop(self.drain_seconds)
            for d in self.deliverers:
                if d.is_alive():
                    d.join(self.drain_seconds + 30)
            for s in self.sinks:
                s.close()
            if self.bus is not None:
                self.bus.close()
            self._refresh_gauges()
            self.outbox.close()
            if self.ops is not None:
                self.ops.stop()
        return self.stats

    def _snapshot(self, stop: threading.Event) -> str | None:
        """Initial load, in ONE outbox transaction: a half-done snapshot is never pushed to a shop."""
        log.info("snapshot starting", extra=fields(tables=self.normalizer.tables))
        self.outbox.reset()
        if self.bus is not None:  # see _commit: an interrupted snapshot's msg ids are never reused
            self.outbox.version_floor(time.time_ns() // 1000)
        top = self.outbox.max_version()
        rows = 0
        started = time.monotonic()
        last_report = started
        for chunk in self.source.snapshot(self.normalizer.tables):
            if stop.is_set():
                self.outbox.rollback()
                self.normalizer.discard()
                log.warning("snapshot interrupted; it restarts from scratch next time")
                return None
            self.outbox.begin()
            self.outbox.write_facts(self._apply(chunk).values())
            self.normalizer.flush()
            rows += len(chunk.changes)
            if time.monotonic() - last_report > 2:
                last_report = time.monotonic()
                log.info("snapshot progress", extra=fields(rows=rows, rows_per_s=round(
                    rows / (last_report - started))))
            if chunk.commit is not None:
                if self.bus is not None:  # in JetStream before the snapshot's position is committed
                    for facts in self.outbox.facts_since(top):
                        self.bus.publish(facts)
                self.outbox.set_position(self.source_id, chunk.commit.position, commit_ts=chunk.commit.ts)
                self.outbox.commit()
                self.source.ack(chunk.commit.position)
                self._wake()
                log.info("snapshot done", extra=fields(rows=rows, position=chunk.commit.position,
                                                       seconds=round(time.monotonic() - started, 2)))
                self.stats.position = chunk.commit.position
                return chunk.commit.position
        return None

    def _apply(self, chunk: Chunk, into: dict[FactKey, Fact] | None = None) -> dict[FactKey, Fact]:
        """Normalize a chunk; its facts are merged into ``into`` (newest value per key wins)."""
        into = {} if into is None else into
        if not chunk.changes:
            return into
        pos = chunk.commit.position if chunk.commit else ""
        ts = chunk.commit.ts if chunk.commit else (chunk.changes[0].source.ts_ms / 1000.0)
        for f in self.normalizer.apply(chunk.changes, pos, ts):
            into[f.key] = f
        self.stats.changes += len(chunk.changes)
        # Counted per chunk in C (Counter over an attrgetter), not with a Python loop per row.
        for (table, op), cnt in Counter(map(_TABLE_OP, chunk.changes)).items():
            metrics.changes_total.labels(table, op).inc(cnt)
        return into

    def _commit(self, facts: dict[FactKey, Fact], position: str | None, commit_ts: float | None) -> None:
        """One short outbox transaction: row state, facts and (at a transaction end) the position."""
        self.outbox.begin()
        try:
            self.normalizer.flush()
            changed: list[Fact] | None = None
            if self.bus is not None:
                changed = []
                # versions above any published before a crash (µs clock): a replay whose batch ends
                # elsewhere can never reuse a msg id (key+version) for another value
                self.outbox.version_floor(time.time_ns() // 1000)
            n = self.outbox.write_facts(facts.values(), changed)
            if changed:  # JetStream acked them all before the position is committed (and confirmed)
                self.bus.publish(changed)
            if position is not None:
                self.outbox.set_position(self.source_id, position, commit_ts=commit_ts)
            changed_by_kind = self.outbox.commit()
        except BaseException:
            self.outbox.rollback()
            raise
        self.stats.facts += n
        self.stats.commits += 1
        for kind, count in changed_by_kind.items():
            metrics.facts_written_total.labels(kind).inc(count)

    def _stream(self, position: str, stop: threading.Event) -> None:
        ocfg = self.cfg.outbox
        window = ocfg.commit_interval_ms / 1000.0
        facts: dict[FactKey, Fact] = {}
        uncommitted_rows = 0
        first_uncommitted: float | None = None
        to_ack: str | None = None
        to_ack_ts: float | None = None
        log.info("streaming", extra=fields(source=self.source_id, position=position))
        for chunk in self.source.stream(position):
            if chunk.changes or chunk.commit:
                self._apply(chunk, facts)
                uncommitted_rows += len(chunk.changes)
                if first_uncommitted is None:
                    first_uncommitted = time.monotonic()
            if chunk.commit is not None:
                to_ack, to_ack_ts = chunk.commit.position, chunk.commit.ts
                if chunk.changes:
                    self.stats.transactions += 1
                    metrics.transactions_total.inc()
            idle = not chunk.changes and chunk.commit is None
            if idle:  # a price validity window opened/closed: push it without waiting for an ERP change
                nt = self.normalizer.next_timer()
                if nt is not None and nt <= time.time():
                    for f in self.normalizer.due_timers():
                        facts[f.key] = f
                    if first_uncommitted is None:
                        first_uncommitted = time.monotonic()
            due = first_uncommitted is not None and (
                idle or uncommitted_rows >= ocfg.commit_max_rows
                or time.monotonic() - first_uncommitted >= window or stop.is_set())
            if due:
                # Group commit. Inside a big ERP transaction this commits without a position (replaying
                # it after a crash is harmless: row state is absolute); the position comes with its end.
                self._commit(facts, to_ack, to_ack_ts)
                if to_ack is not None:
                    self.source.ack(to_ack)
                    self.stats.position = to_ack
                facts, to_ack, to_ack_ts = {}, None, None
                uncommitted_rows = 0
                first_uncommitted = None
                self._wake()
            self._tick()
            if stop.is_set() and first_uncommitted is None:
                break

    def _wake(self) -> None:
        for d in self.deliverers:
            d.wake.set()

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < 1.0:
            return
        self._last_lag = now
        try:
            lag = self.source.lag()
            metrics.source_lag_bytes.set(lag.get("bytes", 0))
            metrics.source_lag_seconds.set(lag.get("seconds", 0))
            if "retained_bytes" in lag:
                metrics.source_retained_bytes.set(lag["retained_bytes"])
        except Exception as e:  # lag is informative; never stop the stream for it
            log.debug("lag query failed: %s", e)
        self._refresh_gauges()
        for i, d in enumerate(self.deliverers):
            if d.error is not None and not d.is_alive():
                self.deliverers[i] = self._restart(d)

    def _restart(self, dead: Deliverer) -> Deliverer:
        """A delivery thread that died (its sink's pushes cannot raise: the outbox failed under it) is that
        sink's problem: said, and a new thread started (at most one per second, the pace of ``_tick``);
        the ERP side and the other sinks go on."""
        log.error("delivery thread for sink %s died (%s: %s); starting a new one", dead.sink.name,
                  type(dead.error).__name__, dead.error)
        d = Deliverer(dead.sink, self.cfg.outbox_path(), max_attempts=dead.max_attempts)
        d.start()
        return d

    def _refresh_gauges(self) -> None:
        try:
            pend = pending_counts(self.outbox.conn)
            dlq = dlq_counts(self.outbox.conn)
        except Exception:
            return
        for s in self.sinks:
            metrics.outbox_pending.labels(s.name).set(pend.get(s.name, 0))
            metrics.dlq_size.labels(s.name).set(dlq.get(s.name, 0))
        metrics.stock_clamped_total.inc(self.normalizer.clamped - self._clamped_seen)
        metrics.data_errors_total.inc(self.normalizer.data_errors - self._errors_seen)
        self._clamped_seen, self._errors_seen = self.normalizer.clamped, self.normalizer.data_errors
