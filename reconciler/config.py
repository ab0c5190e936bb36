"""The ``reconcile:`` block of the config."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class EmailConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: list[str] = Field(min_length=1, description="recipients of the drift report")
    from_: str = Field("erpsync@localhost", alias="from", description="sender address")
    smtp_host: str = "localhost"
    smtp_port: int = Field(25, gt=0, lt=65536)
    username: str | None = None
    password: SecretStr | None = Field(None, description="use ${SMTP_PASSWORD}: never write it in the file")
    starttls: bool = Field(False, description="upgrade the connection with STARTTLS before logging in")
    ssl: bool = Field(False, description="implicit TLS (port 465)")
    timeout_seconds: float = Field(30.0, gt=0)
    only_on_drift: bool = Field(False, description="send nothing when a run finds no drift")


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
