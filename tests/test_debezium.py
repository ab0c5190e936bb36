"""The Debezium bridge: envelopes from the PostgreSQL and MySQL connectors (tests/data/debezium, with and
without the schema part, decimals as base64 bytes or strings) decoded, fed over a real nats-server into
the pipeline, and the Kafka transport's decoding and offset handling driven with the same events."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc.sources.debezium.bridge import DebeziumSource, KafkaTransport, kafka_offsets, kafka_position
from cdc.sources.debezium.decoder import DebeziumDecoder, decimal_value
from erpsync.config import load_config_text
from erpsync.pipeline import Pipeline
from erpsync.testing import wait_for
from erpsync.testing.nats import ThrowawayNats
from sinks.emulators.webhook import WebhookEmulator
from tests.fixtures_nats import nats_server  # noqa: F401

DATA = Path(__file__).parent / "data" / "debezium"
FILES = {"postgres": "postgres_stock_levels.jsonl",  # schema, decimal.handling.mode=precise (base64)
         "postgres-schemaless": "postgres_stock_levels_schemaless.jsonl",
         "mysql": "mysql_stock_levels.jsonl",  # schema, decimal.handling.mode=string
         "mysql-schemaless": "mysql_stock_levels_schemaless.jsonl"}
# SKU-A: MAD 10→8, BCN 5 (deleted), MIL 7; SKU-B: MIL 3 reserved 0→1, MAD 20→25.5 (inserted); safety 1
EXPECTED = {("SKU-A", "madrid"): 7, ("SKU-A", "milan"): 6, ("SKU-B", "milan"): 1, ("SKU-B", "madrid"): 24}
DECIMALS = {"on_hand": 3, "reserved": 3}


def decimals(name: str) -> dict[str, int]:
    """Only precise mode with a schema says which columns are decimals (string mode's schema says string)."""
    return {} if name == "postgres" else DECIMALS


def events(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / FILES[name]).read_text().splitlines()]


def config(name: str, url: str, tmp: Path, shop_url: str, **source: Any) -> Any:
    mysql = name.startswith("mysql")
    return load_config_text(yaml.safe_dump({
        "source": {"kind": "debezium", "connector": "mysql" if mysql else "postgresql",
                   "database": "erp" if mysql else "public", "url": url, "subject": "debezium.>",
                   "stream": "DEBEZIUM", "decimals": decimals(name), **source},
        "stock": {"table": "stock_levels", "key": ["id"], "sku": "sku", "warehouse": "warehouse_code",
                  "quantity": "on_hand - reserved", "safety_stock": 1,
                  "locations": {"WH-MAD": "madrid", "WH-BCN": "madrid", "WH-MIL": "milan"}},
        "sinks": [{"name": "shop", "kind": "webhook", "url": shop_url, "timeout_seconds": 2,
                   "unsigned": True}],
        "outbox": {"path": str(tmp / "outbox.db")}, "ops": {"listen": "127.0.0.1:0"}}))


@pytest.mark.parametrize("name", list(FILES))
def test_decode_captured_envelopes(name: str) -> None:
    dec = DebeziumDecoder(decimals(name))
    out = [dec.decode(e["value"], e["key"]) for e in events(name)]
    assert [c.op if c else None for c in out] == ["r", "r", "r", "r", "c", "u", "u", "d", None, "u"]
    first, last = out[0], out[-1]
    assert first is not None and last is not None
    assert first.after is not None and first.after["on_hand"] == Decimal("10.000")
    assert last.after is not None and last.after["on_hand"] == Decimal("25.500")
    assert first.key == ("id",)
    if name.startswith("postgres"):
        assert first.table == "public.stock_levels" and first.source.position.count("/") == 1
        assert out[7] is not None and out[7].before == {**dict.fromkeys(out[7].before or {}), "id": 2}
        assert out[5] is not None and out[5].before is None  # REPLICA IDENTITY DEFAULT: no before-image
    else:
        assert first.table == "erp.stock_levels" and last.source.position.startswith("mysql-bin.000003:")
        assert out[5] is not None and out[5].before is not None and out[5].before["on_hand"] == Decimal(10)
    assert last.source.ts_ms > first.source.ts_ms
    if "schemaless" not in name:  # logical types are known only with the schema
        assert isinstance(last.after["updated_at"], datetime) and last.after["updated_at"].tzinfo is not None
        assert isinstance(last.after["received_at"], datetime)


