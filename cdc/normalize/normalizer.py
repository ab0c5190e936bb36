"""The normalizing layer: ERP row changes → facts (values to set), with the per-row state it needs.

One ``Normalizer`` handles a whole compiled mapping by delegating each table's changes to its strategies:
``lookups`` (key → value tables such as item id → SKU), ``stock`` and ``prices`` (see their modules), all
over one ``StateStore`` (state.py) beside the outbox. Changes are applied in stream order, so a lookup
change and a stock change in one ERP transaction see each other.

apply() works on the store's in-memory overlay, bounded by the commit window; flush() writes it inside the
caller's outbox transaction, so the SQLite write lock is held only for that short commit.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from cdc.changes import RowChange
from cdc.facts import Fact
from cdc.mapping.compiled import CompiledMapping
from cdc.mapping.model import MappingSpec
from cdc.normalize.lookups import LookupStrategy
from cdc.normalize.prices import PriceStrategy
from cdc.normalize.rows import RowStrategy, Touched
from cdc.normalize.state import StateStore
from cdc.normalize.stock import StockStrategy

__all__ = ["Normalizer", "normalizer_for"]


class Strategy(Protocol):
    table: str

    def apply_run(self, run: list[RowChange], touched: dict[str, Touched]) -> None: ...


class Normalizer:
    """stock + prices + lookups; ``apply(changes) → facts``, ``flush()``, ``discard()``, ``tables``."""

    def __init__(
        self, mapping: CompiledMapping, conn: sqlite3.Connection, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.mapping, self.conn, self.clock = mapping, conn, clock
        self.store = StateStore(conn)
        self.rows: list[RowStrategy[Any]] = []  # in fact order: stock, then prices
        if mapping.stock is not None:
            self.rows.append(StockStrategy(mapping.stock, self.store))
        if mapping.prices is not None:
            self.rows.append(PriceStrategy(mapping.prices, self.store, clock))
        lookups = [LookupStrategy(lk, self.store, self.rows) for lk in mapping.lookups.values()]
        # a lookup table's changes first: a stock row of the same table then sees the new values
        self._by_table: dict[str, list[Strategy]] = {}
        for s in [*lookups, *self.rows]:
            self._by_table.setdefault(s.table, []).append(s)
        self.discard()

    @property
    def tables(self) -> list[str]:
        """Every table the source must publish/stream, lookup tables first (CompiledMapping.tables)."""
        return self.mapping.tables

    @property
    def clamped(self) -> int:
        """How many times a negative stock sum was clamped to 0 (a metric)."""
        return sum(s.clamped for s in self.rows)

    @property
    def data_errors(self) -> int:
        """How many rows were refused by their rules (a metric; the rows are in ``data_errors``)."""
        return self.store.errors.count

    def apply(self, changes: list[RowChange], position: str = "", commit_ts: float = 0.0) -> list[Fact]:
        """Apply one chunk of changes to the in-memory overlay; return the facts it changes.

        Nothing is written until flush(), which the caller runs inside the outbox transaction that also
        stores the facts and the position."""
        touched: dict[str, Touched] = {s.kind: {} for s in self.rows}
        for table, run in _runs(changes):
            for s in self._by_table.get(table, ()):
                s.apply_run(run, touched)
        return [f for s in self.rows for f in s.facts(touched[s.kind], position, commit_ts)]

    def next_timer(self) -> float | None:
        """When the next validity window opens or closes (epoch seconds), or None."""
        return min((t for s in self.rows if (t := s.next_timer()) is not None), default=None)

    def due_timers(self, now: float | None = None) -> list[Fact]:
        """Facts of the price groups whose validity window opened or closed by ``now``."""
        now = self.clock() if now is None else now
        return [f for s in self.rows for f in s.due_timers(now)]

    def flush(self) -> None:
        """Write the overlay (inside the caller's open outbox transaction) and forget it."""
        self.store.flush()

    def discard(self) -> None:
        """Forget everything not yet committed (and the caches, which may have seen it)."""
        self.store.discard()


def normalizer_for(
    mapping: MappingSpec | CompiledMapping, conn: sqlite3.Connection, clock: Callable[[], float] = time.time
) -> Normalizer:
    """The normalizer of a mapping (a loaded Config, a MappingSpec, or one compiled already) on ``conn``."""
    return Normalizer(CompiledMapping.of(mapping), conn, clock=clock)


def _runs(changes: list[RowChange]) -> Iterator[tuple[str, list[RowChange]]]:
    """Consecutive changes of one table together (runs keep the state loads batched)."""
    i = 0
    while i < len(changes):
        table = changes[i].table
        j = i + 1
        while j < len(changes) and changes[j].table == table:
            j += 1
        yield table, changes[i:j]
        i = j
