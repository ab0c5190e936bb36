"""Shared fixtures: real throwaway database servers (no database mocks)."""

from __future__ import annotations

import itertools
import time
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
def pg_dsn(pg_server: ThrowawayPostgres) -> Iterator[str]:
    """A fresh database in the session's cluster. Slot names are cluster-wide, and erpsync rightly refuses to
    drop a same-named slot of another database: the slots a test left in its database go with it."""
    name = f"t{next(_db_counter)}"
    yield pg_server.create_database(name)
    drop_slots_of(pg_server, name)


def drop_slots_of(pg_server: ThrowawayPostgres, database: str) -> None:
    import psycopg2

    conn = psycopg2.connect(pg_server.dsn())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for _ in range(50):
                cur.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                            "WHERE database = %s AND active_pid IS NOT NULL", (database,))
                try:
                    cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                "WHERE database = %s", (database,))
                    return
                except psycopg2.Error:  # still active for a moment after its walsender was told to stop
                    time.sleep(0.1)
    finally:
        conn.close()


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
