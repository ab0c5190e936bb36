"""Hostile shop answers: every one ends as RETRY (kept in the outbox) or a per-fact PERMANENT (dead letter)
with a message saying what the shop did, never as a silent OK and never as an exception."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from cdc.facts import price_fact, stock_fact
from sinks.base import Outcome
from sinks.config import WebhookSinkConfig
from sinks.emulators.base import Request, Response
from sinks.emulators.webhook import WebhookEmulator
from sinks.webhook import WebhookSink

FACTS = [stock_fact("SKU-1", "madrid", 3, version=1), stock_fact("SKU-2", "madrid", 4, version=1)]


class Canned(WebhookEmulator):
    """Answers every push with one canned response."""

    def __init__(self, response: Response) -> None:
        super().__init__()
        self.response = response

    def handle(self, req: Request) -> Response:
        return self.response


def push(url: str, facts=FACTS) -> list:  # type: ignore[no-untyped-def]
    sink = WebhookSink(WebhookSinkConfig(name="shop", url=url, timeout_seconds=2))
    try:
        return sink.push(list(facts))
    finally:
        sink.close()


@pytest.mark.parametrize("response, outcome, needle", [
    (Response(502, "<html><body><h1>502 Bad Gateway</h1></body></html>", {}, "text/html"), Outcome.RETRY,
     "HTML error page"),
    (Response(200, "<html><body>Maintenance</body></html>", {}, "text/html"), Outcome.OK, ""),
    (Response(200, b'{"results": [{"status": "ok"}, {"sta', {}, "application/json"), Outcome.RETRY,
     "truncated JSON body"),
    (Response(200, {"errors": [{"message": "Throttled"}]}), Outcome.RETRY,
     "with errors: [{'message': 'Throttled'"),
    (Response(200, {"results": [{"status": "error", "message": "SKU-1 is archived"},
                                {"status": "error", "message": "SKU-2 is archived"}]}), Outcome.PERMANENT,
     "archived"),
    (Response(429, {"errors": "slow down"}, {"Retry-After": "7"}), Outcome.RETRY, "HTTP 429"),
    (Response(503, "", {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}), Outcome.RETRY, "HTTP 503"),
    (Response(401, {"error": "bad signature"}), Outcome.PERMANENT, "HTTP 401"),
], ids=["html-502", "html-200-plain-accept", "truncated-json", "200-with-errors", "200-per-item-errors",
        "429-retry-after", "503-http-date", "401-refused"])
def test_hostile_answers(response: Response, outcome: Outcome, needle: str) -> None:
    shop = Canned(response)
    shop.start()
    try:
        results = push(shop.endpoint)
    finally:
        shop.stop()
    assert [r.outcome for r in results] == [outcome] * len(FACTS)
    assert all(needle in r.message for r in results), [r.message for r in results]
    if response.status == 429:
        assert results[0].retry_after == 7 and results[0].throttled


def test_mixed_per_item_results_keep_good_facts() -> None:
    shop = Canned(Response(200, {"results": [{"status": "ok"}, {"status": "retry", "message": "locked"}]}))
    shop.start()
    try:
        r1, r2 = push(shop.endpoint)
    finally:
        shop.stop()
    assert (r1.outcome, r2.outcome) == (Outcome.OK, Outcome.RETRY) and r2.message == "locked"


def test_one_invalid_fact_does_not_sink_the_batch() -> None:
    """A negative price makes the receiver refuse the batch (422): retried fact by fact, only it is dead."""
    shop = WebhookEmulator()
    shop.start()
    try:
        from decimal import Decimal

        facts = [*FACTS, price_fact("SKU-3", "RETAIL", Decimal("-1.00"), "EUR", version=1)]
        results = push(shop.endpoint, facts)
    finally:
        shop.stop()
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK, Outcome.PERMANENT]
    assert "amount: must not be negative" in results[2].message


@pytest.fixture
def raw_server() -> Iterator[tuple[str, list[bytes]]]:
    """A TCP server answering each connection with the next canned raw HTTP bytes, then closing."""
    answers: list[bytes] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                if answers:
                    conn.sendall(answers.pop(0))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/hook", answers
    stop.set()
    srv.close()


@pytest.mark.parametrize("raw, needle", [
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"results\": [",
     "connection"),
    (b"", "connection"),
    (b"garbage that is not HTTP\r\n\r\n", "connection"),
], ids=["body-cut-mid-transfer", "closed-without-answer", "not-http"])
def test_broken_transport_is_retried(raw_server: tuple[str, list[bytes]], raw: bytes, needle: str) -> None:
    url, answers = raw_server
    answers.append(raw)
    results = push(url)
    assert [r.outcome for r in results] == [Outcome.RETRY] * len(FACTS)
    assert needle in results[0].message, results[0].message


def test_listing_a_large_receiver_is_not_cut_by_the_push_timeout() -> None:
    """list_url answers the whole catalogue at once (seconds for 1M SKUs): its own timeout, not the
    pushes' short one (the chaos run's reconcile failed on a 2 s push timeout)."""
    import time

    import httpx

    class SlowList(WebhookEmulator):
        def state(self):  # type: ignore[no-untyped-def]
            time.sleep(1.0)
            return super().state()

    shop = SlowList()
    shop.start()
    try:
        cfg = {"name": "shop", "url": shop.endpoint, "timeout_seconds": 0.3,
               "list_url": f"{shop.url}/_emulator/state"}
        sink = WebhookSink(WebhookSinkConfig(**cfg))
        assert list(sink.snapshot()) == []  # empty receiver, listed despite the 0.3 s push timeout
        sink.close()
        sink = WebhookSink(WebhookSinkConfig(**cfg, list_timeout_seconds=0.3))
        with pytest.raises(httpx.ReadTimeout):
            list(sink.snapshot())
        sink.close()
    finally:
        shop.stop()
