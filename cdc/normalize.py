"""The normalizing layer: ERP row changes → facts (values to set), with the per-row state it needs.

Stock: every ERP row contributes ``quantity`` of ``sku`` to the shop location its warehouse maps to; the
fact is the sum per (sku, location) minus safety stock, clamped at 0. The state (each row's last
contribution and each sum) lives in SQLite tables beside the outbox, written in the same transaction as
the facts, so it survives restarts and a replayed change is harmless: a row's contribution is stored as
an absolute value, never as a delta.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from cdc.changes import UNCHANGED_TOAST, RowChange
from cdc.mapping import StockMapping
from cdc.rules import Rule, _num
from erpsync.facts import Fact, FactKey

log = logging.getLogger("erpsync.normalize")

STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS state_stock_rows (
    rowkey TEXT PRIMARY KEY, cols TEXT NOT NULL, sku TEXT, location TEXT, qty TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_stock_sums (
    sku TEXT NOT NULL, location TEXT NOT NULL, qty TEXT NOT NULL, PRIMARY KEY (sku, location)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS data_errors (
    at REAL NOT NULL, tbl TEXT NOT NULL, rowkey TEXT NOT NULL, problem TEXT NOT NULL,
    PRIMARY KEY (tbl, rowkey)
) WITHOUT ROWID;
"""

_IN_BATCH = 500  # SQLite host parameters per IN (...) lookup


def table_name(name: str, default_schema: str = "public") -> str:
    return name if "." in name else f"{default_schema}.{name}"


@dataclass(slots=True)
class Contribution:
    sku: str | None
    location: str | None
    qty: Decimal

    @property
    def counts(self) -> bool:
        return self.sku is not None and self.location is not None


