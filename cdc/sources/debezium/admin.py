"""The Debezium bridge's plugin: it reads change events from NATS or Kafka, not the ERP, so it has no SQL
connection (``has_sql = False``): no doctor checks, setup plan or ERP status of its own — Debezium's
connector holds those prerequisites."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cdc.changes import Source, SourceMisconfigured
from cdc.sources.admin import WARN, Check, DoctorInput, ErpStatus, Plan, SetupError, SetupRequest
from cdc.sources.debezium.config import DebeziumSourceConfig

_NO_SQL = ("a Debezium source reads change events, not the ERP: erpsync has no connection to it "
           "(the connector's own prerequisites are Debezium's to check)")


def compare_positions(a: str, b: str) -> int:
    """``nats:<seq>`` by sequence; ``kafka:{...}`` partially (a < b when no partition of a is ahead)."""
    from cdc.sources.debezium.bridge import compare_kafka

    if a.startswith("kafka:") or b.startswith("kafka:"):
        return compare_kafka(a, b)
    s, t = (int(p.split(":", 1)[1]) if p.startswith("nats:") else 0 for p in (a, b))
    return (s > t) - (s < t)


class DebeziumPlugin:
    kind = "debezium"
    config_class = DebeziumSourceConfig
    has_sql = False

    def dialect(self, src: DebeziumSourceConfig) -> str:
        return "postgres" if src.connector == "postgresql" else "mysql"

    def default_schema(self, src: DebeziumSourceConfig) -> str:
        return src.database

    def source_id(self, src: DebeziumSourceConfig) -> str:
        return f"debezium:{src.transport}:{src.durable if src.transport == 'nats' else src.group_id}"

    def secrets(self, src: DebeziumSourceConfig) -> list[str]:
        return []

    def make_source(self, src: DebeziumSourceConfig, tables: list[str]) -> Source:
        from cdc.sources.debezium.bridge import DebeziumSource

        return DebeziumSource(src, tables)

    def compare(self, a: str, b: str) -> int:
        return compare_positions(a, b)

    def connect_sql(self, src: DebeziumSourceConfig) -> Any:
        raise SourceMisconfigured(f"source: {_NO_SQL}")

    def doctor_checks(self, src: DebeziumSourceConfig, inp: DoctorInput) -> list[Check]:
        return [Check("erp", WARN, f"not checked: {_NO_SQL}")]

    def setup_plan(self, src: DebeziumSourceConfig, req: SetupRequest) -> tuple[Plan, Any]:
        raise SetupError(f"nothing to set up: {_NO_SQL}")

    def erp_status(self, conn: Any, src: DebeziumSourceConfig, stored: str | None) -> ErpStatus:
        return ErpStatus({"reachable": False, "error": f"not checked: {_NO_SQL}"})

    def teardown_question(self, src: DebeziumSourceConfig) -> str | None:
        return None

    def teardown(self, src: DebeziumSourceConfig, say: Callable[[str], None]) -> bool:
        say("Debezium: erpsync keeps nothing on the ERP (the connector owns its slot or binlog reader)")
        return False

    def reset_snapshot(self, src: DebeziumSourceConfig, tables: list[str]) -> None:
        return None  # the next run reads the stream from its start


PLUGIN = DebeziumPlugin()
