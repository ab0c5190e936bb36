"""The YAML config: loading, ${ENV} / ${file:...} expansion and errors that name the YAML path.

Secrets (DSNs, tokens, keys) are SecretStr: they never appear in reprs, logs, errors or --json output.
"""

from __future__ import annotations

import operator
import os
import re
import stat
import types
from collections.abc import Iterator
from functools import reduce
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from cdc.mapping.compiled import CompiledMapping
from cdc.mapping.model import MappingSpec
from cdc.mapping.rules import RuleError
from cdc.sources.registry import config_classes, kinds, plugin_for
from erpsync.logs import register_secret
from reconciler.config import ReconcileConfig
from sinks.config import SinkConfig, is_loopback

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

    @field_validator("listen")
    @classmethod
    def _check_port(cls, v: str) -> str:
        if int(v.rpartition(":")[2]) > 65535:
            raise ValueError("port must be a number from 0 to 65535 (0: any free port)")
        return v

    def config_warnings(self) -> list[str]:
        host = self.listen.rpartition(":")[0]
        if is_loopback(host):
            return []
        return [f"listen: {host} is not loopback: metrics and health (table, sink and SKU counts) are "
                "served to the network; keep it on 127.0.0.1 or firewall the port"]


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

    def config_warnings(self) -> list[str]:
        """Dangerous but legitimate settings, ``yaml.path: why`` (config validate prints them, run logs them
        at WARNING)."""
        out = [f"ops.{w}" for w in self.ops.config_warnings()]
        for i, s in enumerate(self.sinks):
            out += [f"sinks[{i}].{w}" for w in s.config_warnings()]
        return [f"{self.origin}: {w}" for w in out]

    def sink(self, name: str) -> SinkConfig:
        for s in self.sinks:
            if s.name == name:
                return s
        raise ConfigError(f"{self.origin}: sinks: no sink named {name!r}")


_VAR = re.compile(r"\$\{([^}]+)\}")
MAX_SECRET_FILE_BYTES = 64 * 1024


def _expand(node: Any, path: str, problems: list[str], ann: Any = None) -> Any:
    """Replace ${VAR}, ${VAR:-default} and ${file:/path} inside strings, remembering the YAML path. ``ann``
    is the config type expected at ``node`` (from the models): ${file:...} is read only into a secret
    field, so a file's content can never be echoed by a check or sent to a shop as a plain value."""
    if isinstance(node, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), problems, _child(ann, node, k))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, f"{path}[{i}]", problems, _child(ann, node, i)) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node
    secret = _is_secret(ann)

    def sub(m: re.Match[str]) -> str:
        expr = m.group(1)
        if expr.startswith("file:"):
            if not secret:
                problems.append(f"{path}: ${{file:...}} is allowed only in a secret field (a password, "
                                "token, key or DSN)")
                return ""
            return _read_secret_file(expr[5:], path, problems)
        name, _, default = expr.partition(":-")
        if name in os.environ:
            return os.environ[name]
        if ":-" in expr:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    return _VAR.sub(sub, node)


def _read_secret_file(fpath: str, path: str, problems: list[str]) -> str:
    """A regular file of at most MAX_SECRET_FILE_BYTES of UTF-8, stripped. Errors name the file, never its
    content (a FIFO or a device is refused before reading: no hang, no endless read)."""
    try:
        fd = os.open(fpath, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        problems.append(f"{path}: cannot read secret file {fpath}: {e.strerror}")
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            problems.append(f"{path}: secret file {fpath} is not a regular file")
            return ""
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as e:
        problems.append(f"{path}: cannot read secret file {fpath}: {e.strerror}")
        return ""
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_FILE_BYTES:
        problems.append(f"{path}: secret file {fpath} is over {MAX_SECRET_FILE_BYTES // 1024} KiB")
        return ""
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        problems.append(f"{path}: secret file {fpath} is not UTF-8 text")
        return ""


def _members(ann: Any) -> list[Any]:
    """The types an annotation allows, Annotated and unions unwrapped."""
    if get_origin(ann) is Annotated:
        return _members(get_args(ann)[0])
    if get_origin(ann) in (Union, types.UnionType):
        return [m for a in get_args(ann) for m in _members(a)]
    return [ann]


def _child(ann: Any, node: dict[Any, Any] | list[Any], key: Any) -> Any:
    """The annotation of ``node[key]`` when ``node`` is of type ``ann`` (None when unknown); a union of
    models is told apart by the node's ``kind``."""
    found: list[Any] = []
    for m in _members(ann):
        origin, args = get_origin(m), get_args(m)
        if isinstance(node, list) and origin in (list, tuple) and args:
            found.append(args[0])
        elif isinstance(node, dict) and origin is dict and len(args) == 2:
            found.append(args[1])
        elif isinstance(node, dict) and isinstance(m, type) and issubclass(m, BaseModel):
            kind = m.model_fields.get("kind")
            if kind is not None and "kind" in node and node["kind"] not in _literal_values(kind.annotation):
                continue
            if isinstance(key, str) and key in m.model_fields:
                found.append(m.model_fields[key].annotation)
    if not found:
        return None
    return found[0] if len(found) == 1 else Union[tuple(found)]  # noqa: UP007


def _literal_values(ann: Any) -> tuple[Any, ...]:
    return tuple(v for m in _members(ann) if get_origin(m) is Literal for v in get_args(m))


def _is_secret(ann: Any) -> bool:
    """True when every type the field allows is a SecretStr (or None)."""
    members = [m for m in _members(ann) if m is not type(None)]
    return bool(members) and all(m is SecretStr for m in members)


def _sink_kinds() -> tuple[str, ...]:
    return tuple(v for m in _members(SinkConfig) for v in _literal_values(m.model_fields["kind"].annotation))


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in (*_SOURCE_KINDS, *_sink_kinds(), "embedded", "nats", "function-after",
                      "function-before"):
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
    data = _expand(raw, "", problems, Config)
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
    refused = _refusals(cfg)
    if refused:
        raise ConfigError("\n".join(f"{origin}: {p}" for p in refused))
    if cfg.stock is None and cfg.prices is None:
        raise ConfigError(f"{origin}: stock: nothing is mapped (add a stock: or prices: block)")
    try:  # every rule must compile, and transpile for every dialect, before anything starts
        CompiledMapping.of(cfg)
    except RuleError as e:
        raise ConfigError(f"{origin}: {e}") from None
    register_secrets(cfg)
    return cfg


def _refusals(cfg: Config) -> list[str]:
    """What the models alone cannot refuse: settings that are valid types but unsafe or absurd together."""
    out = []
    port = getattr(cfg.source, "port", None)
    if isinstance(port, int) and not 1 <= port <= 65535:
        out.append("source.port: must be a number from 1 to 65535")
    for i, s in enumerate(cfg.sinks):
        if s.kind == "webhook" and s.secret is None and not s.unsigned:
            out.append(f"sinks[{i}].secret: a webhook sink needs a secret to sign its pushes (the receiver "
                       "checks it); set secret: ${...}, or opt in to unsigned pushes with unsigned: true")
    return out


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
