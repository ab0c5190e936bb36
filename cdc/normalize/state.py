"""The normalizer's state store: SQLite tables beside the outbox holding what each ERP row contributes.

- ``state_stock_rows`` / ``state_price_rows``: each mapped row's input columns (typed JSON) and what it
  contributes (a ``Contribution`` / a ``PriceLine``), by row key;
- ``state_stock_sums``: per (sku, location), the sum of the contributions and the per-SKU safety values;
- ``state_lookups``: each lookup key's input columns and value;
- ``state_deps``: the reverse index lookup key → rows that read it (bounded re-keying on a SKU rename);
- ``state_price_timers``: future validity boundaries of price groups;
- ``data_errors``: rows that contribute nothing until fixed, and why.

Each part keeps an in-memory overlay bounded by the commit window: ``StateStore.flush()`` writes it inside
the caller's outbox transaction, ``discard()`` forgets it. What was committed stays warm in bounded caches.
Rows are stored absolutely, never as deltas, so replaying a change after a crash is harmless.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

log = logging.getLogger("erpsync.normalize")

STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS state_stock_rows (
    rowkey TEXT PRIMARY KEY, cols TEXT NOT NULL, sku TEXT, location TEXT, qty TEXT, safety TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_stock_sums (
    sku TEXT NOT NULL, location TEXT NOT NULL, qty TEXT NOT NULL, safeties TEXT,
    PRIMARY KEY (sku, location)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_lookups (
    name TEXT NOT NULL, lkey TEXT NOT NULL, cols TEXT NOT NULL, value TEXT, PRIMARY KEY (name, lkey)
) WITHOUT ROWID;
-- reverse index: which stock/price rows read which lookup key (bounded re-keying on a SKU rename)
CREATE TABLE IF NOT EXISTS state_deps (
    kind TEXT NOT NULL, rowkey TEXT NOT NULL, src TEXT NOT NULL, lkey TEXT NOT NULL,
    PRIMARY KEY (kind, rowkey, src, lkey)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS state_deps_by_key ON state_deps(src, lkey);
CREATE TABLE IF NOT EXISTS state_price_rows (
    rowkey TEXT PRIMARY KEY, cols TEXT NOT NULL, sku TEXT, plist TEXT, amount TEXT, currency TEXT,
    compare_at TEXT, vfrom REAL, vto REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS state_price_rows_group ON state_price_rows(sku, plist);
CREATE TABLE IF NOT EXISTS state_price_timers (
    at REAL NOT NULL, sku TEXT NOT NULL, plist TEXT NOT NULL, PRIMARY KEY (at, sku, plist)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS data_errors (
    at REAL NOT NULL, tbl TEXT NOT NULL, rowkey TEXT NOT NULL, problem TEXT NOT NULL,
    PRIMARY KEY (tbl, rowkey)
) WITHOUT ROWID;
"""

IN_BATCH = 500  # SQLite host parameters per IN (...) lookup
CACHE_ENTRIES = 20_000  # per cache generation: hot rows and sums stay in memory, the store holds them all

Dep = tuple[str, str]  # (lookup src "table:key", canonical lookup key)
Group = tuple[str, str]  # (sku, shop location) of a stock sum / (sku, shop price list) of a price group
V = TypeVar("V")
_MISSING: Any = object()


# records ----------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Contribution:
    """What one stock row adds to its (sku, location) sum; it counts only with both known."""

    sku: str | None
    location: str | None
    qty: Decimal
    safety: Decimal = Decimal(0)

    @property
    def counts(self) -> bool:
        return self.sku is not None and self.location is not None


@dataclass(slots=True)
class PriceLine:
    """One price row's line of its (sku, price list) group, valid from ``vfrom`` to ``vto`` (epoch s)."""

    sku: str | None
    plist: str | None
    amount: Decimal | None = None
    currency: str | None = None
    compare_at: Decimal | None = None
    vfrom: float | None = None
    vto: float | None = None

    @property
    def group(self) -> Group | None:
        if self.sku is None or self.plist is None or self.amount is None:
            return None
        return (self.sku, self.plist)

    def valid(self, now: float) -> bool:
        return (self.vfrom is None or self.vfrom <= now) and (self.vto is None or now < self.vto)

    def rank(self) -> tuple[Any, ...]:
        # latest valid_from first (none: last), then lowest amount, then currency: as in snapshot_sql
        return (self.vfrom is None, -(self.vfrom or 0.0), self.amount, self.currency or "")