class StockNormalizer:
    """Turns changes of the mapped stock table into stock facts."""

    def __init__(self, mapping: StockMapping, conn: sqlite3.Connection, *, default_schema: str = "public",
                 path: str = "stock") -> None:
        self.mapping = mapping
        self.conn = conn
        self.table = table_name(mapping.table, default_schema)
        self.sku = Rule(mapping.sku, f"{path}.sku")
        self.warehouse = Rule(mapping.warehouse, f"{path}.warehouse")
        self.quantity = Rule(mapping.quantity, f"{path}.quantity")
        self.columns = list(dict.fromkeys(self.sku.columns + self.warehouse.columns + self.quantity.columns))
        self.key_override = mapping.key
        conn.executescript(STATE_SCHEMA)
        self.clamped = 0  # how many times a negative sum was clamped to 0 (a metric)
        self.data_errors = 0
        # Overlay of row state and sums not yet flushed to the store (bounded by the commit window).
        self._rows: dict[str, tuple[dict[str, Any], Contribution] | None] = {}
        self._sums: dict[tuple[str, str], Decimal] = {}
        self._errors: list[tuple[float, str, str, str]] = []
        self._truncated = False

    @property
    def tables(self) -> list[str]:
        return [self.table]

    # --------------------------------------------------------------------------------------------
    def _rowkey(self, change: RowChange, row: dict[str, Any]) -> str:
        cols = self.key_override or list(change.key)
        if not cols:
            # No key: the whole mapped row identifies it (only safe for insert-only tables).
            cols = self.columns
        return json.dumps([_plain(row.get(c)) for c in cols], separators=(",", ":"))

    def _contribution(self, table: str, rowkey: str, cols: dict[str, Any]) -> Contribution:
        try:
            sku = self.sku(cols)
            location = self.mapping.location_of(self.warehouse(cols))
            qty = self.quantity(cols)
            qty = Decimal(0) if qty is None else Decimal(_num(qty))
            if not qty.is_finite():
                raise ValueError(f"quantity is {qty}")
        except (ValueError, TypeError, ArithmeticError, InvalidOperation) as e:
            self._data_error(table, rowkey, f"{self.quantity.path}: {e}")
            return Contribution(None, None, Decimal(0))
        if sku is None or (isinstance(sku, str) and not sku.strip()):
            return Contribution(None, location, qty)
        return Contribution(str(sku), location, qty)

    def _data_error(self, table: str, rowkey: str, problem: str) -> None:
        self.data_errors += 1
        log.warning("data error in %s row %s: %s (row contributes nothing until fixed)",
                    table, rowkey, problem)
        self._errors.append((time.time(), table, rowkey, problem[:500]))

    def _load(self, rowkeys: list[str]) -> None:
        """Bring the stored state of these rows into the overlay (rows already there stay as they are)."""
        missing = [k for k in rowkeys if k not in self._rows]
        if self._truncated:  # the table was emptied after what the store holds
            self._rows.update(dict.fromkeys(missing))
            return
        for i in range(0, len(missing), _IN_BATCH):
            part = missing[i:i + _IN_BATCH]
            q = ("SELECT rowkey, cols, sku, location, qty FROM state_stock_rows WHERE rowkey IN "
                 f"({','.join('?' * len(part))})")
            found = {rk: (json.loads(cols), Contribution(sku, loc, Decimal(qty)))
                     for rk, cols, sku, loc, qty in self.conn.execute(q, part)}
            for k in part:
                self._rows[k] = found.get(k)

    def _sum(self, key: tuple[str, str]) -> Decimal:
        if key not in self._sums:
            row = None if self._truncated else self.conn.execute(
                "SELECT qty FROM state_stock_sums WHERE sku=? AND location=?", key).fetchone()
            self._sums[key] = Decimal(row[0]) if row else Decimal(0)
        return self._sums[key]

    def apply(self, changes: list[RowChange], position: str = "", commit_ts: float = 0.0) -> list[Fact]:
        """Apply one chunk of changes to the in-memory overlay; return the facts it changes.

        Nothing is written until flush(), which the caller runs inside the outbox transaction that also
        stores the facts and the position — so the SQLite write lock is held only for that short commit."""
        mine = [c for c in changes if c.table == self.table]
        if not mine:
            return []
        keyed: list[tuple[RowChange, str | None, str | None]] = []
        needed: list[str] = []
        for c in mine:
            if c.op == "t":
                keyed.append((c, None, None))
                continue
            old_key = self._rowkey(c, c.before) if c.before is not None else None
            new_key = self._rowkey(c, c.after) if c.after is not None else None
            if old_key is None:
                old_key = new_key  # an insert replayed after a crash finds its own earlier contribution
            keyed.append((c, old_key, new_key))
            needed.extend(k for k in (old_key, new_key) if k is not None)
        self._load(list(dict.fromkeys(needed)))
        touched: dict[tuple[str, str], None] = {}
        rows = self._rows

        def shift(contrib: Contribution, sign: int) -> None:
            if contrib.counts:
                k = (contrib.sku, contrib.location)
                self._sums[k] = self._sum(k) + sign * contrib.qty  # type: ignore[arg-type]
                touched[k] = None  # type: ignore[index]

        for c, old_key, new_key in keyed:
            if c.op == "t":
                self._truncate(touched)
                continue
            prev = rows.get(old_key) if old_key else None
            if prev is not None:
                shift(prev[1], -1)
            if c.op == "d":
                if old_key:
                    rows[old_key] = None
                continue
            assert c.after is not None and new_key is not None
            cols = {k: c.after.get(k) for k in self.columns}
            if any(v is UNCHANGED_TOAST for v in cols.values()):
                # pgoutput did not repeat an unchanged TOASTed value: take it from the stored row
                known = prev[0] if prev else {}
                cols = {k: (known.get(k) if v is UNCHANGED_TOAST else v) for k, v in cols.items()}
            contrib = self._contribution(self.table, new_key, cols)
            shift(contrib, +1)
            if old_key is not None and old_key != new_key:
                rows[old_key] = None
            rows[new_key] = (cols, contrib)
        return self._facts(touched, position, commit_ts)

    @property
    def overlay_size(self) -> int:
        return len(self._rows) + len(self._sums)

    def _truncate(self, touched: dict[tuple[str, str], None]) -> None:
        # Every row of the table is gone: every sum, stored or in the overlay, becomes 0.
        if not self._truncated:
            for sku, loc in self.conn.execute("SELECT sku, location FROM state_stock_sums"):
                self._sums.setdefault((sku, loc), Decimal(0))
        for k in self._sums:
            self._sums[k] = Decimal(0)
            touched[k] = None
        self._rows.clear()
        self._truncated = True

    def flush(self) -> None:
        """Write the overlay (inside the caller's open outbox transaction) and forget it."""
        if self._truncated:
            self.conn.execute("DELETE FROM state_stock_rows")
            self.conn.execute("DELETE FROM state_stock_sums")
        dels = [(k,) for k, v in self._rows.items() if v is None]
        rows = [(k, json.dumps({c: _plain(x) for c, x in v[0].items()}, separators=(",", ":")),
                 v[1].sku, v[1].location, str(v[1].qty)) for k, v in self._rows.items() if v is not None]
        if dels and not self._truncated:
            self.conn.executemany("DELETE FROM state_stock_rows WHERE rowkey=?", dels)
        if rows:
            self.conn.executemany("INSERT OR REPLACE INTO state_stock_rows VALUES (?,?,?,?,?)", rows)
        if self._sums:
            self.conn.executemany("INSERT OR REPLACE INTO state_stock_sums VALUES (?,?,?)",
                                  [(k[0], k[1], str(v)) for k, v in self._sums.items()])
        if self._errors:
            self.conn.executemany("INSERT OR REPLACE INTO data_errors VALUES (?,?,?,?)", self._errors)
        self.discard()

    def discard(self) -> None:
        self._rows = {}
        self._sums = {}
        self._errors = []
        self._truncated = False

    def _facts(self, touched: dict[tuple[str, str], None], position: str, commit_ts: float) -> list[Fact]:
        facts = []
        safety = self.mapping.safety_stock
        for k in touched:
            total = self._sums[k]
            available = int(total.to_integral_value(rounding="ROUND_FLOOR")) - safety
            if available < 0:
                if total < 0:
                    self.clamped += 1
                available = 0
            facts.append(Fact(FactKey("stock", k[0], k[1]), {"available": available}, 0, position, commit_ts))
        return facts


def _plain(v: Any) -> Any:
    """JSON-safe form of a column value for row keys and stored rows (Decimal keeps its digits)."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return repr(v)
    return str(v)
