"""Writing generated SQL and running it safely on the ERP: a tree is written for its dialect with every
identifier quoted and every value a literal the dialect's generator escapes (``write``); a text about to
run on the ERP must be exactly one SELECT that writes nothing (``one_select``) on a session reading
literals the way they were written (``checked``)."""

from __future__ import annotations

from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError

from cdc.mapping.rules import RuleError


class UnsafeSQL(ValueError):
    """A text about to run on the ERP that is not exactly one SELECT."""


def write(tree: exp.Expression, dialect: str) -> str:
    """``tree`` as SQL for ``dialect`` (identifiers quoted); a construct the dialect lacks is a RuleError."""
    try:
        return tree.sql(dialect=dialect, identify=True, unsupported_level=ErrorLevel.RAISE)
    except SqlglotError as e:
        raise RuleError(f"generated SQL cannot be written for {dialect}: {e}") from None


def one_select(sql: str, dialect: str) -> str:
    """``sql`` itself when it parses (in ``dialect``) as exactly one SELECT that writes nothing; else
    UnsafeSQL. Run on every generated text just before the ERP executes it."""
    try:
        trees = [t for t in sqlglot.parse(sql, read=dialect) if t is not None]
    except (SqlglotError, RecursionError) as e:
        raise UnsafeSQL(f"refusing to run SQL that does not parse as one SELECT: {str(e)[:200]}") from None
    if len(trees) != 1 or not isinstance(trees[0], exp.Query):
        kinds = ", ".join(type(t).__name__ for t in trees) or "nothing"
        raise UnsafeSQL(f"refusing to run SQL that is not exactly one SELECT (got {kinds})")
    for node in trees[0].walk():
        if isinstance(node, (exp.DML, exp.DDL, exp.Command, exp.Into, exp.Set, exp.Transaction)):
            raise UnsafeSQL(f"refusing to run a SELECT containing {type(node).__name__}")
    return sql


# pymysql: the server's status bit "backslashes are not escapes" and the client flag allowing several
# statements in one query (MySQL protocol constants)
_MYSQL_NO_BACKSLASH_ESCAPES = 512
_MYSQL_MULTI_STATEMENTS = 1 << 16


def checked(conn: Any, sql: str, dialect: str) -> str:
    """``sql`` (generated) ready to run on the ERP connection ``conn``: exactly one SELECT (one_select),
    and the session reading string literals the way the text was written for — PostgreSQL with
    standard_conforming_strings on, MySQL with backslash escapes — so a quote or backslash in a config
    or data value cannot end a literal early. A MySQL connection allowing several statements per query is
    refused (UnsafeSQL)."""
    one_select(sql, dialect)
    if dialect == "postgres":
        status = getattr(conn, "get_parameter_status", None)
        if status is not None and status("standard_conforming_strings") != "on":
            with conn.cursor() as cur:
                cur.execute("SET standard_conforming_strings = on")
    elif dialect == "mysql":
        if getattr(conn, "client_flag", 0) & _MYSQL_MULTI_STATEMENTS:
            raise UnsafeSQL("the MySQL connection allows several statements per query (MULTI_STATEMENTS); "
                            "erpsync runs its SELECTs only on connections that do not")
        if getattr(conn, "server_status", 0) & _MYSQL_NO_BACKSLASH_ESCAPES:
            with conn.cursor() as cur:
                cur.execute("SET SESSION sql_mode = REPLACE(@@SESSION.sql_mode, 'NO_BACKSLASH_ESCAPES', '')")
    return sql
