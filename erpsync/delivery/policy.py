"""One delivery policy for both hand-offs (the SQLite outbox threads and the NATS workers): what becomes of
each fact of a pushed batch — acknowledged, tried again later (and when), or dead-lettered.

The rule both paths keep: when every fact of a batch failed transiently the shop (or the way to it) is
down, not these facts. An outage of any length must not dead-letter good facts, so they wait with a capped
backoff and their tries are not spent; ``max_attempts`` only limits retries of facts the shop keeps
failing while it serves others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from cdc.facts import Fact
from erpsync import metrics
from sinks.base import Outcome, PushResult, Sink, backoff_seconds

log = logging.getLogger("erpsync.delivery")

OUTAGE_ATTEMPTS = 8  # during an outage the backoff stops growing here (≈ 60 s cap); the count is not spent
# While every fact of every batch fails transiently the shop is down: the deliverer pauses between batches
# (doubling up to this cap, or the shop's Retry-After) instead of cycling through the backlog — a
# down shop must not cost the ERP side CPU or the outbox's write lock.
DOWN_PAUSE_FIRST, DOWN_PAUSE_MAX = 0.05, 5.0


class Action(StrEnum):
    OK = "ok"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(slots=True, frozen=True)
class Verdict:
    action: Action
    attempts: int  # tries counted after this one
    delay: float = 0.0  # RETRY: seconds to wait before the next try
    message: str = ""


@dataclass(slots=True)
class BatchVerdict:
    verdicts: list[Verdict]
    shop_down: bool  # every fact failed transiently
    retry_after: float  # shop_down: the longest wait the shop asked for (0 if it did not say)


def judge(results: list[PushResult], attempts_before: list[int], max_attempts: int) -> BatchVerdict:
    """``results[i]`` is the shop's answer for a fact already tried ``attempts_before[i]`` times."""
    shop_down = bool(results) and all(r.outcome is Outcome.RETRY for r in results)
    verdicts = []
    for r, before in zip(results, attempts_before, strict=True):
        tries = before + 1
        if r.outcome is Outcome.OK:
            verdicts.append(Verdict(Action.OK, tries))
        elif r.outcome is Outcome.RETRY and (shop_down or tries < max_attempts):
            counted = min(tries, OUTAGE_ATTEMPTS) if shop_down else tries
            delay = max(r.retry_after or 0.0, backoff_seconds(counted))
            verdicts.append(Verdict(Action.RETRY, counted, delay, r.message or "retry"))
        else:
            why = r.message if r.outcome is Outcome.PERMANENT else f"gave up after {tries} tries: {r.message}"
            verdicts.append(Verdict(Action.DEAD, tries, 0.0, why))
    retry_after = max((r.retry_after or 0.0 for r in results), default=0.0) if shop_down else 0.0
    return BatchVerdict(verdicts, shop_down, retry_after)


class SinkGuard:
    """Every push of one sink goes through ``push``: whatever the sink raises (a bug, an answer nobody
    foresaw) becomes RETRY for the batch's facts — the sink's problem, never its delivery thread's or the
    other sinks'. Broken answers are counted (``erpsync_sink_bad_answers_total``) and logged once per new
    kind of trouble, not once per batch; a clean push ends the episode."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.logged: str | None = None  # the trouble already logged, until a push without any

    def push(self, facts: list[Fact]) -> list[PushResult]:
        name = self.sink.name
        try:
            results = self.sink.push(facts)
        except Exception as e:
            msg = f"the {self.sink.kind} sink failed ({type(e).__name__}: {str(e)[:300]}); facts kept"
            metrics.sink_bad_answers_total.labels(name, "crash").inc()
            self.note(f"crash:{type(e).__name__}", msg, e)
            return [PushResult(f.key, Outcome.RETRY, msg, problem="crash") for f in facts]
        kinds = {r.problem: r.message for r in results if r.problem}
        for kind in kinds:
            metrics.sink_bad_answers_total.labels(name, kind).inc()
        if kinds:
            kind, msg = sorted(kinds.items())[0]
            self.note(kind, msg)
        elif all(r.outcome is Outcome.OK for r in results):
            self.logged = None
        return results

    def note(self, trouble: str, message: str, exc: BaseException | None = None) -> None:
        if trouble == self.logged:
            log.debug("sink %s: still %s", self.sink.name, message)
            return
        self.logged = trouble
        log.warning("sink %s: %s (facts stay in the outbox; said once until it changes)", self.sink.name,
                    message, exc_info=exc)
