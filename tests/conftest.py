"""Shared fixtures: real throwaway database servers (no database mocks)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from erpsync.throwaway.postgres import ThrowawayPostgres

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
