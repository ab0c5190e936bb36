"""Plain (non-replication) connections to the ERP database — each database's plugin opens its own — and
the mapping's check against the live schema. Errors never include the DSN or password."""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from cdc.mapping.compiled import CompiledMapping
from cdc.mapping.safe_sql import UnsafeSQL, checked, write
from cdc.mapping.schema_check import SchemaError, check_rules
from cdc.sources.admin import ConnectError, first_line
from cdc.sources.registry import plugin_for
from erpsync.config import Config


def connect(cfg: Config) -> Any:
    """The source's plain SQL connection (ConnectUnavailable: time fixes it; ConnectMisconfigured: a
    person must act; both are ConnectError)."""
    return plugin_for(cfg.source.kind).connect_sql(cfg.source)


def dialect(cfg: Config) -> str:
    return plugin_for(cfg.source.kind).dialect(cfg.source)


def check_mapping(cfg: Config, conn: Any | None = None) -> None:
    """Refuse a mapping whose table, columns or types do not fit the live ERP schema (SchemaError)."""
    own = conn is None
    conn = conn or connect(cfg)
    try:
        from cdc.mapping.snapshot_sql import facts_trees

        d = dialect(cfg)
        norm = CompiledMapping.of(cfg)
        for name, lk in norm.lookups.items():
            rules = [lk.value, *([lk.filter] if lk.filter else [])]
            check_rules(conn, d, lk.table, f"lookups.{name}.table", rules, numeric=[],
                        extra_columns={f"lookups.{name}.key": lk.key})
        # rules calling lookup() are checked with the lookup as the correlated subquery the snapshot uses
        render = facts_trees(norm, d)  # builds (and validates) every subquery
        for block in norm.blocks:
            check_rules(conn, d, block.table, f"{block.path}.table", list(block.rules.values()),
                        numeric=block.numeric, lookup_sql=_lookup_renderer(cfg, norm, d))
        with conn.cursor() as cur:  # the whole snapshot SELECT must run too (types of CASE, windows...)
            for kind, tree in render.items():
                where = "stock" if kind == "stock" else "prices"
                none = exp.select(exp.Star()).from_(tree.subquery("q")).where(
                    exp.EQ(this=exp.Literal.number(1), expression=exp.Literal.number(0)))
                try:
                    sql = checked(conn, write(none, d), d)
                except UnsafeSQL as e:
                    raise SchemaError(f"{where}: the snapshot SELECT is refused: {e}") from None
                try:
                    cur.execute(sql)
                except Exception as e:
                    _reset(conn)
                    raise SchemaError(f"{where}: the snapshot SELECT fails on the ERP: "
                                      f"{first_line(e)}") from None
    finally:
        if own:
            conn.close()


def _lookup_renderer(cfg: Config, norm: Any, d: str) -> Any:
    from cdc.mapping.snapshot_sql import SnapshotSQL

    return SnapshotSQL(norm, d).lookup_sql


def _reset(conn: Any) -> None:
    from cdc.mapping.schema_check import rollback_quietly as reset

    reset(conn)


__all__ = ["ConnectError", "SchemaError", "check_mapping", "connect", "dialect"]
