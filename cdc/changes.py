"""Row changes as the sources emit them (a Debezium-compatible envelope) and the chunks that carry them.

Dataclasses, not pydantic: this is the hot path (hundreds of thousands of rows a second).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Op = Literal["c", "u", "d", "r", "t"]  # insert, update, delete, snapshot read, truncate


class _Unchanged:
    """PostgreSQL's unchanged-TOAST marker: the column kept its old value, which the log did not repeat.

    Never write it anywhere: merge it with known state (see the normalizer)."""

    _inst: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._inst is None:
            cls._inst = super().__new__(cls)
        return cls._inst

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __bool__(self) -> bool:
        return False


UNCHANGED_TOAST: Any = _Unchanged()


@dataclass(slots=True)
class SourceInfo:
    connector: str  # postgresql | mysql
    db: str
    schema: str
    table: str
    position: str = ""  # commit position of the transaction (a string to all but its source)
    txid: int | str | None = None
    ts_ms: int = 0  # ERP commit time, ms since epoch

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table


@dataclass(slots=True)
class RowChange:
    """One row change. ``before`` holds at least the key columns for ``u``/``d`` (all columns with
    REPLICA IDENTITY FULL / binlog_row_image=FULL); ``after`` holds the new row for ``c``/``u``/``r``.
    Values: int, Decimal (never float for numeric), str, bool, date, tz-aware datetime, UUID, parsed JSON,
    None, or UNCHANGED_TOAST. ``key`` names the table's key columns (primary key / replica identity)."""

    op: Op
    source: SourceInfo
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    key: tuple[str, ...] = ()

    @property
    def table(self) -> str:
        return self.source.qualified


@dataclass(slots=True)
class Commit:
    """End of one ERP transaction: its position (confirmable once the outbox holds it) and commit time."""

    position: str
    ts: float  # epoch seconds
    txid: int | str | None = None


@dataclass(slots=True)
class Chunk:
    """A slice of the change stream. A large ERP transaction arrives as several chunks so memory stays
    bounded; only the last carries ``commit``. A chunk with no changes and a ``commit`` is a bare position
    advance (heartbeat, filtered transaction, keepalive) that is safe to store and confirm."""

    changes: list[RowChange] = field(default_factory=list)
    commit: Commit | None = None
    snapshot: bool = False  # rows of the initial snapshot (op "r")


class Source(Protocol):
    """One reader per slot / binlog. All calls happen on one thread (the ERP-side thread)."""

    name: str
    # Commit time of the newest ERP transaction read (0: none yet). The caller seeds it from the outbox on
    # resume, so a reader that restarts behind reports its true lag before the first commit arrives.
    last_commit_ts: float

    def prepare(self) -> None:
        """Check prerequisites and create the slot/publication (or equivalent). Raises SourceError."""

    def needs_snapshot(self, stored_position: str | None) -> bool:
        """True when no usable resume position exists (first run, or the slot/binlog was lost)."""

    def snapshot(self, tables: list[str]) -> Iterator[Chunk]:
        """Consistent snapshot of the tables (op "r" chunks), ending with a chunk whose ``commit`` is the
        position to stream from. Nothing committed after that position is in the snapshot; nothing
        committed before it is streamed again."""

    def stream(self, from_position: str) -> Iterator[Chunk]:
        """Changes committed after ``from_position``, forever (until close()). Yields an empty chunk now and
        then while idle so the caller can check for shutdown and confirm positions."""

    def ack(self, position: str) -> None:
        """The outbox durably holds everything up to ``position``: the ERP may release it."""

    def lag(self) -> dict[str, float]:
        """{"bytes": ..., "seconds": ...} behind the ERP."""

    def compare(self, a: str, b: str) -> int:
        """-1, 0, 1 like cmp() for two positions of this source."""

    def close(self) -> None: ...


class SourceError(RuntimeError):
    """A source problem; the message says what and, where a person must act, how. Raise one of the two
    subclasses: the supervisor decides restart-or-stop by the type, never by the message text."""


class SourceMisconfigured(SourceError):
    """A person must act (credentials, grants, server settings, a missing table): stop and say the fix."""


class SourceUnavailable(SourceError):
    """Time fixes it (connection refused or lost, server starting up or shutting down): reconnect."""
