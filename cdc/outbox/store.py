"""The outbox: an embedded SQLite file (WAL mode) between the ERP side and the shop side.

The ERP thread writes facts *and* the source position in one transaction, and only then confirms that
position to the ERP; sink threads read what each sink still lacks. Newest value per key wins (a fact row
is updated in place, with a new version), so a shop that was down sees only the latest value per key.
Memory stays flat however long a shop is down: the backlog lives on disk.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cdc.facts import Fact, FactKey, decode_value, encode_value
from cdc.private_files import create_private, make_private

SCHEMA = """
CREATE TABLE IF NOT EXISTS facts (
    kind TEXT NOT NULL, sku TEXT NOT NULL, scope TEXT NOT NULL,
    value TEXT NOT NULL, version INTEGER NOT NULL,
    position TEXT, commit_ts REAL, written_at REAL,
    PRIMARY KEY (kind, sku, scope)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS facts_version ON facts(version);
CREATE TABLE IF NOT EXISTS sinks (name TEXT PRIMARY KEY, kinds TEXT NOT NULL, added_at REAL);
-- per sink and key: the version it must reach (want) and the one it acknowledged (done)
CREATE TABLE IF NOT EXISTS deliveries (
    sink TEXT NOT NULL, kind TEXT NOT NULL, sku TEXT NOT NULL, scope TEXT NOT NULL,
    want INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL DEFAULT 0, last_error TEXT,
    PRIMARY KEY (sink, kind, sku, scope)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(sink, next_at) WHERE want > done;
CREATE TABLE IF NOT EXISTS dead_letters (
    sink TEXT NOT NULL, kind TEXT NOT NULL, sku TEXT NOT NULL, scope TEXT NOT NULL,
    version INTEGER NOT NULL, value TEXT NOT NULL, error TEXT NOT NULL,
    attempts INTEGER NOT NULL, failed_at REAL NOT NULL,
    PRIMARY KEY (sink, kind, sku, scope)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS positions (
    source TEXT PRIMARY KEY, position TEXT NOT NULL, snapshot_done INTEGER NOT NULL DEFAULT 0,
    commit_ts REAL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sink_status (
    sink TEXT PRIMARY KEY, last_ok_at REAL, last_error TEXT, last_error_at REAL
);
"""


_IN_BATCH = 500  # SKUs per IN (...) look-up (well under SQLite's host-parameter limit)


def connect(path: str | Path, *, durable: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN ourselves), WAL, with a generous busy timeout. A
    new file is created 0600 (its -wal and -shm take its mode); an older one readable by others is made
    private, with its -wal and -shm."""
    if str(path) != ":memory:":
        create_private(path)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):  # not ours (another user reading): leave it
                make_private(f"{path}{suffix}")
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed outbox transaction survives power loss, because the ERP forgets it right after.
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def open_reader(path: str | Path) -> sqlite3.Connection:
    """A non-durable connection to an existing outbox, its tables created if missing (another process
    reading beside the service: the reconciler, a delivery thread)."""
    conn = connect(path, durable=False)
    conn.executescript(SCHEMA)
    return conn


class Outbox:
    """The ERP-side writer. One instance, used from the ERP thread only."""

    def __init__(self, path: str | Path, sinks: dict[str, list[str]] | None = None, *,
                 durable: bool = True) -> None:
        self.path = Path(path)
        self.conn = connect(self.path, durable=durable)
        self.conn.executescript(SCHEMA)
        self._in_tx = False
        row = self.conn.execute("SELECT max(version) FROM facts").fetchone()
        self._version = int(row[0] or 0)
        self.sink_kinds: dict[str, list[str]] = {}
        self._changed: Counter[str] = Counter()  # values changed per fact kind in the open transaction
        if sinks is not None:
            self.register_sinks(sinks)

    # transactions ---------------------------------------------------------------------------------
    def begin(self) -> None:
        if not self._in_tx:
            self.conn.execute("BEGIN IMMEDIATE")
            self._in_tx = True

    def commit(self) -> dict[str, int]:
        """Commit; returns how many fact values changed per kind in the committed transaction."""
        changed = dict(self._changed)
        if self._in_tx:
            self.conn.execute("COMMIT")
            self._in_tx = False
        self._changed.clear()
        return changed

    def rollback(self) -> None:
        self._changed.clear()
        if self._in_tx:
            self._in_tx = False
            if self.conn.in_transaction:  # SQLite may have ended it already (a failed COMMIT)
                self.conn.execute("ROLLBACK")

    # sinks ----------------------------------------------------------------------------------------
    def register_sinks(self, sinks: dict[str, list[str]]) -> None:
        """Make every configured sink known; a sink added later gets every current fact queued."""
        self.sink_kinds = {k: list(v) for k, v in sinks.items()}
        known = {r[0] for r in self.conn.execute("SELECT name FROM sinks")}
        self.begin()
        for name, kinds in sinks.items():
            if name in known:
                self.conn.execute("UPDATE sinks SET kinds=? WHERE name=?", (",".join(kinds), name))
                continue
            self.conn.execute("INSERT INTO sinks VALUES (?,?,?)", (name, ",".join(kinds), time.time()))
            marks = ",".join("?" * len(kinds))
            self.conn.execute(
                f"INSERT OR IGNORE INTO deliveries (sink, kind, sku, scope, want) "
                f"SELECT ?, kind, sku, scope, version FROM facts WHERE kind IN ({marks})", (name, *kinds))
        self.commit()

    # facts ----------------------------------------------------------------------------------------
    def current(self, key: FactKey) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT value FROM facts WHERE kind=? AND sku=? AND scope=?",
                                (key.kind, key.sku, key.scope)).fetchone()
        return decode_value(key.kind, row[0]) if row else None

    def version_floor(self, floor: int) -> None:
        """Let the next versions start above ``floor`` (NATS bus: time-based, so a replay after a crash
        never reuses a version it published before with another value)."""
        self._version = max(self._version, floor)

    def write_facts(self, facts: Iterable[Fact], changed_out: list[Fact] | None = None) -> int:
        """Upsert facts inside the open transaction. Unchanged values are skipped (no new version, nothing
        to push); changed ones get the next version and are queued for every sink that takes their kind.
        Returns how many changed; ``changed_out`` receives them with their versions (for a NATS bus)."""
        self.begin()
        cur = self.conn.cursor()
        # Another process may have written facts since we started (the reconciler's heal): continue above
        # its versions, or a later value of the same key could get a version its delivery already reached.
        top = cur.execute("SELECT max(version) FROM facts").fetchone()[0]
        self._version = max(self._version, int(top or 0))
        batch = facts if isinstance(facts, list) else list(facts)
        if not batch:
            return 0
        # The stored values of the whole batch in a few IN (...) look-ups, not one SELECT per fact.
        stored = self._stored_values(cur, batch)
        changed = 0
        now = time.time()
        fact_rows = []
        deliveries = []
        targets = {kind: [s for s, kinds in self.sink_kinds.items() if kind in kinds]
                   for kind in {f.key.kind for f in batch}}
        version = self._version
        for f in batch:
            k = f.key
            value = f.value
            avail = value.get("available") if len(value) == 1 else None
            # stock fast path: byte-identical to encode_value()'s json.dumps for {"available": <int>}
            encoded = (f'{{"available":{avail}}}' if type(avail) is int else encode_value(value))
            if stored.get((k.kind, k.sku, k.scope)) == encoded:
                continue
            version += 1
            changed += 1
            fact_rows.append((k.kind, k.sku, k.scope, encoded, version, f.position, f.commit_ts, now))
            if changed_out is not None:
                changed_out.append(Fact(k, value, version, f.position, f.commit_ts, f.extra))
            for sink in targets[k.kind]:
                deliveries.append((sink, k.kind, k.sku, k.scope, version))
        self._version = version
        if fact_rows:
            self._changed.update(r[0] for r in fact_rows)
            cur.executemany(
                "INSERT INTO facts VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(kind, sku, scope) DO UPDATE SET "
                "value=excluded.value, version=excluded.version, position=excluded.position, "
                "commit_ts=excluded.commit_ts, written_at=excluded.written_at", fact_rows)
        if deliveries:
            cur.executemany(
                "INSERT INTO deliveries (sink, kind, sku, scope, want) VALUES (?,?,?,?,?) "
                "ON CONFLICT(sink, kind, sku, scope) DO UPDATE SET want=excluded.want, attempts=0, "
                "next_at=0", deliveries)
        return changed

    @staticmethod
    def _stored_values(cur: sqlite3.Cursor, batch: list[Fact]) -> dict[tuple[str, str, str], str]:
        """{(kind, sku, scope): stored value} for the batch's keys (a key prefix look-up per SKU: a SKU has
        few scopes, so the extra rows are cheap, and the primary key serves the IN directly)."""
        skus: dict[str, dict[str, None]] = {}
        for f in batch:
            k = f.key
            per_kind = skus.get(k.kind)
            if per_kind is None:
                per_kind = skus[k.kind] = {}
            per_kind[k.sku] = None
        out: dict[tuple[str, str, str], str] = {}
        for kind, names in skus.items():
            todo = list(names)
            for i in range(0, len(todo), _IN_BATCH):
                part = todo[i:i + _IN_BATCH]
                q = ("SELECT sku, scope, value FROM facts WHERE kind=? AND sku IN "
                     f"({','.join('?' * len(part))})")
                for sku, scope, value in cur.execute(q, (kind, *part)):
                    out[(kind, sku, scope)] = value
        return out

    def max_version(self) -> int:
        return int(self.conn.execute("SELECT coalesce(max(version), 0) FROM facts").fetchone()[0])

    def facts_since(self, version: int, chunk: int = 20_000) -> Iterator[list[Fact]]:
        """The facts written above ``version``, in version order, ``chunk`` at a time (read inside the open
        transaction, so it sees them before they commit: the snapshot's facts for a NATS bus)."""
        while True:
            rows = self.conn.execute(
                "SELECT kind, sku, scope, value, version, position, commit_ts FROM facts WHERE version > ? "
                "ORDER BY version LIMIT ?", (version, chunk)).fetchall()
            if not rows:
                return
            yield [Fact(FactKey(r[0], r[1], r[2]), decode_value(r[0], r[3]), r[4], r[5] or "", r[6] or 0.0)
                   for r in rows]
            version = rows[-1][4]

    def redeliver(self, sink: str, keys: Iterable[FactKey]) -> None:
        """Queue the current fact of each key for ``sink`` again, even where it acknowledged that version
        (the reconciler found the shop showing something else). Inside the open transaction."""
        self.begin()
        self.conn.executemany(
            "INSERT INTO deliveries (sink, kind, sku, scope, want) "
            "SELECT ?, kind, sku, scope, version FROM facts WHERE kind=? AND sku=? AND scope=? "
            "ON CONFLICT(sink, kind, sku, scope) DO UPDATE SET want=excluded.want, done=0, attempts=0, "
            "next_at=0", [(sink, k.kind, k.sku, k.scope) for k in keys])

    def facts(self, kind: str | None = None) -> Iterator[Fact]:
        q = "SELECT kind, sku, scope, value, version, position, commit_ts FROM facts"
        args: tuple[Any, ...] = ()
        if kind:
            q += " WHERE kind=?"
            args = (kind,)
        for r in self.conn.execute(q + " ORDER BY kind, sku, scope", args):
            yield Fact(FactKey(r[0], r[1], r[2]), decode_value(r[0], r[3]), r[4], r[5] or "", r[6] or 0.0)

    # positions ------------------------------------------------------------------------------------
    def set_position(self, source: str, position: str, *, commit_ts: float | None = None,
                     snapshot_done: bool = True) -> None:
        self.begin()
        self.conn.execute(
            "INSERT INTO positions VALUES (?,?,?,?,?) ON CONFLICT(source) DO UPDATE SET "
            "position=excluded.position, snapshot_done=excluded.snapshot_done, "
            "commit_ts=coalesce(excluded.commit_ts, positions.commit_ts), updated_at=excluded.updated_at",
            (source, position, int(snapshot_done), commit_ts, time.time()))

    def position(self, source: str) -> str | None:
        """The stored resume position, or None if there is none or the snapshot never completed."""
        row = self.conn.execute("SELECT position, snapshot_done FROM positions WHERE source=?",
                                (source,)).fetchone()
        return row[0] if row and row[1] else None

    def position_commit_ts(self, source: str) -> float:
        """ERP commit time of the transaction the stored position ends (0 if unknown)."""
        row = self.conn.execute("SELECT commit_ts FROM positions WHERE source=?", (source,)).fetchone()
        return float(row[0]) if row and row[0] else 0.0

    def reset(self) -> None:
        """Forget positions and derived state (for a re-snapshot). Facts stay: the snapshot rewrites them
        and unchanged values are not pushed again."""
        self.begin()
        self.conn.execute("DELETE FROM positions")
        for (name,) in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'state_%'").fetchall():
            self.conn.execute(f'DELETE FROM "{name}"')
        self.commit()

    def close(self) -> None:
        self.rollback()
        self.conn.close()


class Transaction:
    """``with Transaction(conn):`` BEGIN IMMEDIATE … COMMIT (ROLLBACK on error, keeping its error)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, et: object, *_: object) -> None:
        if et is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # a failed COMMIT (disk full) already ended it: keep its error
            self.conn.execute("ROLLBACK")


