"""Throwaway MariaDB fixtures: one server per session (log-bin, ROW, FULL row image), a fresh database
per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from erpsync.testing.mariadb import ThrowawayMariaDB

_counter = itertools.count(1)


# The source user's password. Not "erpsync": a loaded config registers its secrets for redaction for the
# whole process, and a password equal to the product's name would mask "erpsync.yaml" in later tests' output.
USER_PASSWORD = "fixture-pw-3c9e"


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[ThrowawayMariaDB]:
    """One throwaway MariaDB per test session, with an ``erpsync`` user (password USER_PASSWORD) holding
    what the source needs (REPLICATION SLAVE, REPLICATION CLIENT, SELECT)."""
    with ThrowawayMariaDB() as db:
        conn = db.connect()
        with conn.cursor() as cur:
            cur.execute(f"CREATE USER 'erpsync'@'%' IDENTIFIED BY '{USER_PASSWORD}'")
            cur.execute("GRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.* TO 'erpsync'@'%'")
        conn.close()
        yield db


@pytest.fixture
def mariadb_db(mariadb_server: ThrowawayMariaDB) -> str:
    """Name of a fresh utf8mb4 database in the session's server."""
    return mariadb_server.create_database(f"erp{next(_counter)}")
