"""Plain (non-replication) connections to the ERP database, for checks, snapshots in the reconciler and
the demo. Errors never include the DSN or password."""

from __future__ import annotations

from typing import Any

from cdc.normalize import StockNormalizer
from cdc.schema_check import SchemaError, check_rules
from erpsync.config import Config


class ConnectError(RuntimeError):
    pass


def connect(cfg: Config) -> Any:
    src = cfg.source
    if src.kind == "postgres":
        import psycopg2

        try:
            conn = psycopg2.connect(src.dsn.get_secret_value(), connect_timeout=10)
        except psycopg2.OperationalError as e:
            raise ConnectError(f"source.dsn: cannot connect to PostgreSQL: {_first(e)}") from None
        conn.autocommit = True
        return conn
    import pymysql

    try:
        return pymysql.connect(host=src.host, port=src.port, user=src.user,
                               password=src.password.get_secret_value(), database=src.database,
                               connect_timeout=10, autocommit=True)
    except pymysql.MySQLError as e:
        raise ConnectError(f"source: cannot connect to MySQL at {src.host}:{src.port}: {_first(e)}") from None


def dialect(cfg: Config) -> str:
    return "postgres" if cfg.source.kind == "postgres" else "mysql"


def check_mapping(cfg: Config, conn: Any | None = None) -> None:
    """Refuse a mapping whose table, columns or types do not fit the live ERP schema (SchemaError)."""
    import sqlite3

    own = conn is None
    conn = conn or connect(cfg)
    try:
        assert cfg.stock is not None
        default_schema = "public" if cfg.source.kind == "postgres" else cfg.source.database
        norm = StockNormalizer(cfg.stock, sqlite3.connect(":memory:"), default_schema=default_schema)
        check_rules(conn, dialect(cfg), norm.table, "stock.table", [norm.sku, norm.warehouse, norm.quantity],
                    numeric=[norm.quantity])
    finally:
        if own:
            conn.close()


def _first(e: Exception) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


__all__ = ["ConnectError", "SchemaError", "check_mapping", "connect", "dialect"]
