"""Check a mapping against the live ERP schema before anything starts.

Each rule is run by the ERP database itself in a ``SELECT <rule> FROM <table> WHERE 1 = 0``, so a wrong
column or a type the expression cannot handle is refused by the database's own type checker, and the
error names the rule's YAML path. Nothing is read or written.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqlglot import exp

from cdc.mapping.rules import Rule, RuleError
from cdc.mapping.safe_sql import UnsafeSQL, checked, write

# DB-API type codes meaning "a number": PostgreSQL OIDs, and MySQL FIELD_TYPE codes
PG_NUMERIC = {20, 21, 23, 26, 700, 701, 1700}
MYSQL_NUMERIC = {0, 1, 2, 3, 4, 5, 8, 9, 13, 16, 246}


class SchemaError(ValueError):
    pass


def table_tree(table: str) -> exp.Table:
    """``schema.table`` (or ``table``) as a table node: each part one identifier, whatever it holds."""
    parts = table.split(".")
    return exp.Table(this=exp.to_identifier(parts[-1], quoted=True),
                     db=exp.to_identifier(parts[-2], quoted=True) if len(parts) > 1 else None)


def check_rules(conn: Any, dialect: str, table: str, table_path: str, rules: list[Rule],
                numeric: list[Rule], extra_columns: dict[str, str] | None = None,
                lookup_sql: Any = None) -> None:
    """Raise SchemaError naming the YAML path of the first rule the database refuses.

    ``extra_columns``: YAML path -> plain column that must exist (a lookup's key); ``lookup_sql`` renders
    lookup() calls (as the snapshot's correlated subqueries)."""
    def none_of(table_alias: str | None, *cols: exp.Expression) -> str:  # SELECT cols FROM table WHERE 1 = 0
        src = table_tree(table).as_(table_alias) if table_alias else table_tree(table)
        tree = exp.select(*cols).from_(src).where(exp.EQ(this=exp.Literal.number(1),
                                                         expression=exp.Literal.number(0)))
        return checked(conn, write(tree, dialect), dialect)

    with conn.cursor() as cur:
        try:
            cur.execute(none_of(None, exp.Literal.number(1)))
        except Exception as e:
            rollback_quietly(conn)
            raise SchemaError(f"{table_path}: table {table} not found or not readable: {_msg(e)}") from None
        cur.execute(none_of(None, exp.Star()))
        columns = [d[0].lower() for d in cur.description or []]
        for path, col in (extra_columns or {}).items():
            if col.lower() not in columns:
                raise SchemaError(f"{path}: column {col!r} not found in {table} "
                                  f"(columns: {', '.join(columns)})")
        for rule in rules:
            missing = [c for c in rule.columns if c.lower() not in columns]
            if missing:
                raise SchemaError(f"{rule.path}: column {missing[0]!r} not found in {table} "
                                  f"(columns: {', '.join(columns)})")
            try:
                sql = none_of("t", rule.sql_tree("t", lookup_sql))
            except (RuleError, UnsafeSQL) as e:
                raise SchemaError(f"{rule.path}: {rule.text!r} cannot be checked on {table}: {e}") from None
            try:
                cur.execute(sql)
            except Exception as e:
                rollback_quietly(conn)
                raise SchemaError(f"{rule.path}: {rule.text!r} does not work on {table}: {_msg(e)}") from None
            if rule in numeric:
                code = cur.description[0][1] if cur.description else None
                ok = PG_NUMERIC if dialect == "postgres" else MYSQL_NUMERIC
                if code is not None and code not in ok:
                    raise SchemaError(f"{rule.path}: {rule.text!r} must give a number on {table}, "
                                      f"but gives a non-numeric type (code {code}); cast it")


def rollback_quietly(conn: Any) -> None:
    """Roll back the failed statement's transaction (PostgreSQL refuses further statements until then);
    a connection that cannot roll back (autocommit, closed) is left as it is."""
    with contextlib.suppress(Exception):
        conn.rollback()


def _msg(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