def test_decimal_handling_modes() -> None:
    assert decimal_value("JxA=", 3) == Decimal("10.000")  # precise: unscaled two's complement
    assert decimal_value("/9g=", 2) == Decimal("-0.40")
    assert decimal_value("12.340", 3) == Decimal("12.340")  # string
    assert decimal_value(12.5, 1) == Decimal("12.5")  # double
    assert decimal_value({"scale": 2, "value": "BNI="}, 0) == Decimal("12.34")  # VariableScaleDecimal
    assert decimal_value(None, 2) is None


async def _publish(url: str, evs: list[dict[str, Any]], create: bool = True) -> None:
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    if create:
        await js.add_stream(StreamConfig(name="DEBEZIUM", subjects=["debezium.>"]))
    for e in evs:  # Debezium Server's NATS JetStream sink: one message per event, tombstone = empty body
        v = e["value"]
        await js.publish("debezium.erp.stock_levels", json.dumps(v).encode() if v is not None else b"")
    await nc.close()


class Run:
    def __init__(self, cfg: Any, **kw: Any) -> None:
        self.p = Pipeline(cfg, drain_seconds=1, **kw)
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.p.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Run:
        self.t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.t.join(30)
        assert not self.t.is_alive()


@pytest.mark.parametrize("name", list(FILES))
def test_bridge_over_nats_reaches_the_shop_and_resumes(name: str, nats_server: ThrowawayNats,  # noqa: F811
                                                        tmp_path: Path) -> None:
    shop = WebhookEmulator()
    shop.start()
    try:
        evs = events(name)
        asyncio.run(_publish(nats_server.url, evs))
        cfg = config(name, nats_server.url, tmp_path, shop.endpoint)
        with Run(cfg):
            assert wait_for(lambda: shop.stock() == EXPECTED, timeout=20), shop.stock()
        # a second run resumes after what the outbox holds: only the new event is applied
        later = json.loads(json.dumps(evs[-1]))
        body = later["value"]["payload"] if "payload" in later["value"] else later["value"]
        body["after"]["on_hand"] = "1.000" if isinstance(body["after"]["on_hand"], str) and "." in \
            body["after"]["on_hand"] else "A+g="  # 1.000 (string mode) / 1000 unscaled (bytes)
        asyncio.run(_publish(nats_server.url, [later], create=False))
        received = shop.received
        with Run(cfg):
            assert wait_for(lambda: shop.stock()[("SKU-B", "madrid")] == 0, timeout=20), shop.stock()
        assert shop.received - received == 1 and not shop.regressions
    finally:
        shop.stop()


# Kafka: no broker runs here. A stand-in consumer hands the same captured events to the real
# KafkaTransport (decoding, assignment seeks, offset commits) and records what it was asked to commit.
class _TP:
    def __init__(self, topic: str, partition: int, offset: int = -1001) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset


class _Msg:
    def __init__(self, topic: str, partition: int, offset: int, key: Any, value: Any) -> None:
        self._t, self._p, self._o = topic, partition, offset
        self._k = json.dumps(key).encode() if key is not None else None
        self._v = json.dumps(value).encode() if value is not None else None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v

    def error(self) -> None:
        return None


