"""The Debezium bridge (``source: {kind: debezium}``): Debezium JSON change events from a NATS JetStream
subject or from Kafka topics, decoded by cdc.sources.debezium.decoder and fed to the normalizer.

Positions are the transport's: ``nats:<stream seq>`` or ``kafka:{"topic/partition": offset, ...}``; the
ERP-side position of each row (LSN, binlog file:pos / GTID) is in its SourceInfo. ``ack`` acknowledges
the NATS messages / commits the Kafka offsets up to a position the outbox durably holds, so a crash
re-reads, never skips. Debezium takes the initial snapshot itself (op "r" events): ``snapshot`` only
hands out the starting position. Debezium events carry no transaction end, so a fetched batch is the unit
of commit: one ERP transaction may be confirmed across two batches (each row is still absolute state).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from cdc.changes import Chunk, Commit, RowChange, SourceMisconfigured, SourceUnavailable
from cdc.sources.debezium.config import DebeziumSourceConfig
from cdc.sources.debezium.decoder import DebeziumDecoder


@dataclass(slots=True)
class Event:
    position: str  # transport position after this event
    value: bytes | None
    key: bytes | None
    done: bool = False  # already in the outbox (at or before the resume position): skip, but ack


class Transport(Protocol):
    def open(self, from_position: str) -> None: ...
    def fetch(self, n: int, timeout: float) -> list[Event]: ...
    def ack(self, position: str) -> None: ...
    def pending(self) -> int: ...
    def compare(self, a: str, b: str) -> int: ...
    def close(self) -> None: ...


# NATS ---------------------------------------------------------------------------------------------
class NatsTransport:
    """A durable pull consumer with AckPolicy.ALL: acking the last message of a position acks all before."""

    def __init__(self, cfg: DebeziumSourceConfig, max_ack_pending: int) -> None:
        from cdc.natsio import LoopThread

        self.cfg = cfg
        self.max_ack_pending = max_ack_pending
        self._loop = LoopThread("debezium-nats")
        self._nc: Any = None
        self._sub: Any = None
        self._unacked: list[tuple[int, Any]] = []  # (stream seq, msg), in order
        self._floor = 0

    def open(self, from_position: str) -> None:
        self._floor = _seq(from_position)
        self._loop.run(self._open(), timeout=60)

    async def _open(self) -> None:
        import nats.errors
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        from cdc.natsio import connect

        if self._nc is None:
            self._nc = await connect(self.cfg.url, "erpsync-debezium")
        js = self._nc.jetstream()
        try:
            await js.stream_info(self.cfg.stream)
        except Exception as e:
            # no answer in time or no connection is time's to fix; a missing stream is the config's
            lost = isinstance(e, TimeoutError | OSError | nats.errors.ConnectionClosedError
                              | nats.errors.NoServersError)
            raise (SourceUnavailable if lost else SourceMisconfigured)(
                f"source.stream: JetStream stream {self.cfg.stream!r} not found at {self.cfg.url}: {e}"
            ) from None
        cc = ConsumerConfig(ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.ALL, ack_wait=120,
                            max_ack_pending=self.max_ack_pending, max_deliver=-1)
        self._sub = await js.pull_subscribe(self.cfg.subject, durable=self.cfg.durable,
                                            stream=self.cfg.stream, config=cc)

    def fetch(self, n: int, timeout: float) -> list[Event]:
        return self._loop.run(self._fetch(n, timeout))

    async def _fetch(self, n: int, timeout: float) -> list[Event]:
        import nats

        try:
            msgs = await self._sub.fetch(n, timeout=timeout)
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        out = []
        for m in msgs:
            seq = m.metadata.sequence.stream
            if self._unacked and seq <= self._unacked[-1][0]:
                continue  # redelivered while still pending with us (ack_wait): we have it already
            self._unacked.append((seq, m))
            key = (m.headers or {}).get("Debezium-Key")
            out.append(Event(f"nats:{seq}", m.data or None, key.encode() if key else None,
                             seq <= self._floor))
        return out

    def ack(self, position: str) -> None:
        upto = _seq(position)
        last = None
        while self._unacked and self._unacked[0][0] <= upto:
            last = self._unacked.pop(0)[1]
        if last is not None:
            self._loop.run(last.ack())

    def pending(self) -> int:
        info = self._loop.run(self._sub.consumer_info(), timeout=10)
        return int(info.num_pending)

    def compare(self, a: str, b: str) -> int:
        x, y = _seq(a), _seq(b)
        return (x > y) - (x < y)

    def close(self) -> None:
        if self._nc is not None:
            # closing: unacked messages are redelivered to the next run
            with contextlib.suppress(Exception):
                self._loop.run(self._nc.close(), timeout=10)
        self._loop.close()


def _seq(position: str) -> int:
    return int(position.split(":", 1)[1]) if position.startswith("nats:") else 0


# Kafka --------------------------------------------------------------------------------------------
def kafka_position(offsets: dict[tuple[str, int], int]) -> str:
    """Last processed offset per topic partition, as a position string (sorted: equal maps, equal text)."""
    return "kafka:" + json.dumps({f"{t}/{p}": o for (t, p), o in sorted(offsets.items())},
                                 separators=(",", ":"))


def kafka_offsets(position: str) -> dict[tuple[str, int], int]:
    if not position.startswith("kafka:"):
        return {}
    out = {}
    for tp, o in json.loads(position[6:]).items():
        t, _, p = tp.rpartition("/")
        out[(t, int(p))] = int(o)
    return out


def compare_kafka(a: str, b: str) -> int:
    """Partial order: a < b when no partition of a is ahead of b (incomparable maps compare equal)."""
    x, y = kafka_offsets(a), kafka_offsets(b)
    if x == y:
        return 0
    keys = set(x) | set(y)
    if all(x.get(k, -1) <= y.get(k, -1) for k in keys):
        return -1
    if all(x.get(k, -1) >= y.get(k, -1) for k in keys):
        return 1
    return 0


class KafkaTransport:
    """confluent-kafka consumer, auto-commit off. Offsets are committed (last processed + 1) only for
    positions the outbox holds; on (re)assignment a partition resumes after the outbox's stored offset, so
    the outbox, not the group's committed offset, is the truth (they differ only after a crash)."""

    def __init__(self, cfg: DebeziumSourceConfig, consumer: Any = None, topic_partition: Any = None) -> None:
        self.cfg = cfg
        if consumer is None or topic_partition is None:
            try:
                from confluent_kafka import Consumer, TopicPartition
            except ImportError:
                raise SourceMisconfigured("source.transport kafka needs confluent-kafka "
                                         "(pip install confluent-kafka)") from None
            consumer = consumer or Consumer({
                "bootstrap.servers": cfg.bootstrap_servers, "group.id": cfg.group_id,
                "enable.auto.commit": False, "auto.offset.reset": "earliest", **cfg.kafka})
            topic_partition = topic_partition or TopicPartition
        self.consumer = consumer
        self.TopicPartition = topic_partition
        self.offsets: dict[tuple[str, int], int] = {}
        self._stored: dict[tuple[str, int], int] = {}

    def open(self, from_position: str) -> None:
        if not self.cfg.topics:
            raise SourceMisconfigured("source.topics: name the Debezium topics to read")
        self._stored = kafka_offsets(from_position)
        self.offsets = dict(self._stored)
        self.consumer.subscribe(list(self.cfg.topics), on_assign=self._on_assign)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            done = self._stored.get((tp.topic, tp.partition))
            if done is not None:
                tp.offset = done + 1
        consumer.assign(partitions)

    def fetch(self, n: int, timeout: float) -> list[Event]:
        out = []
        for m in self.consumer.consume(num_messages=n, timeout=timeout):
            if m.error():
                err = m.error()
                if getattr(err, "fatal", lambda: False)():
                    raise SourceMisconfigured(f"kafka: {err}")  # fatal: the client cannot go on
                continue  # partition EOF and the like: informational
            tp = (m.topic(), m.partition())
            done = m.offset() <= self._stored.get(tp, -1)
            self.offsets[tp] = max(self.offsets.get(tp, -1), m.offset())
            out.append(Event(kafka_position(self.offsets), m.value(), m.key(), done))
        return out

    def ack(self, position: str) -> None:
        offs = kafka_offsets(position)
        if offs:
            self.consumer.commit(offsets=[self.TopicPartition(t, p, o + 1) for (t, p), o in offs.items()],
                                 asynchronous=False)

    def pending(self) -> int:
        return 0  # needs the broker's high watermarks per partition; not tracked here

    def compare(self, a: str, b: str) -> int:
        return compare_kafka(a, b)

    def close(self) -> None:
        self.consumer.close()


