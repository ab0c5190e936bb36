"""The NATS JetStream bus (``bus: {kind: nats}``): the ERP side publishes changed facts to
``erpsync.facts.<sink>.<partition>`` (partition = crc32(sku) % N), and `erpsync worker` delivers them.

The reader publishes a group commit's facts BEFORE it commits the position to its SQLite state and
confirms it to the ERP, so a confirmed ERP position always has its facts in JetStream. A crash between
the two replays the batch; the JetStream message id (sink + key + version) drops what was stored already,
and where a replay assigns new versions the workers' per-key version guard keeps newer values newer.

nats-py is asyncio: the (threaded, blocking) reader drives it on a dedicated event-loop thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Iterable
from typing import Any, TypeVar

import nats
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from cdc.facts import Fact
from cdc.natsio import LoopThread, connect
from erpsync import metrics
from erpsync.config import NatsBusConfig

log = logging.getLogger("erpsync.bus")
T = TypeVar("T")

SUBJECT_PREFIX = "erpsync.facts"
DLQ_STREAM = "ERPSYNC_DLQ"


def partition_of(sku: str, partitions: int) -> int:
    """Stable across processes and hosts (Python's hash() is salted per process)."""
    return zlib.crc32(sku.encode()) % partitions


def subject(sink: str, partition: int) -> str:
    return f"{SUBJECT_PREFIX}.{sink}.{partition}"


def msg_id(sink: str, fact: Fact) -> str:
    return f"{sink}|{fact.key}|{fact.version}"


def encode_fact(fact: Fact) -> bytes:
    return json.dumps(fact.to_json(), separators=(",", ":"), default=str).encode()


def decode_fact(data: bytes) -> Fact:
    return Fact.from_json(json.loads(data))


def parse_partitions(spec: str, total: int) -> list[int]:
    """``0-3,6`` → [0, 1, 2, 3, 6]; ``all`` → every partition."""
    if spec.strip() in ("", "all", "*"):
        return list(range(total))
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    bad = [p for p in out if not 0 <= p < total]
    if bad:
        raise ValueError(f"partitions {sorted(bad)} out of range 0-{total - 1}")
    return sorted(out)


async def ensure_streams(js: Any, cfg: NatsBusConfig) -> None:
    """The facts stream (work queue: a message is gone once a worker acked it) and the dead-letter one."""
    want = [
        StreamConfig(name=cfg.stream, subjects=[f"{SUBJECT_PREFIX}.>"], retention=RetentionPolicy.WORK_QUEUE,
                     storage=StorageType.FILE, num_replicas=cfg.replicas,
                     duplicate_window=cfg.duplicate_window_seconds),
        StreamConfig(name=DLQ_STREAM, subjects=["erpsync.dlq.>"], storage=StorageType.FILE,
                     num_replicas=cfg.replicas, max_msgs_per_subject=100_000),
    ]
    for sc in want:
        try:
            await js.stream_info(sc.name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(sc)


class NatsPublisher:
    """The reader's side of the bus. ``publish(facts)`` returns once JetStream stored every one."""

    def __init__(self, cfg: NatsBusConfig, sink_kinds: dict[str, list[str]]) -> None:
        self.cfg = cfg
        self.sink_kinds = sink_kinds
        self.published = 0
        self.duplicates = 0
        self._loop = LoopThread("nats-publisher")
        self._nc: Any = None
        self._js: Any = None
        try:
            self._loop.run(self._connect(), timeout=60)
        except BaseException:
            self._loop.close()
            raise

    async def _connect(self) -> None:
        self._nc = await connect(self.cfg.url, "erpsync-reader")
        self._js = self._nc.jetstream()
        await ensure_streams(self._js, self.cfg)

    def messages(self, facts: Iterable[Fact]) -> list[tuple[str, bytes, str]]:
        n = self.cfg.partitions
        out = []
        for f in facts:
            data = encode_fact(f)
            p = partition_of(f.key.sku, n)
            for sink, kinds in self.sink_kinds.items():
                if f.key.kind in kinds:
                    out.append((subject(sink, p), data, msg_id(sink, f)))
        return out

    def publish(self, facts: Iterable[Fact]) -> int:
        msgs = self.messages(facts)
        if msgs:
            self._loop.run(self._publish_all(msgs))
        return len(msgs)

    async def _publish_all(self, msgs: list[tuple[str, bytes, str]]) -> None:
        """Pipelined: up to max_in_flight publishes awaiting their acks at once (an await per message is
        ~6x slower). Failed ones are retried until publish_timeout_seconds: NATS may be restarting, and
        re-publishing an already stored id is a no-op for JetStream."""
        deadline = time.monotonic() + self.cfg.publish_timeout_seconds
        todo = msgs
        attempt = 0
        while todo:
            failed: list[tuple[str, bytes, str]] = []
            last_error: BaseException | None = None
            step = self.cfg.max_in_flight
            for i in range(0, len(todo), step):
                part = todo[i:i + step]
                results = await asyncio.gather(
                    *(self._js.publish(s, d, timeout=10, headers={"Nats-Msg-Id": m}) for s, d, m in part),
                    return_exceptions=True)
                for item, r in zip(part, results, strict=True):
                    if isinstance(r, BaseException):
                        failed.append(item)
                        last_error = r
                    else:
                        self.published += 1
                        metrics.bus_published_total.inc()
                        self.duplicates += bool(getattr(r, "duplicate", False))
            todo = failed
            if todo:
                attempt += 1
                if time.monotonic() > deadline:
                    raise RuntimeError(f"NATS did not store {len(todo)} facts within "
                                       f"{self.cfg.publish_timeout_seconds}s: {last_error!r}")
                log.warning("NATS publish failed for %d facts (%r); retrying", len(todo), last_error)
                await asyncio.sleep(min(2.0, 0.1 * 2 ** attempt))

    def close(self) -> None:
        if self._nc is not None:
            try:
                self._loop.run(self._nc.close(), timeout=10)
            except Exception as e:  # closing: nothing left to lose (everything published was acked)
                log.debug("NATS close failed: %s", e)
        self._loop.close()
