"""The YAML config: loading, ${ENV} / ${file:...} expansion and errors that name the YAML path.

Secrets (DSNs, tokens, keys) are SecretStr: they never appear in reprs, logs, errors or --json output.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Iterator
from functools import reduce
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from cdc.mapping.compiled import CompiledMapping
from cdc.mapping.model import MappingSpec
from cdc.mapping.rules import RuleError
from cdc.sources.registry import config_classes, kinds, plugin_for
from erpsync.logs import register_secret
from reconciler.config import ReconcileConfig
from sinks.config import SinkConfig

# ``source:`` is one of the registered databases' settings, told apart by ``kind``
SourceConfig: Any = reduce(operator.or_, config_classes())
_SOURCE_KINDS = tuple(kinds())


class ConfigError(ValueError):
    """Config is unusable. ``str()`` lists one ``file: yaml.path: problem`` line per problem."""


class OutboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field("erpsync.db", description="SQLite file (relative to the config file)")
    commit_interval_ms: int = Field(50, ge=0, description="group-commit window for ERP transactions")
    commit_max_rows: int = Field(20_000, gt=0, description="commit at least this often (memory bound)")


class OpsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    listen: str = Field("127.0.0.1:9187", pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$",
                        description="host:port of the metrics and health endpoint (loopback by default)")
    max_lag_seconds: float = Field(60.0, gt=0, description="/readyz fails above this lag")
    sink_down_seconds: float = Field(
        120.0, gt=0, description="/readyz fails when a sink with pending facts has only failed for this long")
    outage_budget_hours: float = Field(
        24.0, gt=0, description="how long erpsync may be down without losing the ERP log (doctor checks it)")


class EmbeddedBusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["embedded"] = "embedded"


class NatsBusConfig(BaseModel):
    """Scale-out: facts go to a JetStream stream partitioned by hash(sku); `erpsync worker` delivers them."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["nats"] = "nats"
    url: str = Field("nats://127.0.0.1:4222", description="comma-separated server URLs of one cluster")
    partitions: int = Field(8, ge=1, le=1024, description="fixed for the stream's life (hash(sku) % N)")
    stream: str = Field("ERPSYNC_FACTS", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    replicas: int = Field(1, ge=1, le=5, description="JetStream replicas (3 on a 3-node cluster)")
    duplicate_window_seconds: float = Field(
        600.0, gt=0, description="JetStream drops a re-published msg id within this window (crash replays)")
    max_in_flight: int = Field(1000, gt=0, description="publishes awaiting their ack at once")
    publish_timeout_seconds: float = Field(
        300.0, gt=0, description="keep retrying a batch (NATS down) this long before the reader fails")


class Config(MappingSpec):  # lookups, stock, prices: the mapping (cdc.mapping.model)
    model_config = ConfigDict(extra="forbid")

    source: SourceConfig = Field(discriminator="kind")
    bus: EmbeddedBusConfig | NatsBusConfig = Field(default_factory=EmbeddedBusConfig, discriminator="kind")
    sinks: list[SinkConfig] = Field(default_factory=list)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    ops: OpsConfig = Field(default_factory=OpsConfig)
    reconcile: ReconcileConfig | None = None

    # where it was loaded from, for relative paths and messages
    origin: str = Field("<config>", exclude=True)

    def outbox_path(self) -> Path:
        p = Path(self.outbox.path)
        if not p.is_absolute() and self.origin not in ("<config>", "<string>"):
            p = Path(self.origin).resolve().parent / p
        return p

    def sink(self, name: str) -> SinkConfig:
        for s in self.sinks:
            if s.name == name:
                return s
        raise ConfigError(f"{self.origin}: sinks: no sink named {name!r}")


_VAR = re.compile(r"\$\{([^}]+)\}")


def _expand(node: Any, path: str, problems: list[str]) -> Any:
    """Replace ${VAR}, ${VAR:-default} and ${file:/path} inside strings, remembering the YAML path."""
    if isinstance(node, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def sub(m: re.Match[str]) -> str:
        expr = m.group(1)
        if expr.startswith("file:"):
            fpath = expr[5:]
            try:
                return Path(fpath).read_text().strip()
            except OSError as e:
                problems.append(f"{path}: cannot read secret file {fpath}: {e.strerror}")
                return ""
        name, _, default = expr.partition(":-")
        if name in os.environ:
            return os.environ[name]
        if ":-" in expr:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    return _VAR.sub(sub, node)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in (*_SOURCE_KINDS, "embedded", "nats", "webhook", "function-after", "function-before"):
            continue  # discriminator tags pydantic inserts into the path
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def load_config_text(text: str, origin: str = "<string>") -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(f"{origin}: not valid YAML at {where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(raw).__name__}")
    problems: list[str] = []
    data = _expand(raw, "", problems)
    if problems:
        raise ConfigError("\n".join(f"{origin}: {p}" for p in problems))
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        # Never echo input values: they may be secrets.
        lines = [f"{origin}: {_loc(err['loc'])}: {err['msg']}" for err in e.errors(include_input=False)]
        raise ConfigError("\n".join(lines)) from None
    cfg.origin = origin
    names = [s.name for s in cfg.sinks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{origin}: sinks: duplicate sink name(s): {', '.join(dupes)}")
    if cfg.stock is None and cfg.prices is None:
        raise ConfigError(f"{origin}: stock: nothing is mapped (add a stock: or prices: block)")
    try:  # every rule must compile, and transpile for every dialect, before anything starts
        CompiledMapping.of(cfg)
    except RuleError as e:
        raise ConfigError(f"{origin}: {e}") from None
    register_secrets(cfg)
    return cfg


def register_secrets(cfg: Config) -> None:
    """Every SecretStr of the config, and what its source calls secret inside them (a DSN's password on
    its own), becomes redactable in any output — once, when the config is loaded."""
    for value in _secret_values(cfg):
        register_secret(value)
    for value in plugin_for(cfg.source.kind).secrets(cfg.source):
        register_secret(value)


def _secret_values(node: Any) -> Iterator[str]:
    if isinstance(node, SecretStr):
        yield node.get_secret_value()
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _secret_values(getattr(node, name, None))
    elif isinstance(node, list | tuple):
        for v in node:
            yield from _secret_values(v)
    elif isinstance(node, dict):
        for v in node.values():
            yield from _secret_values(v)


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror}") from None
    return load_config_text(text, str(p))
