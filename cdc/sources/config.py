"""Source settings (the ``source:`` block of the YAML)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PostgresSourceConfig(_Strict):
    kind: Literal["postgres"] = "postgres"
    dsn: SecretStr = Field(description="libpq DSN; put the password in an env var: ${ERP_DSN}")
    slot: str = Field("erpsync", pattern=r"^[a-z0-9_]{1,63}$")
    publication: str = Field("erpsync", pattern=r"^[A-Za-z0-9_]{1,63}$")
    heartbeat_seconds: float = Field(10.0, gt=0, description="pg_logical_emit_message interval")
    status_interval_seconds: float = Field(1.0, gt=0, description="send feedback at least this often")
    proto_version: Literal[1, 2] = 1
    create_publication: bool = Field(True, description="create the publication if missing (needs ownership)")


class MySQLSourceConfig(_Strict):
    kind: Literal["mysql"] = "mysql"
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "erpsync"
    password: SecretStr = SecretStr("")
    database: str
    server_id: int = Field(4242, ge=1, lt=2**32, description="unique among the server's replicas")
    flavor: Literal["auto", "mariadb", "mysql"] = "auto"
    use_gtid: bool = Field(True, description="resume by GTID when the server has GTIDs enabled")
    heartbeat_seconds: float = Field(10.0, gt=0)
    snapshot_chunk_rows: int = Field(10_000, gt=0)


class DebeziumSourceConfig(_Strict):
    """Debezium JSON change events (the standard envelope, with or without ``schema``) from a NATS
    JetStream subject (e.g. Debezium Server's nats-jetstream sink) or from Kafka topics."""

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


SourceConfig = PostgresSourceConfig | MySQLSourceConfig | DebeziumSourceConfig
