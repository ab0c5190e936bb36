"""Source settings (the ``source:`` block of the YAML): each database's class lives in its own folder
(cdc/sources/<db>/config.py); this module re-exports them for existing imports."""

from __future__ import annotations

from cdc.sources.debezium.config import DebeziumSourceConfig
from cdc.sources.mysql.config import MySQLSourceConfig
from cdc.sources.postgres.config import PostgresSourceConfig

SourceConfig = PostgresSourceConfig | MySQLSourceConfig | DebeziumSourceConfig

__all__ = ["DebeziumSourceConfig", "MySQLSourceConfig", "PostgresSourceConfig", "SourceConfig"]
