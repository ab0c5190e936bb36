"""PostgreSQL source settings (the ``source:`` block of the YAML with ``kind: postgres``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from cdc.sources.admin import MIN_HEARTBEAT_SECONDS, TlsConfig, dsn_syntax_problem

# COMMENT ON ROLE / PUBLICATION of what erpsync created: setup and teardown touch only objects carrying it
OWNED_MARK = "managed by erpsync (created by erpsync setup or run; erpsync teardown drops it)"


def parse_dsn(dsn: str) -> dict[str, str]:
    """libpq's own reading of a DSN (key=value or URI). ValueError without any fragment of the DSN."""
    import psycopg2
    import psycopg2.extensions

    try:
        return dict(psycopg2.extensions.parse_dsn(dsn))
    except psycopg2.Error as e:
        raise ValueError(dsn_syntax_problem(str(e))) from None


class PostgresSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["postgres"] = "postgres"
    dsn: SecretStr = Field(description="libpq DSN; put the password in an env var: ${ERP_DSN}")
    slot: str = Field("erpsync", pattern=r"^[a-z0-9_]{1,63}$")
    publication: str = Field("erpsync", pattern=r"^[A-Za-z0-9_]{1,63}$")
    heartbeat_seconds: float = Field(10.0, ge=MIN_HEARTBEAT_SECONDS,
                                     description="pg_logical_emit_message interval (an ERP transaction each)")
    status_interval_seconds: float = Field(1.0, gt=0, description="send feedback at least this often")
    proto_version: Literal[1, 2] = 1
    create_publication: bool = Field(True, description="create the publication if missing (needs ownership)")
    tls: TlsConfig | None = Field(None, description="verified TLS (sslmode=verify-full); or set sslmode / "
                                                    "sslrootcert in the DSN itself")

    @field_validator("dsn")
    @classmethod
    def _dsn_parses(cls, v: SecretStr) -> SecretStr:
        parse_dsn(v.get_secret_value())
        return v

    @model_validator(mode="after")
    def _one_tls_setting(self) -> PostgresSourceConfig:
        if self.tls is not None and "sslmode" in parse_dsn(self.dsn.get_secret_value()):
            raise ValueError("tls: the DSN sets sslmode as well; configure TLS in one place")
        return self

    def dsn_parts(self) -> dict[str, str]:
        return parse_dsn(self.dsn.get_secret_value())

    def tls_kwargs(self) -> dict[str, str]:
        """What ``source.tls`` adds to the DSN's own settings for psycopg2.connect()."""
        if self.tls is None:
            return {}
        out = {"sslmode": "verify-full" if self.tls.verify else "require"}
        if self.tls.ca_file:
            out["sslrootcert"] = self.tls.ca_file
        return out
