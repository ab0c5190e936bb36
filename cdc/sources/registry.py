"""Every ERP database erpsync reads, behind one protocol. A new database is a folder under cdc/sources/
(config.py, admin.py with its ``PLUGIN``, the reader) plus one line in ``_PLUGINS``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel

from cdc.changes import Source
from cdc.sources.admin import Check, DoctorInput, ErpStatus, Plan, SetupRequest

_PLUGINS = {  # kind -> module holding PLUGIN (imported on first use: no driver is loaded before it is needed)
    "postgres": "cdc.sources.postgres.admin",
    "mysql": "cdc.sources.mysql.admin",
    "debezium": "cdc.sources.debezium.admin",
}


class SourcePlugin(Protocol):
    kind: str  # the ``source.kind`` discriminator
    config_class: type[BaseModel]  # the ``source:`` block's settings
    has_sql: bool  # a plain SQL connection to the ERP exists (snapshot/reconcile SELECTs, schema check)

    def dialect(self, src: Any) -> str:
        """sqlglot dialect of the ERP's SQL (snapshot SELECTs, rule checks)."""

    def default_schema(self, src: Any) -> str:
        """Where unqualified mapping tables live."""

    def source_id(self, src: Any) -> str:
        """The key of this reader's position in the outbox."""

    def secrets(self, src: Any) -> list[str]:
        """Values to redact from every output."""

    def make_source(self, src: Any, tables: list[str]) -> Source: ...

    def compare(self, a: str, b: str) -> int:
        """-1, 0, 1 like cmp() for two positions of this kind."""

    def connect_sql(self, src: Any) -> Any:
        """A DB-API connection (autocommit). Raises ConnectUnavailable / ConnectMisconfigured."""

    def doctor_checks(self, src: Any, inp: DoctorInput) -> list[Check]: ...

    def setup_plan(self, src: Any, req: SetupRequest) -> tuple[Plan, Any]:
        """The least-privilege plan and, for --apply, the admin connection (caller closes). SetupError."""

    def erp_status(self, conn: Any, src: Any, stored: str | None) -> ErpStatus:
        """Slot / binlog retention and lag for ``erpsync status`` (on a connect_sql() connection)."""

    def teardown_question(self, src: Any) -> str | None:
        """What ``teardown`` asks before dropping server-side state; None: nothing to drop."""

    def teardown(self, src: Any, say: Callable[[str], None]) -> bool:
        """Decommission; True when the stored position is void (the caller resets the outbox's). Raises
        SourceError with what to run by hand."""

    def reset_snapshot(self, src: Any, tables: list[str]) -> None:
        """Make the next run take a fresh snapshot (PostgreSQL: drop the slot; MySQL: nothing)."""


def kinds() -> list[str]:
    return list(_PLUGINS)


def plugin_for(kind: str) -> SourcePlugin:
    try:
        module = _PLUGINS[kind]
    except KeyError:
        raise ValueError(f"unknown source kind {kind!r} (known: {', '.join(_PLUGINS)})") from None
    plugin: SourcePlugin = importlib.import_module(module).PLUGIN
    return plugin


def config_classes() -> list[type[BaseModel]]:
    """Every database's settings class, for the config's ``source:`` union (discriminated by ``kind``)."""
    return [plugin_for(k).config_class for k in _PLUGINS]


__all__ = ["SourcePlugin", "config_classes", "kinds", "plugin_for"]