class StandInConsumer:
    """Two partitions of one topic (by key, like Kafka's partitioner); ``committed`` per partition."""

    def __init__(self, evs: list[dict[str, Any]], committed: dict[int, int] | None = None) -> None:
        self.log: dict[int, list[_Msg]] = {0: [], 1: []}
        for e in evs:
            p = _key_id(e["key"]) % 2
            self.log[p].append(_Msg("erp.stock_levels", p, len(self.log[p]), e["key"], e["value"]))
        self.committed = dict(committed or {})
        self.pos: dict[int, int] = {}

    def subscribe(self, topics: list[str], on_assign: Any) -> None:
        tps = [_TP(topics[0], 0), _TP(topics[0], 1)]
        on_assign(self, tps)

    def assign(self, tps: list[_TP]) -> None:
        for tp in tps:  # explicit offset from on_assign, else the group's committed one
            self.pos[tp.partition] = tp.offset if tp.offset >= 0 else self.committed.get(tp.partition, 0)

    def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
        out: list[_Msg] = []
        for p, msgs in self.log.items():
            take = msgs[self.pos[p]:self.pos[p] + num_messages - len(out)]
            self.pos[p] += len(take)
            out.extend(take)
        return out

    def commit(self, offsets: list[_TP], asynchronous: bool) -> None:
        assert not asynchronous
        for tp in offsets:
            self.committed[tp.partition] = tp.offset

    def close(self) -> None:
        return None


def _key_id(key: Any) -> int:
    return int((key.get("payload") or key)["id"]) if "payload" in key else int(key["id"])


def test_kafka_position_round_trip_and_order() -> None:
    a = kafka_position({("t", 1): 5, ("t", 0): 7})
    assert a == 'kafka:{"t/0":7,"t/1":5}' and kafka_offsets(a) == {("t", 0): 7, ("t", 1): 5}
    tr = KafkaTransport.__new__(KafkaTransport)
    b = kafka_position({("t", 0): 8, ("t", 1): 5})
    assert tr.compare(a, b) == -1 and tr.compare(b, a) == 1 and tr.compare(a, a) == 0
    assert tr.compare(a, kafka_position({("t", 0): 6, ("t", 1): 9})) == 0  # incomparable


@pytest.mark.parametrize("name", ["postgres", "mysql"])
def test_kafka_transport_decodes_and_commits_offsets(name: str, tmp_path: Path) -> None:
    shop = WebhookEmulator()
    shop.start()
    try:
        evs = events(name)
        cfg = config(name, "nats://unused:1", tmp_path, shop.endpoint, transport="kafka",
                     topics=["erp.stock_levels"], group_id="erpsync")
        consumer = StandInConsumer(evs)
        tables = ["public.stock_levels" if name == "postgres" else "erp.stock_levels"]
        src = DebeziumSource(cfg.source, tables, transport=KafkaTransport(cfg.source, consumer, _TP))
        with Run(cfg, source=src):
            assert wait_for(lambda: shop.stock() == EXPECTED, timeout=20), shop.stock()
            # offsets committed = last processed + 1, for every partition
            assert wait_for(lambda: consumer.committed == {p: len(m) for p, m in consumer.log.items()}, 10)
        # a crash after the outbox commit but before Kafka's: the group is behind; the outbox position
        # (what on_assign seeks to) wins, so nothing is applied twice and nothing is skipped
        received = shop.received
        evs2 = [*evs, {"key": evs[-1]["key"], "value": _with_on_hand(evs[-1]["value"], "30")}]
        consumer2 = StandInConsumer(evs2, committed={0: 0, 1: 0})
        src2 = DebeziumSource(cfg.source, tables, transport=KafkaTransport(cfg.source, consumer2, _TP))
        with Run(cfg, source=src2):
            assert wait_for(lambda: shop.stock()[("SKU-B", "madrid")] == 29, timeout=20), shop.stock()
            assert wait_for(lambda: consumer2.committed == {p: len(m) for p, m in consumer2.log.items()}, 10)
        assert shop.received - received == 1
    finally:
        shop.stop()


def _with_on_hand(value: dict[str, Any], amount: str) -> dict[str, Any]:
    v = json.loads(json.dumps(value))
    body = v.get("payload", v)
    cur = body["after"]["on_hand"]
    body["after"]["on_hand"] = f"{Decimal(amount):.3f}" if "." in cur else _b64(Decimal(amount), 3)
    body["op"] = "u"
    return v


def _b64(d: Decimal, scale: int) -> str:
    import base64

    n = int(d.scaleb(scale))
    return base64.b64encode(n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True)).decode()
