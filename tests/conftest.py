"""Shared fixtures: real throwaway database servers (no database mocks)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from erpsync.testing.postgres import ThrowawayPostgres
from tests.erp import Erp, MariaErp, PostgresErp
from tests.fixtures_mariadb import mariadb_db, mariadb_server  # noqa: F401

_db_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[ThrowawayPostgres]:
    """One throwaway PostgreSQL (wal_level=logical) per test session."""
    with ThrowawayPostgres() as pg:
        yield pg


@pytest.fixture
def pg_dsn(pg_server: ThrowawayPostgres) -> str:
    """A fresh database in the session's cluster (slots and publications are per test)."""
    return pg_server.create_database(f"t{next(_db_counter)}")


@pytest.fixture(params=["postgres", "mysql"])
def erp(request: pytest.FixtureRequest) -> Iterator[Erp]:
    """The end-to-end ERP (a stock table) on each source database: the same tests run on both."""
    e: Erp
    if request.param == "postgres":
        e = PostgresErp(request.getfixturevalue("pg_dsn"))
    else:
        server = request.getfixturevalue("mariadb_server")
        e = MariaErp(server, server.create_database(f"e{next(_db_counter)}"))
    e.create_stock_table()
    yield e
    e.close()  # type: ignore[attr-defined]
