"""PostgreSQL source settings (the ``source:`` block of the YAML with ``kind: postgres``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class PostgresSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["postgres"] = "postgres"
    dsn: SecretStr = Field(description="libpq DSN; put the password in an env var: ${ERP_DSN}")
    slot: str = Field("erpsync", pattern=r"^[a-z0-9_]{1,63}$")
    publication: str = Field("erpsync", pattern=r"^[A-Za-z0-9_]{1,63}$")
    heartbeat_seconds: float = Field(10.0, gt=0, description="pg_logical_emit_message interval")
    status_interval_seconds: float = Field(1.0, gt=0, description="send feedback at least this often")
    proto_version: Literal[1, 2] = 1
    create_publication: bool = Field(True, description="create the publication if missing (needs ownership)")