class RowState(NamedTuple, Generic[V]):
    """A mapped row's state: its input columns, what it contributes, the lookup keys its rules read."""

    cols: dict[str, Any]
    value: V
    deps: tuple[Dep, ...]


class LookupEntry:
    """A lookup key's row: its input columns and the value. Columns read back from the store are decoded
    on first use (only an unchanged TOAST value needs them; resolving needs the value alone)."""

    __slots__ = ("_cols", "_stored", "value")

    def __init__(self, cols: dict[str, Any] | None, value: Any, stored: str | None = None) -> None:
        self._cols, self._stored, self.value = cols, stored, value

    @property
    def cols(self) -> dict[str, Any]:
        if self._cols is None:
            self._cols = _dec(self._stored)
        return self._cols


@dataclass(slots=True)
class StockSum:
    """A (sku, location)'s sum of contributions and how many of its rows have each per-SKU safety."""

    qty: Decimal
    safeties: dict[str, int]


def lookup_key(v: Any) -> str:
    """Canonical text of a lookup key, equal for equal values of different types (5, Decimal('5'))."""
    t = type(v)
    if t is str:
        return v  # type: ignore[no-any-return]
    if t is int:
        return str(v)
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, Decimal) and v == v.to_integral_value():
        return str(int(v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


class Cache:
    """Committed state kept in memory across commits, bounded: two generations of at most ``size``
    entries; when the young one fills, the old one is dropped (cheaper than an exact LRU, same bound)."""

    __slots__ = ("old", "size", "young")

    def __init__(self, size: int = CACHE_ENTRIES) -> None:
        self.size = size
        self.young: dict[Any, Any] = {}
        self.old: dict[Any, Any] = {}

    def get(self, key: Any, default: Any = _MISSING) -> Any:
        if key in self.young:
            return self.young[key]
        if key in self.old:
            value = self.old[key]
            self.put(key, value)
            return value
        return default

    def put(self, key: Any, value: Any) -> None:
        self.young[key] = value
        if len(self.young) >= self.size:
            self.old, self.young = self.young, {}

    def clear(self) -> None:
        self.young, self.old = {}, {}


class StatePart(Protocol):
    def flush(self) -> None:
        """Write the overlay (inside the caller's open transaction), keep it warm, forget it."""

    def discard(self) -> None:
        """Forget the overlay and the caches (which may have seen it)."""


P = TypeVar("P", bound=StatePart)


# the store --------------------------------------------------------------------------------------------
class StateStore:
    """All state tables on one connection (the outbox's). Strategies register the parts they use."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        conn.executescript(STATE_SCHEMA)
        self.conn = conn
        self.deps = DepIndex(conn)
        self.lookups = LookupState(conn)
        self.errors = DataErrors(conn)
        self._parts: list[StatePart] = []

    def add(self, part: P) -> P:
        """Register a strategy's part (its row table, sums, timers) to be flushed and discarded."""
        self._parts.append(part)
        return part

    def flush(self) -> None:
        """Write every overlay inside the caller's open outbox transaction, and forget it."""
        for p in (*self._parts, self.lookups, self.errors, self.deps):
            p.flush()

    def discard(self) -> None:
        """Forget everything not yet committed (and the caches, which may have seen it)."""
        for p in (*self._parts, self.lookups, self.errors, self.deps):
            p.discard()


class DepIndex:
    """Which rows read which lookup key: stored rows in ``state_deps`` (written by each RowTable), rows
    set since the last commit in memory."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._reset()

    def _reset(self) -> None:
        self._overlay: dict[Dep, set[tuple[str, str]]] = {}
        self._stale: set[str] = set()  # kinds whose stored rows are all gone (truncated)

    def note(self, kind: str, rowkey: str, deps: Iterable[Dep]) -> None:
        for d in deps:
            self._overlay.setdefault(d, set()).add((kind, rowkey))

    def forget_stored(self, kind: str) -> None:
        self._stale.add(kind)

    def dependents(self, deps: Iterable[Dep]) -> dict[str, set[str]]:
        """kind -> row keys of the rows that read any of ``deps``."""
        out: dict[str, set[str]] = {}
        for d in deps:
            for kind, rk in self._overlay.get(d, ()):
                out.setdefault(kind, set()).add(rk)
            for kind, rk in self.conn.execute(
                "SELECT kind, rowkey FROM state_deps WHERE src=? AND lkey=?", d
            ):
                if kind not in self._stale:
                    out.setdefault(kind, set()).add(rk)
        return out

    def flush(self) -> None:
        self._reset()

    def discard(self) -> None:
        self._reset()


class RowTable(Generic[V]):
    """The rows of one mapped table (``kind``): state of the rows touched since the last commit in
    memory, the rest in ``table``. A row's deps are a pure function of its columns (``deps_of``): they
    are recomputed on load instead of being read back."""

    table = ""
    value_columns = ""

    def __init__(
        self,
        conn: sqlite3.Connection,
        deps: DepIndex,
        kind: str,
        deps_of: Callable[[dict[str, Any]], tuple[Dep, ...]],
        track_deps: bool,
    ) -> None:
        self.conn, self.deps, self.kind = conn, deps, kind
        self.deps_of, self.track_deps = deps_of, track_deps
        marks = ",".join("?" * (2 + len(self.value_columns.split(","))))  # rowkey, cols, value columns
        self._insert = f"INSERT OR REPLACE INTO {self.table} VALUES ({marks})"
        self.cache = Cache()
        self._reset()

    def _reset(self) -> None:
        self.overlay: dict[str, RowState[V] | None] = {}
        self.truncated = False  # every stored row is gone

    def _decode(self, values: tuple[Any, ...]) -> V:
        raise NotImplementedError

    def _encode(self, value: V) -> tuple[Any, ...]:
        raise NotImplementedError

    def get(self, rowkey: str) -> RowState[V] | None:
        return self.overlay.get(rowkey)

    def put(self, rowkey: str, row: RowState[V] | None) -> None:
        self.overlay[rowkey] = row
        if row is not None and row.deps:
            self.deps.note(self.kind, rowkey, row.deps)

    def truncate(self) -> None:
        self.overlay.clear()
        self.truncated = True
        self.deps.forget_stored(self.kind)

    def load(self, rowkeys: Iterable[str]) -> None:
        """Bring the stored state of these rows into the overlay (rows already there stay as they are)."""
        rows = self.overlay
        missing = [k for k in rowkeys if k not in rows]
        if self.truncated:  # the table was emptied after what the store holds
            rows.update(dict.fromkeys(missing))
            return
        uncached = []
        for k in missing:
            hit = self.cache.get(k)
            if hit is _MISSING:
                uncached.append(k)
            else:
                rows[k] = hit
        for i in range(0, len(uncached), IN_BATCH):
            part = uncached[i : i + IN_BATCH]
            found = {
                r[0]: (r[1], r[2:])
                for r in self.conn.execute(
                    f"SELECT rowkey, cols, {self.value_columns} FROM {self.table} "
                    f"WHERE rowkey IN ({','.join('?' * len(part))})",
                    part,
                )
            }
            for k in part:
                f = found.get(k)
                if f is None:
                    rows[k] = None
                else:
                    cols = _dec(f[0])
                    rows[k] = RowState(cols, self._decode(f[1]), self.deps_of(cols))

    def flush(self) -> None:
        c, rows = self.conn, self.overlay
        if self.truncated:
            c.execute(f"DELETE FROM {self.table}")
            c.execute("DELETE FROM state_deps WHERE kind=?", (self.kind,))
            self.cache.clear()
        else:
            dels = [(k,) for k, v in rows.items() if v is None]
            if dels:
                c.executemany(f"DELETE FROM {self.table} WHERE rowkey=?", dels)
            if self.track_deps and rows:
                c.executemany(
                    "DELETE FROM state_deps WHERE kind=? AND rowkey=?", [(self.kind, k) for k in rows]
                )
        c.executemany(
            self._insert,
            [(k, _enc(v.cols), *self._encode(v.value)) for k, v in rows.items() if v is not None],
        )
        if self.track_deps:
            c.executemany(
                "INSERT OR IGNORE INTO state_deps VALUES (?,?,?,?)",
                [(self.kind, k, s, lk) for k, v in rows.items() if v is not None for s, lk in v.deps],
            )
        # what was just written is what the store holds: keep it warm for the next commits
        for k, v in rows.items():
            self.cache.put(k, v)
        self._reset()

    def discard(self) -> None:
        self.cache.clear()
        self._reset()


class StockRows(RowTable[Contribution]):
    table = "state_stock_rows"
    value_columns = "sku, location, qty, safety"

    def _decode(self, values: tuple[Any, ...]) -> Contribution:
        sku, loc, qty, saf = values
        return Contribution(sku, loc, Decimal(qty), Decimal(saf or 0))

    def _encode(self, value: Contribution) -> tuple[Any, ...]:
        return (value.sku, value.location, str(value.qty), str(value.safety))


class PriceRows(RowTable[PriceLine]):
    """Price rows, and an index of the overlay's rows by (sku, price list) group."""

    table = "state_price_rows"
    value_columns = "sku, plist, amount, currency, compare_at, vfrom, vto"

    def _reset(self) -> None:
        super()._reset()
        self.groups: dict[Group, set[str]] = {}

    def _decode(self, values: tuple[Any, ...]) -> PriceLine:
        sku, pl, a, cur, c, vf, vt = values
        return PriceLine(sku, pl, Decimal(a) if a else None, cur, Decimal(c) if c else None, vf, vt)

    def _encode(self, value: PriceLine) -> tuple[Any, ...]:
        p = value
        return (p.sku, p.plist, _s(p.amount), p.currency, _s(p.compare_at), p.vfrom, p.vto)

    def note_group(self, group: Group, rowkey: str) -> None:
        self.groups.setdefault(group, set()).add(rowkey)

    def lines_of(self, group: Group) -> list[PriceLine]:
        """Every line of the group: from the overlay, then the stored rows the overlay does not hold."""
        rows = self.overlay
        out = [
            r.value
            for rk in self.groups.get(group, ())
            if (r := rows.get(rk)) is not None and r.value.group == group
        ]
        if not self.truncated:
            for r in self.conn.execute(
                # a stored line without an amount is in no group (PriceLine.group), and Decimal(None) fails
                f"SELECT rowkey, {self.value_columns} FROM {self.table} "
                "WHERE sku=? AND plist=? AND amount IS NOT NULL",
                group,
            ):
                if r[0] not in rows:
                    out.append(self._decode(r[1:]))
        return out

    def known_groups(self) -> list[Group]:
        """Every group with a line, stored or in the overlay (stored ones first)."""
        out: dict[Group, None] = {}
        if not self.truncated:
            for sku, plist in self.conn.execute(
                f"SELECT DISTINCT sku, plist FROM {self.table} WHERE sku IS NOT NULL AND plist IS NOT NULL"
            ):
                out[(sku, plist)] = None
        out.update(dict.fromkeys(self.groups))
        return list(out)

    def truncate(self) -> None:
        super().truncate()
        self.groups = {}


class StockSums:
    """``state_stock_sums``: one StockSum per (sku, location) with counted rows."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.cache = Cache()
        self._reset()

    def _reset(self) -> None:
        self.overlay: dict[Group, StockSum] = {}
        self.truncated = False

    def get(self, key: Group) -> StockSum:
        """The sum of ``key``, loaded into the overlay (where it is changed in place)."""
        s = self.overlay.get(key)
        if s is not None:
            return s
        if not self.truncated:
            hit = self.cache.get(key)
            if hit is not _MISSING:
                s = self.overlay[key] = StockSum(hit[0], dict(hit[1]))
                return s
            row = self.conn.execute(
                "SELECT qty, safeties FROM state_stock_sums WHERE sku=? AND location=?", key
            ).fetchone()
            if row:
                s = self.overlay[key] = StockSum(Decimal(row[0]), json.loads(row[1]) if row[1] else {})
                return s
        s = self.overlay[key] = StockSum(Decimal(0), {})
        return s

    def truncate(self) -> list[Group]:
        """Zero every sum, stored or in the overlay; return their keys."""
        if not self.truncated:
            for sku, loc in self.conn.execute("SELECT sku, location FROM state_stock_sums"):
                self.get((sku, loc))
        for s in self.overlay.values():
            s.qty, s.safeties = Decimal(0), {}
        self.truncated = True
        return list(self.overlay)

    def flush(self) -> None:
        c = self.conn
        if self.truncated:
            c.execute("DELETE FROM state_stock_sums")
            self.cache.clear()
        if self.overlay:
            c.executemany(
                "INSERT OR REPLACE INTO state_stock_sums VALUES (?,?,?,?)",
                [
                    (k[0], k[1], str(v.qty), json.dumps(v.safeties) if v.safeties else None)
                    for k, v in self.overlay.items()
                ],
            )
        for k, v in self.overlay.items():
            self.cache.put(k, (v.qty, dict(v.safeties)))
        self._reset()

    def discard(self) -> None:
        self.cache.clear()
        self._reset()


class LookupState:
    """``state_lookups``: (lookup name, canonical key) -> LookupEntry, or None when the key has no row."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.cache = Cache()
        self._reset()

    def _reset(self) -> None:
        self.overlay: dict[tuple[str, str], LookupEntry | None] = {}
        self._dirty: set[tuple[str, str]] = set()

    def get(self, name: str, lkey: str) -> LookupEntry | None:
        """The entry of a loaded key (None: no row, or not loaded)."""
        return self.overlay.get((name, lkey))

    def set(self, name: str, lkey: str, entry: LookupEntry | None) -> None:
        self.overlay[(name, lkey)] = entry
        self._dirty.add((name, lkey))

    def resolve(self, name: str, key: Any) -> Any:
        """``lookup(name, key)`` as rules call it: the value, or None."""
        if key is None:
            return None
        k = (name, lookup_key(key))
        if k not in self.overlay:
            self.load(name, [k[1]])
        v = self.overlay[k]
        return None if v is None else v.value

    def load(self, name: str, keys: Iterable[str]) -> None:
        missing = []
        for k in keys:
            if (name, k) in self.overlay:
                continue
            hit = self.cache.get((name, k))
            if hit is _MISSING:
                missing.append(k)
            else:
                self.overlay[(name, k)] = hit
        for i in range(0, len(missing), IN_BATCH):
            part = missing[i : i + IN_BATCH]
            found = {
                lkey: LookupEntry(None, _dec(value), cols)
                for lkey, cols, value in self.conn.execute(
                    "SELECT lkey, cols, value FROM state_lookups WHERE name=? AND lkey IN "
                    f"({','.join('?' * len(part))})",
                    [name, *part],
                )
            }
            for k in part:
                self.overlay[(name, k)] = found.get(k)

    def truncate(self, name: str) -> list[str]:
        """Every key of lookup ``name`` loses its row; return the loaded keys that had one."""
        for (lkey,) in self.conn.execute("SELECT lkey FROM state_lookups WHERE name=?", (name,)):
            self.overlay.setdefault((name, lkey), None)
        had = []
        for k in [k for k in self.overlay if k[0] == name]:
            if self.overlay[k] is not None:
                had.append(k[1])
            self.set(name, k[1], None)
        return had

    def flush(self) -> None:
        c = self.conn
        dels = [k for k in self._dirty if self.overlay[k] is None]
        if dels:
            c.executemany("DELETE FROM state_lookups WHERE name=? AND lkey=?", dels)
        sets = [
            (k[0], k[1], _enc(v.cols), _enc(v.value))
            for k in self._dirty
            if (v := self.overlay[k]) is not None
        ]
        if sets:
            c.executemany("INSERT OR REPLACE INTO state_lookups VALUES (?,?,?,?)", sets)
        for k in self._dirty:
            self.cache.put(k, self.overlay[k])
        self._reset()

    def discard(self) -> None:
        self.cache.clear()
        self._reset()


class PriceTimers:
    """``state_price_timers``: when a price group's validity window opens or closes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._reset()

    def _reset(self) -> None:
        self._pending: set[tuple[float, str, str]] = set()
        self._fired_upto: float | None = None

    def add(self, at: float, group: Group) -> None:
        self._pending.add((at, group[0], group[1]))

    def next(self) -> float | None:
        """The earliest timer not fired yet, or None."""
        lo = self._fired_upto if self._fired_upto is not None else -1e18
        row = self.conn.execute("SELECT min(at) FROM state_price_timers WHERE at > ?", (lo,)).fetchone()
        cands = [
            a
            for a in (row[0] if row else None, min((t[0] for t in self._pending), default=None))
            if a is not None
        ]
        return min(cands) if cands else None

    def fire(self, now: float) -> set[Group]:
        """The groups of the timers due by ``now``, which are then fired."""
        lo = self._fired_upto if self._fired_upto is not None else -1e18
        groups = {
            (s, p)
            for _a, s, p in self.conn.execute(
                "SELECT at, sku, plist FROM state_price_timers WHERE at > ? AND at <= ?", (lo, now)
            )
        }
        for t in [t for t in self._pending if t[0] <= now]:
            groups.add((t[1], t[2]))
            self._pending.discard(t)
        self._fired_upto = max(now, lo)
        return groups

    def flush(self) -> None:
        if self._fired_upto is not None:
            self.conn.execute("DELETE FROM state_price_timers WHERE at <= ?", (self._fired_upto,))
        if self._pending:
            self.conn.executemany(
                "INSERT OR IGNORE INTO state_price_timers VALUES (?,?,?)", sorted(self._pending)
            )
        self._reset()

    def discard(self) -> None:
        self._reset()


class DataErrors:
    """``data_errors``: a row whose rules fail contributes nothing until fixed; ``count`` is a metric."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.count = 0
        self._pending: list[tuple[float, str, str, str]] = []

    def record(self, table: str, rowkey: str, problem: str) -> None:
        self.count += 1
        log.warning(
            "data error in %s row %s: %s (row contributes nothing until fixed)", table, rowkey, problem
        )
        self._pending.append((time.time(), table, rowkey, problem[:500]))

    def flush(self) -> None:
        if self._pending:
            self.conn.executemany("INSERT OR REPLACE INTO data_errors VALUES (?,?,?,?)", self._pending)
        self._pending = []

    def discard(self) -> None:
        self._pending = []


# typed JSON of stored inputs ----------------------------------------------------------------------------
def _enc_default(v: Any) -> Any:
    if isinstance(v, Decimal):
        return {"$d": str(v)}
    if isinstance(v, datetime):
        return {"$dt": v.isoformat()}
    if isinstance(v, date):
        return {"$date": v.isoformat()}
    return str(v)


def _enc(v: Any) -> str:
    """Typed JSON of stored row inputs: a Decimal or a date reads back as itself after a restart."""
    return json.dumps(v, default=_enc_default, separators=(",", ":"))


def _dec_hook(d: dict[str, Any]) -> Any:
    if len(d) == 1:
        if "$d" in d:
            return Decimal(d["$d"])
        if "$dt" in d:
            return datetime.fromisoformat(d["$dt"])
        if "$date" in d:
            return date.fromisoformat(d["$date"])
    return d


def _dec(text: str | None) -> Any:
    if text is None:
        return None
    if text[:1] == '"' and "\\" not in text:  # a plain string (_enc escapes ", \ and non-ASCII)
        return text[1:-1]
    return json.loads(text, object_hook=_dec_hook)


def _s(v: Decimal | None) -> str | None:
    return None if v is None else str(v)
