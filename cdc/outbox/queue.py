"""What one sink still has to deliver: the delivery side's reads and acknowledgements."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cdc.facts import Fact, FactKey, decode_value, encode_value
from cdc.outbox.store import Transaction, open_reader
from cdc.redact import redact


@dataclass(slots=True)
class Pending:
    fact: Fact
    attempts: int



class SinkQueue:
    """What one sink still has to deliver. Each delivery thread owns one (own SQLite connection)."""

    def __init__(self, path: str | Path, sink: str) -> None:
        self.sink = sink
        self.conn = open_reader(path)  # not durable: loss of an ack only means a harmless re-push

    def next_batch(self, limit: int, now: float | None = None) -> list[Pending]:
        """Up to ``limit`` facts this sink lacks and may try now, oldest-due first, newest value each."""
        now = time.time() if now is None else now
        rows = self.conn.execute(
            "SELECT f.kind, f.sku, f.scope, f.value, f.version, f.position, f.commit_ts, d.attempts "
            "FROM deliveries d JOIN facts f ON f.kind=d.kind AND f.sku=d.sku AND f.scope=d.scope "
            "WHERE d.sink=? AND d.want > d.done AND d.next_at <= ? ORDER BY d.next_at LIMIT ?",
            (self.sink, now, limit)).fetchall()
        return [Pending(Fact(FactKey(r[0], r[1], r[2]), decode_value(r[0], r[3]), r[4], r[5] or "",
                             r[6] or 0.0), r[7]) for r in rows]

    def next_due(self) -> float | None:
        row = self.conn.execute(
            "SELECT min(next_at) FROM deliveries WHERE sink=? AND want > done", (self.sink,)).fetchone()
        return row[0]

    def mark_ok(self, facts: list[Fact]) -> None:
        if not facts:
            return
        now = time.time()
        with Transaction(self.conn):
            self.conn.executemany(
                "UPDATE deliveries SET done=max(done, ?), attempts=0, next_at=0, last_error=NULL "
                "WHERE sink=? AND kind=? AND sku=? AND scope=?",
                [(f.version, self.sink, f.kind, f.sku, f.key.scope) for f in facts])
            # a newer value got through: the older failure is history, not a problem to act on
            self.conn.executemany(
                "DELETE FROM dead_letters WHERE sink=? AND kind=? AND sku=? AND scope=? AND version < ?",
                [(self.sink, f.kind, f.sku, f.key.scope, f.version) for f in facts])
            self.conn.execute(
                "INSERT INTO sink_status (sink, last_ok_at) VALUES (?, ?) ON CONFLICT(sink) DO UPDATE "
                "SET last_ok_at=excluded.last_ok_at", (self.sink, now))

    def mark_retry(self, items: list[tuple[Fact, int, float, str]]) -> None:
        """(fact, attempts so far + 1, delay seconds, error) for each fact to try again later."""
        if not items:
            return
        now = time.time()
        items = [(f, a, d, redact(err)) for f, a, d, err in items]  # a shop may echo our credentials
        with Transaction(self.conn):
            self.conn.executemany(
                "UPDATE deliveries SET attempts=?, next_at=?, last_error=? "
                "WHERE sink=? AND kind=? AND sku=? AND scope=? AND want=?",
                [(a, now + d, err, self.sink, f.kind, f.sku, f.key.scope, f.version)
                 for f, a, d, err in items])
            self._status_error(items[-1][3], now)

    def mark_dead(self, items: list[tuple[Fact, int, str]]) -> None:
        """(fact, attempts, error): the shop refused it; park it in the dead-letter table."""
        if not items:
            return
        now = time.time()
        items = [(f, a, redact(err)) for f, a, err in items]  # a shop may echo our credentials
        with Transaction(self.conn):
            self.conn.executemany(
                "INSERT INTO dead_letters VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(sink, kind, sku, scope) "
                "DO UPDATE SET version=excluded.version, value=excluded.value, error=excluded.error, "
                "attempts=excluded.attempts, failed_at=excluded.failed_at",
                [(self.sink, f.kind, f.sku, f.key.scope, f.version, encode_value(f.value), err, a, now)
                 for f, a, err in items])
            self.conn.executemany(
                "UPDATE deliveries SET done=max(done, ?), attempts=0, next_at=0, last_error=? "
                "WHERE sink=? AND kind=? AND sku=? AND scope=?",
                [(f.version, err, self.sink, f.kind, f.sku, f.key.scope) for f, _a, err in items])
            self._status_error(items[-1][2], now)

    def _status_error(self, error: str, now: float) -> None:
        self.conn.execute(
            "INSERT INTO sink_status (sink, last_error, last_error_at) VALUES (?,?,?) ON CONFLICT(sink) "
            "DO UPDATE SET last_error=excluded.last_error, last_error_at=excluded.last_error_at",
            (self.sink, redact(error)[:500], now))

    def close(self) -> None:
        self.conn.close()
