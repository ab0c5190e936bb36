"""How the pipeline wires its parts: each delivery thread takes its own sink's settings (by name, not by
position), and the facts-written metric counts each fact kind under its own label."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from erpsync.config import ConfigError, load_config_text
from erpsync.pipeline import Pipeline
from sinks.config import WebhookSinkConfig
from sinks.webhook import WebhookSink


def config(tmp_path: Path, pg_dsn: str) -> str:
    return yaml.safe_dump({
        "source": {"kind": "postgres", "dsn": pg_dsn},
        "stock": {"table": "t", "sku": "sku", "warehouse": "w", "quantity": "q", "locations": {"A": "a"}},
        "sinks": [{"name": "first", "kind": "webhook", "url": "http://127.0.0.1:9/a", "max_attempts": 3,
                   "unsigned": True},
                  {"name": "second", "kind": "webhook", "url": "http://127.0.0.1:9/b", "max_attempts": 7,
                   "unsigned": True}],
        "outbox": {"path": str(tmp_path / "outbox.db")}})


def test_each_delivery_thread_gets_its_own_sinks_settings(tmp_path: Path, pg_dsn: str) -> None:
    cfg = load_config_text(config(tmp_path, pg_dsn))
    given = [WebhookSink(WebhookSinkConfig(name="second", url="http://127.0.0.1:9/b")),
             WebhookSink(WebhookSinkConfig(name="first", url="http://127.0.0.1:9/a"))]  # not config order
    p = Pipeline(cfg, sinks=given)
    try:
        assert {d.sink.name: d.max_attempts for d in p.deliverers} == {"second": 7, "first": 3}
    finally:
        p.outbox.close()
        p.source.close()
    stranger = [WebhookSink(WebhookSinkConfig(name="nowhere", url="http://127.0.0.1:9/c"))]
    with pytest.raises(ConfigError, match="nowhere"):
        Pipeline(cfg, sinks=stranger)
