"""The shared parts of every sink (sinks/base.py): the push template, settle (retry / refusal / bisect),
the snapshot retry loop; and that making a sink never imports an emulator."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from typing import Any

import pytest

import sinks.base
from cdc.facts import Fact, price_fact, stock_fact
from sinks.base import Outcome, Permanent, PushResult, Results, RetryLater, Sink, SinkError, singles
from sinks.config import WebhookSinkConfig


class Fake(Sink):
    """Refuses (per item) any request holding a fact whose SKU starts with BAD; records the requests."""

    platform = "Fake"
    unknown_sku = "no fake product"

    def __init__(self, *, split: Any = None, error: Exception | None = None) -> None:
        cfg = WebhookSinkConfig(name="fake", url="http://unused", price_lists={"RETAIL": "regular"})
        super().__init__(cfg)
        self.requests: list[list[str]] = []
        self.ids = {"A": 1, "B": 2, "C": 3, "D": 4, "BAD": 5}
        self.split, self.error = split, error

    def known(self, sku: str) -> bool:
        return sku in self.ids

    def write(self, group: Any, facts: list[Fact], results: Results, started: float) -> None:
        self.requests.append([f.sku for f in facts])
        try:
            if self.error is not None:
                raise self.error
            if any(f.sku.startswith("BAD") for f in facts):
                raise Permanent("BAD refused")
        except (RetryLater, Permanent) as e:
            kw = {"split": self.split} if self.split else {}
            resend = lambda part: self.write(group, part, results, started)  # noqa: E731
            self.settle(e, facts, results, resend=resend, **kw)
            return
        for f in facts:
            results[f.key] = PushResult(f.key, Outcome.OK)


def facts(*skus: str) -> list[Fact]:
    return [stock_fact(s, "madrid", 1, version=1) for s in skus]


def test_template_screens_resolves_and_keeps_order() -> None:
    sink = Fake()
    batch = [
        *facts("A", "NOPE"),
        stock_fact("A", "madrid", 2, version=2),  # newer value of the same key wins
        price_fact("B", "UNMAPPED", Decimal(1), "EUR"),
    ]
    res = sink.push(batch)
    assert [r.key for r in res] == [f.key for f in batch]
    assert [r.outcome for r in res] == [Outcome.OK, Outcome.PERMANENT, Outcome.OK, Outcome.PERMANENT]
    assert res[1].message == "unknown SKU 'NOPE': no fake product"
    assert "price list 'UNMAPPED' is not mapped" in res[3].message
    assert sink.requests == [["A"]]  # one fact per key, only what check let through
    assert sink.push([]) == [] and sink.requests == [["A"]]


def test_a_refusal_is_bisected_down_to_the_culprit() -> None:
    sink = Fake()
    res = sink.push(facts("A", "B", "BAD", "C"))
    assert [r.outcome for r in res] == [Outcome.OK, Outcome.OK, Outcome.PERMANENT, Outcome.OK]
    assert res[2].message == "BAD refused"
    assert sink.requests == [["A", "B", "BAD", "C"], ["A", "B"], ["BAD", "C"], ["BAD"], ["C"]]


def test_a_refusal_split_fact_by_fact() -> None:
    sink = Fake(split=singles)
    res = sink.push(facts("A", "BAD", "C"))
    assert [r.outcome for r in res] == [Outcome.OK, Outcome.PERMANENT, Outcome.OK]
    assert sink.requests == [["A", "BAD", "C"], ["A"], ["BAD"], ["C"]]


@pytest.mark.parametrize("error, outcome", [
    (Permanent("refused as a whole", per_item=False), Outcome.PERMANENT),
    (RetryLater("HTTP 429", retry_after=7, throttled=True), Outcome.RETRY),
])
def test_other_failures_are_not_bisected(error: Exception, outcome: Outcome) -> None:
    sink = Fake(error=error)
    res = sink.push(facts("A", "B"))
    assert sink.requests == [["A", "B"]]
    assert [(r.outcome, r.message) for r in res] == [(outcome, str(error))] * 2
    if outcome is Outcome.RETRY:
        assert (res[0].retry_after, res[0].throttled) == (7, True)


@pytest.mark.parametrize("error, outcome", [
    (RetryLater("HTTP 503", retry_after=3), Outcome.RETRY),
    (Permanent("HTTP 400: bad filter"), Outcome.PERMANENT),
])
def test_a_failed_lookup_fails_the_push(error: Exception, outcome: Outcome) -> None:
    sink = Fake()
    sink.ids.clear()

    def resolve(skus: list[str]) -> None:
        raise error

    sink.resolve = resolve  # type: ignore[method-assign]
    res = sink.push(facts("A", "B"))
    assert [(r.outcome, r.message) for r in res] == [(outcome, f"SKU lookup failed: {error}")] * 2
    assert sink.requests == []


def test_an_id_forgotten_by_an_earlier_group_is_retried() -> None:
    sink = Fake()
    sink.groups = lambda fs: [(n, [f]) for n, f in enumerate(fs)]  # type: ignore[method-assign]
    write = sink.write

    def forgetting(group: Any, part: list[Fact], results: Results, started: float) -> None:
        write(group, part, results, started)
        sink.ids.pop(part[0].sku)  # as a stale id found in the shop's answer is

    sink.write = forgetting  # type: ignore[method-assign]
    res = sink.push([stock_fact("A", "madrid", 1), price_fact("A", "RETAIL", Decimal(1), "EUR")])
    assert [r.outcome for r in res] == [Outcome.OK, Outcome.RETRY]
    assert "stale id cache for 'A'" in res[1].message and res[1].retry_after == 0.0


def answering(*answers: Any) -> Any:
    """A listing call giving these answers in turn (exceptions are raised)."""
    todo = list(answers)

    def call() -> Any:
        a = todo.pop(0) if len(todo) > 1 else todo[0]
        if isinstance(a, Exception):
            raise a
        return a

    return call


def test_listing_retries_what_time_fixes(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(sinks.base, "sleep", slept.append)
    page = Fake().listing(answering(RetryLater("HTTP 503", retry_after=2.0), RetryLater("timeout"), "page"))
    assert page == "page"
    assert slept == [2.0, 1.0]  # the shop's Retry-After, else 0.5 s × attempt
    with pytest.raises(SinkError, match="Fake kept failing: HTTP 429"):
        Fake().listing(answering(RetryLater("HTTP 429", 60.0)), attempts=3)
    assert slept[2:] == [10.0, 10.0]  # capped at 10 s, no sleep after the last attempt
    with pytest.raises(SinkError, match="refused"):
        Fake().listing(answering(Permanent("refused"), "never read"))
    assert len(slept) == 4  # a refusal is not retried


def test_making_a_sink_imports_no_emulator() -> None:
    code = (
        "import sys\n"
        "from sinks.registry import KINDS, sink_class\n"
        "for kind in KINDS:\n"
        "    sink_class(kind)\n"
        "bad = sorted(m for m in sys.modules if m.startswith('sinks.emulators'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
