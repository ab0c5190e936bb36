"""What the stock and price strategies share: a mapped table's changes applied to its rows' state.

Each change takes back what the row contributed before (``uncount``) and adds what it contributes now
(``count``); a row whose key changed is moved; an unchanged TOASTed value is taken from the stored row.
The subclasses say what a row contributes (``value_of``), how it counts, and which facts result.
"""

from __future__ import annotations

import json
from typing import Any, Generic

from cdc.changes import UNCHANGED_TOAST, RowChange
from cdc.facts import Fact
from cdc.mapping.compiled import RuleBlock
from cdc.normalize.state import Dep, Group, RowState, RowTable, StateStore, V, lookup_key

Touched = dict[Group, None]  # the groups (stock sums / price groups) a chunk changed, in order


def is_true(v: Any) -> bool:
    """A rule's condition holds (NULL and an unchanged TOAST value do not)."""
    return v is not None and v is not UNCHANGED_TOAST and bool(v)


class RowStrategy(Generic[V]):
    """One ``stock:`` / ``prices:`` block over its RowTable; ``kind`` is the fact kind it gives."""

    row_table: type[RowTable[Any]] = RowTable
    clamped = 0  # how many times a negative sum was clamped to 0 (a metric; stock only)

    def __init__(self, block: RuleBlock, store: StateStore) -> None:
        self.block, self.store = block, store
        self.rows = store.add(
            self.row_table(store.conn, store.deps, block.kind, self.deps_of, block.uses_lookups)
        )
        self.kind, self.table = block.kind, block.table
        self.rules, self.columns = block.rules, block.columns
        self.resolve = store.lookups.resolve  # ``lookup(name, key)`` for the rules

    # what a strategy defines -----------------------------------------------------------------------
    def value_of(self, rowkey: str, cols: dict[str, Any]) -> V:
        """What a row with these input columns contributes."""
        raise NotImplementedError

    def count(self, rowkey: str, row: RowState[V], touched: Touched) -> None:
        """Add the row's contribution (the row was just set)."""
        raise NotImplementedError

    def uncount(self, row: RowState[V], touched: Touched) -> None:
        """Take the row's contribution back."""
        raise NotImplementedError

    def truncate(self, touched: Touched) -> None:
        """Every row of the table is gone."""
        raise NotImplementedError

    def facts(self, touched: Touched, position: str, commit_ts: float) -> list[Fact]:
        raise NotImplementedError

    def next_timer(self) -> float | None:
        return None

    def due_timers(self, now: float) -> list[Fact]:
        return []

    # shared ------------------------------------------------------------------------------------------
    def deps_of(self, cols: dict[str, Any]) -> tuple[Dep, ...]:
        """The lookup keys the block's rules read on a row with these columns."""
        if not self.block.uses_lookups:
            return ()
        return tuple(
            sorted({(src, lookup_key(k)) for src, key in self.block.dep_keys if (k := key(cols)) is not None})
        )

    def evaluate(self, rowkey: str, cols: dict[str, Any]) -> RowState[V]:
        return RowState(cols, self.value_of(rowkey, cols), self.deps_of(cols))

    def rowkey(self, change: RowChange, row: dict[str, Any]) -> str:
        cols = self.block.key or list(change.key)
        if not cols:  # no key: the whole mapped row identifies it (only safe for insert-only tables)
            cols = self.columns
        if len(cols) == 1:
            v = row.get(cols[0])
            if type(v) is int:  # the common integer primary key; same text as the JSON form below
                return f"[{v}]"
        return json.dumps([_plain(row.get(c)) for c in cols], separators=(",", ":"))

    def preload_lookups(self, rows: list[dict[str, Any]]) -> None:
        """Load, in batches, the lookup keys the block's rules read on these rows."""
        if not self.block.uses_lookups:
            return
        want: dict[str, set[str]] = {name: set() for name in self.block.lookup_names}
        for key, names in self.block.preload_keys:
            keys = set()
            for row in rows:
                try:
                    k = key(row)
                except (ValueError, TypeError, ArithmeticError):
                    continue
                if k is not None:
                    keys.add(lookup_key(k))
            for name in names:
                want[name] |= keys
        for name, lkeys in want.items():
            self.store.lookups.load(name, lkeys)

    def apply_run(self, run: list[RowChange], touched: dict[str, Touched]) -> None:
        """A run of changes of the block's table, in stream order."""
        mine = touched[self.kind]
        keyed: list[tuple[RowChange, str | None, str | None]] = []
        needed: list[str] = []
        for c in run:
            if c.op == "t":
                keyed.append((c, None, None))
                continue
            old_key = self.rowkey(c, c.before) if c.before is not None else None
            new_key = self.rowkey(c, c.after) if c.after is not None else None
            if old_key is None:
                old_key = new_key  # an insert replayed after a crash finds its own earlier contribution
            keyed.append((c, old_key, new_key))
            needed.extend(k for k in (old_key, new_key) if k is not None)
        self.rows.load(dict.fromkeys(needed))  # runs of one table keep the state loads batched
        self.preload_lookups([c.after for c in run if c.after is not None])
        for c, old_key, new_key in keyed:
            if c.op == "t":
                self.truncate(mine)
            else:
                self._apply(c, old_key, new_key, mine)

    def _apply(self, c: RowChange, old_key: str | None, new_key: str | None, touched: Touched) -> None:
        prev = self.rows.get(old_key) if old_key else None
        after = c.after
        if after is not None and not all(k in after for k in self.columns):
            self._columns_missing(after, new_key)
            return
        if prev is not None:
            self.uncount(prev, touched)
        if c.op == "d":
            if old_key:
                self.rows.put(old_key, None)
            return
        assert after is not None and new_key is not None
        cols = {k: after.get(k) for k in self.columns}
        if any(v is UNCHANGED_TOAST for v in cols.values()):
            # pgoutput did not repeat an unchanged TOASTed value: take it from the stored row
            known = prev.cols if prev else {}
            cols = {k: (known.get(k) if v is UNCHANGED_TOAST else v) for k, v in cols.items()}
        if old_key is not None and old_key != new_key:  # the row's key changed: it moves
            self.rows.put(old_key, None)
            self.rows.load([new_key])
            other = self.rows.get(new_key)
            if other is not None:
                self.uncount(other, touched)
        self._set(new_key, self.evaluate(new_key, cols), touched)

    def _columns_missing(self, after: dict[str, Any], rowkey: str | None) -> None:
        # A mapped column is gone from the row (dropped or renamed in the ERP): the rules would read NULL
        # and push a made-up value. Name it and keep the row's last good contribution.
        gone = [k for k in self.columns if k not in after]
        paths = [r.path for r in self.rules.values() if set(r.columns) & set(gone)]
        self.store.errors.record(
            self.table,
            str(rowkey),
            f"{', '.join(paths)}: column(s) {', '.join(gone)} missing from {self.table} "
            "(dropped or renamed?); the shop keeps the last value",
        )

    def _set(self, rowkey: str, row: RowState[V], touched: Touched) -> None:
        self.rows.put(rowkey, row)
        self.count(rowkey, row, touched)

    def reevaluate(self, rowkeys: set[str], touched: Touched) -> None:
        """A lookup value these rows read changed (SKU rename, item deactivated…): evaluate them again."""
        self.rows.load(rowkeys)
        cur = [(rk, row) for rk in rowkeys if (row := self.rows.get(rk)) is not None]
        self.preload_lookups([row.cols for _, row in cur])
        for rk, row in cur:
            self.uncount(row, touched)
            self._set(rk, self.evaluate(rk, row.cols), touched)


def _plain(v: Any) -> Any:
    """JSON-safe form of a column value for row keys (Decimal keeps its digits)."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return repr(v)
    return str(v)
