"""NATS client plumbing shared by the Debezium bridge (reads) and the facts bus (publishes, workers).

nats-py is asyncio; the blocking, threaded ERP side drives it on a dedicated event-loop thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats

T = TypeVar("T")


async def connect(url: str, name: str) -> Any:
    """A client that reconnects forever: a NATS restart pauses us, it does not kill us."""
    return await nats.connect(servers=[u.strip() for u in url.split(",")], name=name,
                              max_reconnect_attempts=-1, reconnect_time_wait=0.25, connect_timeout=5)


class LoopThread:
    """An asyncio event loop on a daemon thread; ``run(coro)`` blocks the caller until it completes."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
