"""The restart policy of ``erpsync run``: what is waited out and what stops the service, decided by the
exception's type — never by its message.

- ``SourceUnavailable`` (refused, lost, starting up, shutting down: time fixes it) and a built-in
  ``ConnectionError`` / ``TimeoutError`` are waited out with backoff — once this run has streamed, or when
  the outbox already exists (it has worked here before, so a reboot may just have started erpsync before
  the ERP). Before that, a reachable-never ERP is a configuration problem and stops the service.
- ``SourceMisconfigured`` (credentials, grants, server settings, a missing table: a person must act),
  ``SchemaError`` (the mapping does not fit the ERP) and a taken ops port stop it, saying what to fix.
- ``sqlite3.OperationalError`` from the outbox (disk full, read-only) is waited out once the outbox has
  worked, and stops a first run.
Nothing is confirmed to the ERP beyond what the outbox holds, so a restart can only re-read, never skip.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from cdc.changes import SourceMisconfigured, SourceUnavailable
from cdc.mapping.schema_check import SchemaError
from cdc.sources.registry import plugin_for
from erpsync.config import Config
from erpsync.erpdb import check_mapping
from erpsync.ops_server import OpsListenError
from erpsync.pipeline import Pipeline, RunStats

log = logging.getLogger("erpsync")

# Errors after which `run` reconnects: the way to the ERP failed, not its configuration.
UNAVAILABLE: tuple[type[BaseException], ...] = (SourceUnavailable, ConnectionError, TimeoutError)
MAX_DELAY = 30.0


class Stop(Exception):
    """The service must stop: ``message`` says what to fix; ``code`` 2 for configuration, 1 otherwise."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def outbox_exists(path: str | Path) -> bool:
    # Not opened: on a full disk even a read-only open fails (SQLite needs its -shm file).
    try:
        return Path(path).stat().st_size > 0
    except OSError:
        return False


def short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def backoff(attempt: int) -> float:
    return min(MAX_DELAY, 0.5 * 2 ** (attempt - 1))


class Supervisor:
    """``wait_until_mapping_fits(stop)`` (waiting for the ERP), then ``run_pipeline(stop)``, restarting it
    after faults time fixes. Both raise Stop for what a person must fix."""

    def __init__(self, cfg: Config, *, drain_seconds: float = 5.0, wait_for_erp: float = 300.0) -> None:
        self.cfg = cfg
        self.drain_seconds = drain_seconds
        self.wait_for_erp = wait_for_erp
        # An outbox that already exists has worked here before: an ERP that is restarting (or not up yet
        # after a reboot) and a full or read-only outbox disk are faults to wait out.
        self.outbox_worked = outbox_exists(cfg.outbox_path())
        self.streamed = False
        self.restarts = 0

    def wait_until_mapping_fits(self, stop: threading.Event) -> bool:
        """The mapping checked against the live ERP schema; False when stopped while waiting."""
        if not plugin_for(self.cfg.source.kind).has_sql:  # e.g. a Debezium bridge: nothing to check against
            return True
        origin = self.cfg.origin
        give_up = time.monotonic() + self.wait_for_erp
        attempt = 0
        while True:
            try:
                check_mapping(self.cfg)
                return True
            except SchemaError as e:
                raise Stop(f"{origin}: {e}", 2) from None
            except SourceMisconfigured as e:
                raise Stop(f"{origin}: {e}") from None
            except UNAVAILABLE as e:
                left = give_up - time.monotonic()
                if not (self.outbox_worked and left > 0):
                    raise Stop(f"{origin}: {e}") from None
                attempt += 1
                delay = min(backoff(attempt), left)
                log.warning("%s; retrying in %.1fs (up to --wait-for-erp)", str(e).strip().splitlines()[0],
                            delay)
                if stop.wait(delay):
                    return False

    def run_pipeline(self, stop: threading.Event) -> RunStats | None:
        attempt = 0
        while True:
            pipeline: Pipeline | None = None
            try:
                pipeline = Pipeline(self.cfg, drain_seconds=self.drain_seconds, serve_ops=True)
                return pipeline.run(stop)
            except OpsListenError as e:
                raise Stop(f"{self.cfg.origin}: {e} (set ops.listen to a free host:port)") from None
            except SourceMisconfigured as e:
                raise Stop(str(e)) from None
            except UNAVAILABLE as e:
                if not (self.streamed or progressed(pipeline) or self.outbox_worked):
                    raise Stop(str(e)) from None
                reason: BaseException = e
                what = "source connection lost"
            except sqlite3.OperationalError as e:  # outbox disk full / read-only
                if not (self.streamed or self.outbox_worked or progressed(pipeline)):
                    raise Stop(f"{self.cfg.origin}: outbox.path: {e}") from None
                reason, what = e, f"outbox {self.cfg.outbox_path()} not writable"
            moved = progressed(pipeline)
            self.streamed = self.streamed or moved
            if stop.is_set():
                return None
            attempt = 1 if moved else attempt + 1
            self.restarts += 1
            delay = backoff(attempt)
            log.warning("%s (%s); reconnecting in %.1fs", what, short(reason), delay)
            stop.wait(delay)


def progressed(pipeline: Pipeline | None) -> bool:
    """This attempt got as far as a position (snapshot done or a commit streamed)."""
    return pipeline is not None and pipeline.stats.position is not None
