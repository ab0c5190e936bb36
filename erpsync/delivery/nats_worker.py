"""`erpsync worker`: delivers one sink's facts from the NATS bus (``bus: {kind: nats}``).

Each partition ``erpsync.facts.<sink>.<p>`` has one durable pull consumer (``<sink>-p<p>``, explicit
acks); several workers on several hosts share partitions by binding the same durables. A message is
acked only after the shop accepted its fact, so a worker killed mid-batch loses nothing: JetStream
redelivers after ack_wait. Per fetched batch only the newest value per key is pushed (coalescing), and a
per-key version guard in a JetStream KV bucket (shared by every host) skips values older than the one a
shop already accepted, so a redelivered old message never overwrites a newer value.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from cdc.facts import Fact, FactKey
from cdc.natsio import connect
from erpsync import metrics
from erpsync.config import Config, NatsBusConfig
from erpsync.delivery.embedded import DOWN_PAUSE_FIRST, DOWN_PAUSE_MAX
from erpsync.delivery.nats_bus import decode_fact, ensure_streams, subject
from erpsync.delivery.policy import Action, SinkGuard, judge
from erpsync.logs import fields
from sinks.base import Outcome, Sink

log = logging.getLogger("erpsync.worker")


def kv_key(key: FactKey) -> str:
    """KV keys allow [-/_=.A-Za-z0-9]: SKUs may hold anything, so base64url."""
    return base64.urlsafe_b64encode(str(key).encode()).decode()


class Worker:
    def __init__(self, cfg: Config, sink_name: str, partitions: list[int], *, name: str = "worker",
                 sink: Sink | None = None, batch: int = 500, ack_wait: float = 60.0,
                 concurrency: int = 1) -> None:
        if not isinstance(cfg.bus, NatsBusConfig):
            raise ValueError("erpsync worker needs `bus: {kind: nats, ...}` in the config")
        self.cfg = cfg
        self.bus = cfg.bus
        self.sink_cfg = cfg.sink(sink_name)
        if sink is None:
            from sinks.registry import make_sink

            sink = make_sink(self.sink_cfg)
        self.sink = sink
        self.guard = SinkGuard(sink)  # a sink's exception is its facts' RETRY (nak'd), never the worker's
        self.partitions = partitions
        self.name = name
        self.batch = batch
        self.ack_wait = ack_wait
        self.max_attempts = self.sink_cfg.max_attempts
        self.delivered = 0
        self._down_batches = 0  # consecutive batches that failed whole
        self._push_slots = asyncio.Semaphore(concurrency)  # sinks keep per-shop pacing state
        self._js: Any = None
        self._kv: Any = None

    def run(self, stop: threading.Event) -> None:
        try:
            asyncio.run(self._main(stop))
        finally:
            self.sink.close()

    async def _main(self, stop: threading.Event) -> None:
        nc = await connect(self.bus.url, f"erpsync-worker-{self.name}")
        self._js = nc.jetstream()
        await ensure_streams(self._js, self.bus)
        bucket = f"erpsync_versions_{self.sink.name}"
        try:
            self._kv = await self._js.key_value(bucket)
        except BucketNotFoundError:
            self._kv = await self._js.create_key_value(
                KeyValueConfig(bucket=bucket, history=1, replicas=self.bus.replicas))
        log.info("worker started", extra=fields(sink=self.sink.name, partitions=self.partitions,
                                                worker=self.name))
        tasks = [asyncio.create_task(self._partition(p, stop)) for p in self.partitions]
        try:
            while not stop.is_set():
                await asyncio.sleep(0.1)
                for t in tasks:
                    if t.done() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:  # close, not drain: drain waits for pull subscriptions; unacked messages come back anyway
                await nc.close()
            except Exception as e:
                log.debug("close failed: %s", e)

    async def _partition(self, p: int, stop: threading.Event) -> None:
        labels = (self.sink.name, str(p), self.name)
        cc = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait,
                            max_ack_pending=self.batch * 2, max_deliver=-1)
        sub = None
        last_info = 0.0
        while not stop.is_set():
            try:
                if sub is None:
                    sub = await self._js.pull_subscribe(
                        subject(self.sink.name, p), durable=f"{self.sink.name}-p{p}", stream=self.bus.stream,
                        config=cc)
                try:
                    msgs = await sub.fetch(self.batch, timeout=0.5)
                except (nats.errors.TimeoutError, TimeoutError):  # nothing to fetch right now
                    msgs = []
                if msgs:
                    await self._process(msgs, labels)
                else:
                    metrics.bus_consumer_lag_seconds.labels(*labels).set(0)
                if time.monotonic() - last_info > 2:
                    last_info = time.monotonic()
                    info = await sub.consumer_info()
                    metrics.bus_consumer_lag_messages.labels(*labels).set(
                        info.num_pending + info.num_ack_pending)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS restarting or unreachable: the client reconnects; unacked
                # messages come back after ack_wait
                log.warning("partition %s: %r; retrying", p, e, exc_info=log.isEnabledFor(logging.DEBUG))
                await asyncio.sleep(0.5)

    async def _versions(self, keys: list[FactKey]) -> dict[FactKey, int]:
        """Delivered version per key, pipelined (one request per key, all in flight at once)."""
        async def one(k: FactKey) -> int:
            try:
                entry = await self._kv.get(kv_key(k))
            except KeyNotFoundError:
                return 0
            return int(entry.value or b"0")

        return dict(zip(keys, await asyncio.gather(*(one(k) for k in keys)), strict=True))

    async def _process(self, msgs: list[Any], labels: tuple[str, str, str]) -> None:
        now = time.time()
        by_key: dict[FactKey, list[tuple[Fact, Any]]] = {}
        oldest = now
        for m in msgs:
            md = m.metadata
            if md.num_delivered > 1:
                metrics.bus_redeliveries_total.labels(*labels).inc()
            oldest = min(oldest, md.timestamp.timestamp())
            try:
                f = decode_fact(m.data)
            except (ValueError, KeyError, TypeError) as e:
                log.error("undecodable fact message %s: %s", md.sequence.stream, e)
                await self._dead(m.data, str(e), md.num_delivered)
                await m.term()
                continue
            by_key.setdefault(f.key, []).append((f, m))
        metrics.bus_consumer_lag_seconds.labels(*labels).set(max(0.0, now - oldest))
        stored = await self._versions(list(by_key))
        push: list[tuple[Fact, Any, list[Any]]] = []  # winner, its message, superseded messages
        stale = []
        for k, items in by_key.items():
            items.sort(key=lambda fm: fm[0].version)
            f, m = items[-1]
            older = [om for _, om in items[:-1]]
            if f.version <= stored[k]:  # a shop already has this value or a newer one
                stale.extend(om for _, om in items)
            else:
                push.append((f, m, older))
        if push:
            async with self._push_slots:
                results = await asyncio.get_running_loop().run_in_executor(
                    None, self.guard.push, [f for f, _, _ in push])
            ok = [(f, m, older) for (f, m, older), r in zip(push, results, strict=True)
                  if r.outcome is Outcome.OK]
            # the guard first, then the acks: a crash in between only re-pushes the same version
            await asyncio.gather(*(self._kv.put(kv_key(f.key), str(f.version).encode()) for f, _, _ in ok))
            # NATS counts deliveries; the policy counts tries before this one
            judged = judge(results, [m.metadata.num_delivered - 1 for _, m, _ in push], self.max_attempts)
            for (f, m, older), v in zip(push, judged.verdicts, strict=True):
                stale.extend(older)
                if v.action is Action.OK:
                    await m.ack()
                elif v.action is Action.RETRY:
                    await m.nak(delay=v.delay)
                else:
                    log.warning("dead-lettered %s for sink %s: %s", f.key, self.sink.name, v.message)
                    await self._dead(m.data, v.message, v.attempts)
                    await m.ack()
            if judged.shop_down:  # the shop is down: pause this partition instead of cycling through it
                self._down_batches += 1
                pause = min(DOWN_PAUSE_MAX, DOWN_PAUSE_FIRST * 2 ** min(self._down_batches - 1, 20))
                await asyncio.sleep(max(pause, min(judged.retry_after, 60.0)))
            else:
                self._down_batches = 0
            self.delivered += len(ok)
            metrics.bus_delivered_total.labels(*labels).inc(len(ok))
            metrics.sink_facts_total.labels(self.sink.name, "ok").inc(len(ok))
            for f, _, _ in ok:
                if f.commit_ts:
                    metrics.end_to_end_seconds.labels(self.sink.name).observe(max(0.0, now - f.commit_ts))
        for m in stale:
            await m.ack()
        metrics.bus_stale_total.labels(*labels).inc(len(stale))

    async def _dead(self, data: bytes, error: str, attempts: int) -> None:
        body = json.dumps({"fact": data.decode(errors="replace"), "error": error, "attempts": attempts,
                           "failed_at": time.time(), "worker": self.name})
        await self._js.publish(f"erpsync.dlq.{self.sink.name}", body.encode(), timeout=10)
        metrics.sink_errors_total.labels(self.sink.name, "permanent").inc()
