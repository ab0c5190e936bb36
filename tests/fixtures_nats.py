"""A real throwaway nats-server (JetStream on, temp store) per test: streams and consumers start empty."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from erpsync.testing.nats import ThrowawayNats


@pytest.fixture
def nats_server() -> Iterator[ThrowawayNats]:
    with ThrowawayNats() as n:
        yield n
