"""Debezium JSON change events → RowChange, shared by the NATS and Kafka transports (pure, no I/O).

The standard envelope: ``{"schema": ..., "payload": {before, after, source, op, ts_ms}}``, or the payload
alone (``value.converter.schemas.enable=false``). With the schema part, logical types are decoded:
Decimal (base64 two's-complement bytes with ``scale``, or a string / double per decimal.handling.mode),
VariableScaleDecimal, Timestamp (ms), MicroTimestamp (µs), NanoTimestamp, ZonedTimestamp (ISO text) and
Date (days). In string mode, or without the schema part, nothing says a value is a decimal:
``decimals`` (column → scale) names those columns.
A tombstone (null value after a delete) decodes to None, as do logical-decoding messages (op "m").
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from cdc.changes import RowChange, SourceInfo

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DECIMAL_TEXT = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
Conv = Callable[[Any], Any]


def _unscaled(b64: str, scale: int) -> Decimal:
    raw = base64.b64decode(b64)
    return Decimal(int.from_bytes(raw, "big", signed=True)).scaleb(-scale)


def decimal_value(v: Any, scale: int) -> Decimal | None:
    """Any of Debezium's decimal.handling.mode forms: precise (base64 bytes), string, double."""
    if v is None:
        return None
    if isinstance(v, int | float):
        return Decimal(str(v))
    if isinstance(v, dict):  # VariableScaleDecimal
        return _unscaled(v["value"], int(v["scale"]))
    if _DECIMAL_TEXT.match(v):
        return Decimal(v)
    return _unscaled(v, scale)


def _converter(field: dict[str, Any]) -> Conv | None:
    name = field.get("name") or ""
    params = field.get("parameters") or {}
    if name == "org.apache.kafka.connect.data.Decimal":
        scale = int(params.get("scale", 0))
        return lambda v: decimal_value(v, scale)
    if name == "io.debezium.data.VariableScaleDecimal":
        return lambda v: decimal_value(v, 0)
    if field.get("type") in ("double", "float") and name == "":
        return None
    if name in ("io.debezium.time.Timestamp", "org.apache.kafka.connect.data.Timestamp"):
        return lambda v: None if v is None else _EPOCH + timedelta(milliseconds=v)
    if name == "io.debezium.time.MicroTimestamp":
        return lambda v: None if v is None else _EPOCH + timedelta(microseconds=v)
    if name == "io.debezium.time.NanoTimestamp":
        return lambda v: None if v is None else _EPOCH + timedelta(microseconds=v // 1000)
    if name == "io.debezium.time.ZonedTimestamp":
        return lambda v: None if v is None else datetime.fromisoformat(v.replace("Z", "+00:00"))
    if name in ("io.debezium.time.Date", "org.apache.kafka.connect.data.Date"):
        return lambda v: None if v is None else date(1970, 1, 1) + timedelta(days=v)
    return None


def _row_converters(schema: dict[str, Any] | None) -> dict[str, Conv]:
    """Column → converter, from the envelope schema's ``after`` (or ``before``) struct."""
    if not schema:
        return {}
    for f in schema.get("fields", []):
        if f.get("field") in ("after", "before") and f.get("fields"):
            return {c["field"]: conv for c in f["fields"] if (conv := _converter(c)) is not None}
    return {}


def _lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def source_info(src: dict[str, Any]) -> SourceInfo:
    """Our SourceInfo from Debezium's ``source`` block, with the ERP-side position it names."""
    connector = src.get("connector") or "?"
    if connector == "postgresql":
        lsn = src.get("lsn")
        pos = _lsn_text(int(lsn)) if lsn is not None else ""
        return SourceInfo("postgresql", src.get("db", ""), src.get("schema") or "public",
                          src.get("table", ""), pos, src.get("txId"), int(src.get("ts_ms") or 0))
    # mysql / mariadb: binlog file:pos (and the GTID when the server has them); the schema is the database
    pos = f"{src.get('file', '')}:{src.get('pos', 0)}" if src.get("file") else ""
    if src.get("gtid"):
        pos = f"{pos}@{src['gtid']}"
    db = src.get("db", "")
    return SourceInfo("mysql", db, db, src.get("table", ""), pos, src.get("gtid") or pos or None,
                      int(src.get("ts_ms") or 0))


def _key_columns(key: Any) -> tuple[str, ...]:
    """The Kafka message key (``{schema, payload: {pk: v}}`` or the bare dict) names the key columns."""
    if isinstance(key, bytes | str):
        key = json.loads(key) if key else None
    if isinstance(key, dict) and "payload" in key and "schema" in key:
        key = key["payload"]
    return tuple(key) if isinstance(key, dict) else ()


class DebeziumDecoder:
    """``decode(value, key)`` → RowChange or None."""

    def __init__(self, decimals: dict[str, int] | None = None) -> None:
        self.decimals = dict(decimals or {})

    def _convert(self, row: dict[str, Any] | None, conv: dict[str, Conv]) -> dict[str, Any] | None:
        if row is None:
            return None
        out = dict(row)
        for col, fn in conv.items():
            if col in out:
                out[col] = fn(out[col])
        for col, scale in self.decimals.items():
            if col in out and not isinstance(out[col], Decimal):
                out[col] = decimal_value(out[col], scale)
        return out

    def decode(self, value: bytes | str | dict[str, Any] | None, key: Any = None) -> RowChange | None:
        if value is None or value in (b"", "", b"null", "null"):
            return None  # tombstone: the delete before it already carried the change
        env = json.loads(value) if isinstance(value, bytes | str) else value
        payload = env["payload"] if "payload" in env and "schema" in env else env
        if payload is None:
            return None
        op = payload.get("op")
        if op not in ("c", "u", "d", "r", "t"):
            return None  # "m": a logical-decoding message, not a row
        # derived per event, not cached by schema name: an ALTER TABLE keeps the name, changes the fields
        conv = _row_converters(env.get("schema")) if payload is not env else {}
        src = source_info(payload.get("source") or {})
        return RowChange(op, src, self._convert(payload.get("before"), conv),
                         self._convert(payload.get("after"), conv), _key_columns(key))
