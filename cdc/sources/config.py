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


SourceConfig = PostgresSourceConfig | MySQLSourceConfig
