"""Lookups: ``lookups.<name>`` keeps key → value current from its table's changes (item id → SKU…). A
value that changes (SKU rename, item deactivated, deleted) re-evaluates the stock and price rows that read
that key, found through the reverse index (DepIndex), so a renamed SKU's stock moves to the new SKU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdc.changes import UNCHANGED_TOAST, RowChange
from cdc.mapping.compiled import CompiledLookup
from cdc.normalize.rows import RowStrategy, Touched, is_true
from cdc.normalize.state import LookupEntry, StateStore, lookup_key


class LookupStrategy:
    """One lookup over the store's LookupState; ``dependents``: the row strategies that may read it."""

    def __init__(
        self, lookup: CompiledLookup, store: StateStore, dependents: Sequence[RowStrategy[Any]]
    ) -> None:
        self.lk, self.store, self.dependents = lookup, store, dependents
        self.table = lookup.table
        self.state = store.lookups

    def apply_run(self, run: list[RowChange], touched: dict[str, Touched]) -> None:
        """A run of changes of the lookup's table, in stream order."""
        lk = self.lk
        keys: list[str] = []
        for c in run:
            for img in (c.before, c.after):
                if img is not None and img.get(lk.key) is not None and img.get(lk.key) is not UNCHANGED_TOAST:
                    keys.append(lookup_key(img[lk.key]))
        self.state.load(lk.name, dict.fromkeys(keys))
        changed: set[str] = set()
        for c in run:
            if c.op == "t":
                changed.update(self.state.truncate(lk.name))
                continue
            old = c.before.get(lk.key) if c.before is not None else None
            old_k = lookup_key(old) if old is not None else None
            if c.op == "d":
                self._delete(c, old_k, changed)
            else:
                self._upsert(c, old_k, changed)
        if changed:
            self._recompute({(lk.src, k) for k in changed}, touched)

    def _delete(self, c: RowChange, old_k: str | None, changed: set[str]) -> None:
        lk = self.lk
        if old_k is None:
            self.store.errors.record(
                lk.table,
                str(c.before),
                f"lookups.{lk.name}: delete without {lk.key!r} in the before-image "
                "(set REPLICA IDENTITY FULL or key on the PK)",
            )
            return
        self._drop(old_k, changed)

    def _drop(self, lkey: str, changed: set[str]) -> None:
        if self.state.get(self.lk.name, lkey) is not None:
            changed.add(lkey)
        self.state.set(self.lk.name, lkey, None)

    def _upsert(self, c: RowChange, old_k: str | None, changed: set[str]) -> None:
        lk = self.lk
        assert c.after is not None
        new = c.after.get(lk.key)
        if new is None:
            return
        new_k = lookup_key(new)
        prev = self.state.get(lk.name, new_k)
        cols = {k: c.after.get(k) for k in lk.columns}
        if any(v is UNCHANGED_TOAST for v in cols.values()):
            known = prev.cols if prev else {}
            cols = {k: (known.get(k) if v is UNCHANGED_TOAST else v) for k, v in cols.items()}
        try:
            ok = lk.filter is None or is_true(lk.filter(cols))
            value = lk.value(cols) if ok else None
        except (ValueError, TypeError, ArithmeticError) as e:
            self.store.errors.record(lk.table, new_k, f"lookups.{lk.name}: {e}")
            value = None
        if old_k is not None and old_k != new_k:  # the key itself changed: the old key has no row now
            self._drop(old_k, changed)
        if prev is None or prev.value != value:
            changed.add(new_k)
        self.state.set(lk.name, new_k, LookupEntry(cols, value))

    def _recompute(self, deps: set[tuple[str, str]], touched: dict[str, Touched]) -> None:
        """Re-evaluate the rows that read these lookup keys."""
        found = self.store.deps.dependents(deps)
        for s in self.dependents:
            rowkeys = found.get(s.kind)
            if rowkeys:
                s.reevaluate(rowkeys, touched[s.kind])