# the Source ---------------------------------------------------------------------------------------
class DebeziumSource:
    def __init__(self, cfg: DebeziumSourceConfig, tables: list[str],
                 transport: Transport | None = None) -> None:
        self.cfg = cfg
        self.name = f"debezium:{cfg.transport}"
        self.tables = set(tables)
        self.decoder = DebeziumDecoder(cfg.decimals)
        if transport is None:
            transport = (NatsTransport(cfg, max_ack_pending=cfg.batch * 50) if cfg.transport == "nats"
                         else KafkaTransport(cfg))
        self.transport: Transport = transport
        self.last_commit_ts = 0.0
        self._closed = False

    def prepare(self) -> None:
        return None  # the transport connects in stream(), from the stored position

    def needs_snapshot(self, stored_position: str | None) -> bool:
        return stored_position is None

    def snapshot(self, tables: list[str]) -> Iterator[Chunk]:
        # Debezium's own snapshot arrives as op "r" events in the stream; start from the beginning.
        yield Chunk(commit=Commit("nats:0" if self.cfg.transport == "nats" else "kafka:{}", time.time()))

    def stream(self, from_position: str) -> Iterator[Chunk]:
        self.transport.open(from_position)
        while not self._closed:
            events = self.transport.fetch(self.cfg.batch, 0.5)
            if not events:
                yield Chunk()
                continue
            changes: list[RowChange] = []
            for e in events:
                if e.done:
                    continue
                c = self.decoder.decode(e.value, e.key)
                if c is not None and c.table in self.tables:
                    changes.append(c)
            ts = time.time()
            if changes:
                ts = max(c.source.ts_ms for c in changes) / 1000.0 or ts
                self.last_commit_ts = ts
            yield Chunk(changes, Commit(events[-1].position, ts))

    def ack(self, position: str) -> None:
        self.transport.ack(position)

    def lag(self) -> dict[str, float]:
        pending = self.transport.pending()
        secs = max(0.0, time.time() - self.last_commit_ts) if pending and self.last_commit_ts else 0.0
        return {"bytes": float(pending), "seconds": secs}

    def compare(self, a: str, b: str) -> int:
        return self.transport.compare(a, b)

    def close(self) -> None:
        self._closed = True
        self.transport.close()
