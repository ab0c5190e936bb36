"""Debezium source settings (the ``source:`` block of the YAML with ``kind: debezium``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DebeziumSourceConfig(BaseModel):
    """Debezium JSON change events (the standard envelope, with or without ``schema``) from a NATS
    JetStream subject (e.g. Debezium Server's nats-jetstream sink) or from Kafka topics."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["debezium"] = "debezium"
    transport: Literal["nats", "kafka"] = "nats"
    connector: Literal["postgresql", "mysql"] = Field(description="the Debezium connector that wrote them")
    database: str = Field("public", description="default schema for unqualified mapping tables "
                                                "(PostgreSQL: the schema; MySQL: the database)")
    # nats
    url: str = "nats://127.0.0.1:4222"
    stream: str = Field("DEBEZIUM", description="JetStream stream holding the change events")
    subject: str = Field("debezium.>", description="filter subject (one: nats-server 2.9 consumers)")
    durable: str = Field("erpsync", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # kafka (confluent-kafka)
    bootstrap_servers: str = "127.0.0.1:9092"
    topics: list[str] = Field(default_factory=list)
    group_id: str = "erpsync"
    kafka: dict[str, str] = Field(default_factory=dict, description="extra librdkafka settings")
    # schemaless envelopes carry no decimal scale: name the decimal columns (column -> scale)
    decimals: dict[str, int] = Field(default_factory=dict)
    batch: int = Field(1000, gt=0, description="events per fetch")
