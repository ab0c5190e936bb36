"""Shop side: one delivery thread per sink, reading what the sink lacks from the outbox and pushing it.

Retryable failures wait with backoff (or the platform's own Retry-After / throttle signal) in the outbox,
so the thread moves on to other SKUs; permanent failures go to the dead-letter table. A fact is retried
with its *current* value, so an older value is never pushed after a newer one.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from cdc.outbox.queue import Pending, SinkQueue
from erpsync import metrics
from erpsync.delivery.policy import DOWN_PAUSE_FIRST, DOWN_PAUSE_MAX, Action, SinkGuard, judge
from erpsync.logs import fields
from sinks.base import Sink

log = logging.getLogger("erpsync.delivery")


class Deliverer(threading.Thread):
    def __init__(self, sink: Sink, outbox_path: str | Path, *, max_attempts: int = 20,
                 idle_wait: float = 0.25) -> None:
        super().__init__(name=f"sink-{sink.name}", daemon=True)
        self.sink = sink
        self.guard = SinkGuard(sink)  # a sink's exception is its facts' RETRY, never this thread's end
        self.path = outbox_path
        self.max_attempts = max_attempts
        self.idle_wait = idle_wait
        self.wake = threading.Event()  # set by the ERP side after each outbox commit
        self.stop_event = threading.Event()
        self.drain_until: float | None = None
        self.delivered = 0
        self.down_batches = 0  # consecutive batches that failed whole (the shop is down)
        self.error: BaseException | None = None

    def stop(self, drain_seconds: float = 0.0) -> None:
        """Stop; with drain_seconds, first keep pushing what is due for up to that long."""
        self.drain_until = time.monotonic() + drain_seconds
        self.stop_event.set()
        self.wake.set()

    def run(self) -> None:
        queue = SinkQueue(self.path, self.sink.name)
        try:
            while True:
                stopping = self.stop_event.is_set()
                if stopping and (self.drain_until is None or time.monotonic() >= self.drain_until):
                    break
                try:
                    batch = queue.next_batch(self.sink.max_batch)
                except sqlite3.OperationalError as e:  # outbox busy (e.g. a long re-snapshot): wait
                    log.warning("outbox busy for sink %s: %s", self.sink.name, e)
                    self.stop_event.wait(1.0)
                    continue
                if not batch:
                    if self.stop_event.is_set():
                        break  # drained
                    due = queue.next_due()
                    wait = self.idle_wait if due is None else min(self.idle_wait, max(0.0, due - time.time()))
                    self.wake.wait(max(wait, 0.005))
                    self.wake.clear()
                    continue
                try:
                    down_for = self._push(queue, batch)
                except sqlite3.OperationalError as e:  # acks not recorded: a harmless re-push later
                    log.warning("outbox busy for sink %s: %s", self.sink.name, e)
                    continue
                if down_for is None:
                    self.down_batches = 0
                    continue
                self.down_batches += 1
                pause = min(DOWN_PAUSE_MAX, DOWN_PAUSE_FIRST * 2 ** min(self.down_batches - 1, 20))
                pause = max(pause, min(down_for, 60.0))
                if self.drain_until is not None:
                    pause = min(pause, max(0.0, self.drain_until - time.monotonic()))
                if self.down_batches == 8:  # said once per outage, not per probe
                    log.warning("sink %s: every push fails; the shop looks down (probing every %.0f s, "
                                "facts wait in the outbox)", self.sink.name, DOWN_PAUSE_MAX)
                self.stop_event.wait(pause)
        except BaseException as e:  # a dead delivery thread must be visible, not silent
            self.error = e
            log.exception("delivery thread for sink %s stopped", self.sink.name)
        finally:
            queue.close()

    def _push(self, queue: SinkQueue, batch: list[Pending]) -> float | None:
        """Push one batch and record each fact's outcome. Returns None, or when the whole batch failed
        transiently (the shop is down) how long the shop asked to wait (0 if it did not say)."""
        facts = [p.fact for p in batch]
        started = time.time()
        with metrics.sink_request_seconds.labels(self.sink.name).time():
            results = self.guard.push(facts)
        now = time.time()
        ok, retry, dead = [], [], []
        judged = judge(results, [p.attempts for p in batch], self.max_attempts)
        for p, r, v in zip(batch, results, judged.verdicts, strict=True):
            if v.action is Action.OK:
                ok.append(p.fact)
            elif v.action is Action.RETRY:
                retry.append((p.fact, v.attempts, v.delay, v.message))
            else:
                dead.append((p.fact, v.attempts, v.message))
            if r.throttled:
                metrics.sink_throttled_total.labels(self.sink.name).inc()
        queue.mark_ok(ok)
        queue.mark_retry(retry)
        queue.mark_dead(dead)
        self.delivered += len(ok)
        name = self.sink.name
        for f in ok:
            if f.commit_ts:
                metrics.end_to_end_seconds.labels(name).observe(max(0.0, now - f.commit_ts))
        metrics.sink_facts_total.labels(name, "ok").inc(len(ok))
        if retry:
            metrics.sink_errors_total.labels(name, "retry").inc(len(retry))
        if dead:
            metrics.sink_errors_total.labels(name, "permanent").inc(len(dead))
            for f, _a, msg in dead:
                log.warning("dead-lettered %s for sink %s: %s", f.key, name, msg)
        log.info("pushed batch", extra=fields(sink=name, facts=len(batch), ok=len(ok), retry=len(retry),
                                               dead=len(dead), ms=round((now - started) * 1000, 1)))
        return judged.retry_after if judged.shop_down else None
