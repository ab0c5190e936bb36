"""Run the reconcile on the cron schedule of ``reconcile.schedule`` (croniter), in ``erpsync run`` or
standalone with ``erpsync reconcile --schedule``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from croniter import croniter

log = logging.getLogger("erpsync.reconcile")


def next_fire(cron: str, after: datetime) -> datetime:
    return croniter(cron, after).get_next(datetime)


def run_on_schedule(cron: str, job: Callable[[], object], stop: threading.Event,
                    now: Callable[[], datetime] = lambda: datetime.now().astimezone()) -> None:
    """Call ``job`` at every fire time of ``cron`` (local time) until ``stop`` is set. A failing run is
    logged and the schedule goes on; a run longer than the interval skips the fire times it overlapped."""
    while not stop.is_set():
        due = next_fire(cron, now())
        log.info("next reconcile at %s", due.isoformat())
        while not stop.is_set():
            wait = (due - now()).total_seconds()
            if wait <= 0:
                break
            stop.wait(min(wait, 30.0))  # re-check the clock: sleeps drift and clocks jump
        if stop.is_set():
            return
        try:
            job()
        except Exception:
            log.exception("scheduled reconcile failed")


def start_thread(cron: str, job: Callable[[], object], stop: threading.Event) -> threading.Thread:
    t = threading.Thread(target=run_on_schedule, args=(cron, job, stop), name="reconcile-schedule",
                         daemon=True)
    t.start()
    return t
