"""The ``reconcile:`` block of the config."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class EmailConfig(BaseModel):
    """SMTP settings. TLS is on by default and verified (system CA store, or ``ca_file``): implicit TLS on
    port 465, STARTTLS (required, never skipped) on any other port. Cleartext needs ``starttls: false``, and
    sending the password over it also ``allow_cleartext_password: true``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: list[str] = Field(min_length=1, description="recipients of the drift report")
    from_: str = Field("erpsync@localhost", alias="from", description="sender address")
    smtp_host: str = "localhost"
    smtp_port: int = Field(25, gt=0, lt=65536)
    username: str | None = None
    password: SecretStr | None = Field(None, description="use ${SMTP_PASSWORD}: never write it in the file")
    starttls: bool = Field(True, description="require STARTTLS before logging in and sending (false: "
                           "cleartext, only for a relay on loopback)")
    ssl: bool | None = Field(None, description="implicit TLS (default: on for port 465)")
    ca_file: str | None = Field(None, description="CA bundle to verify the SMTP server's certificate "
                                "(default: the system CA store)")
    allow_cleartext_password: bool = Field(False, description="let the password go over a connection "
                                           "without TLS (warned about on every send)")
    timeout_seconds: float = Field(30.0, gt=0)
    only_on_drift: bool = Field(False, description="send nothing when a run finds no drift")

    @property
    def tls(self) -> Literal["implicit", "starttls", "none"]:
        """How the connection is protected: implicit TLS, a required STARTTLS upgrade, or not at all."""
        if self.ssl or (self.ssl is None and self.smtp_port == 465):
            return "implicit"
        return "starttls" if self.starttls else "none"

    @model_validator(mode="after")
    def _no_cleartext_password(self) -> EmailConfig:
        if self.tls == "none" and self.username and not self.allow_cleartext_password:
            raise ValueError("starttls is false and ssl is off, so the SMTP password would be sent in "
                             "cleartext: enable TLS (starttls: true, or ssl: true on port 465), or set "
                             "allow_cleartext_password: true if the network is trusted")
        return self


class ReconcileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedule: str | None = Field(None, description="cron (5 fields) for `erpsync run` and --schedule")
    report_dir: str = Field("reports", description="where HTML and CSV reports go (relative to the config)")
    history: str = Field("reconcile.duckdb", description="DuckDB file keeping every run (for trends)")
    email: EmailConfig | None = None
    heal: bool = Field(False, description="write corrective facts for drifted keys on every run")
    heal_max_percent: float = Field(5.0, gt=0, le=100,
                                    description="refuse to heal more than this share of a sink's catalogue")
    catch_up_seconds: float = Field(15.0, ge=0, description="wait this long for the pipeline to reach the "
                                    "ERP snapshot's position, so unread changes are not taken for drift")
    chunk_rows: int = Field(100_000, gt=0, description="rows per chunk when reading snapshots")
    report_items: int = Field(2000, gt=0, description="worst items shown in the HTML (the CSV has all)")
    trend_runs: int = Field(30, gt=1, description="recent runs shown in the trend chart")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from croniter import croniter

        if not croniter.is_valid(v):
            raise ValueError(f"not a valid cron expression: {v!r}")
        return v


def resolve(origin: str, path: str) -> Path:
    """A path of the config, relative to the config file (like outbox.path)."""
    p = Path(path)
    if not p.is_absolute() and origin not in ("<config>", "<string>"):
        p = Path(origin).resolve().parent / p
    return p
