"""MySQL / MariaDB source settings (the ``source:`` block of the YAML with ``kind: mysql``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cdc.sources.admin import MIN_HEARTBEAT_SECONDS, TlsConfig


class MySQLSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["mysql"] = "mysql"
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "erpsync"
    password: SecretStr = SecretStr("")
    database: str
    server_id: int = Field(4242, ge=1, lt=2**32, description="unique among the server's replicas")
    flavor: Literal["auto", "mariadb", "mysql"] = "auto"
    use_gtid: bool = Field(True, description="resume by GTID when the server has GTIDs enabled")
    heartbeat_seconds: float = Field(10.0, ge=MIN_HEARTBEAT_SECONDS)
    snapshot_chunk_rows: int = Field(10_000, gt=0)
    tls: TlsConfig | None = Field(None, description="TLS for the control and binlog connections")

    def ssl_kwargs(self) -> dict[str, Any]:
        """pymysql.connect() TLS arguments (empty: PyMySQL's default, TLS if offered, unverified)."""
        return {} if self.tls is None else {"ssl": self.tls.context()}
