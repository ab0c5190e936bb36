"""The normalizing layer: ERP row changes → facts (values to set), with the per-row state it needs.

One ``Normalizer`` handles the whole mapping: ``lookups:`` (key → value tables such as item id → SKU),
``stock:`` and ``prices:``. Changes are applied in stream order, so a lookup change and a stock change in
one ERP transaction see each other.

Stock: every counted row (filter true, SKU and mapped warehouse known) contributes ``quantity - reserved``
of its SKU to the shop location its warehouse maps to; the fact is
``floor(sum - max per-SKU safety) - location safety``, clamped at 0. A (sku, location) that no longer has
counted rows (item deleted, deactivated, renamed) gets ``available: 0``: that is how a retired SKU is
told to the shops.

Prices: one fact per (sku, shop price list): among the lines valid *now*, the latest ``valid_from`` wins,
then the lowest amount. Validity boundaries in the future are timers (``due_timers``/``next_timer``), so a
price starting at midnight is pushed at midnight without an ERP change. When no line is valid any more,
no fact is written: the shop keeps its last price (a shop cannot sell an item without one; take an item off
sale through stock).

State (each row's inputs and contribution, sums, lookup values, a reverse index lookup key → dependent rows,
timers) lives in SQLite tables beside the outbox. apply() works on an in-memory overlay bounded by the
commit window; flush() writes it inside the caller's outbox transaction. Rows are stored absolutely, never
as deltas, so replaying a change after a crash is harmless.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_UP, ROUND_UP, Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from cdc.changes import UNCHANGED_TOAST, RowChange
from cdc.facts import Fact, FactKey, price_fact
from cdc.mapping.model import LookupMapping, PriceMapping, StockMapping
from cdc.mapping.rules import Rule, RuleError, _num

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

_IN_BATCH = 500  # SQLite host parameters per IN (...) lookup
_ROUNDING = {
    "half_up": ROUND_HALF_UP,
    "down": ROUND_DOWN,
    "up": ROUND_UP,
    "floor": ROUND_FLOOR,
    "ceiling": ROUND_CEILING,
}


CACHE_ENTRIES = 20_000  # per cache generation: hot rows and sums stay in memory, the store holds them all


class _Cache:
    """Committed state kept in memory across commits, bounded: two generations of at most ``size``
    entries; when the young one fills, the old one is dropped (cheaper than an exact LRU, same bound)."""

    __slots__ = ("old", "size", "young")

    def __init__(self, size: int = CACHE_ENTRIES) -> None:
        self.size = size
        self.young: dict[Any, Any] = {}
        self.old: dict[Any, Any] = {}

    def get(self, key: Any, default: Any = KeyError) -> Any:
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


def table_name(name: str, default_schema: str = "public") -> str:
    return name if "." in name else f"{default_schema}.{name}"


@dataclass(slots=True)
class Contribution:
    sku: str | None
    location: str | None
    qty: Decimal
    safety: Decimal = Decimal(0)

    @property
    def counts(self) -> bool:
        return self.sku is not None and self.location is not None


@dataclass(slots=True)
class PriceLine:
    sku: str | None
    plist: str | None
    amount: Decimal | None = None
    currency: str | None = None
    compare_at: Decimal | None = None
    vfrom: float | None = None
    vto: float | None = None

    @property
    def group(self) -> tuple[str, str] | None:
        if self.sku is None or self.plist is None or self.amount is None:
            return None
        return (self.sku, self.plist)

    def valid(self, now: float) -> bool:
        return (self.vfrom is None or self.vfrom <= now) and (self.vto is None or now < self.vto)

    def rank(self) -> tuple[Any, ...]:
        # latest valid_from first (none: last), then lowest amount, then currency: as in snapshot_sql
        return (self.vfrom is None, -(self.vfrom or 0.0), self.amount, self.currency or "")


@dataclass(slots=True)
class _Lookup:
    name: str
    table: str
    key: str
    value: Rule
    filter: Rule | None

    @property
    def src(self) -> str:
        return f"{self.table}:{self.key}"

    @property
    def columns(self) -> list[str]:
        return list(
            dict.fromkeys([self.key, *self.value.columns, *(self.filter.columns if self.filter else [])])
        )


Row = tuple[dict[str, Any], Any, tuple[tuple[str, str], ...]]  # (input columns, contribution, deps)


class Normalizer:
    """stock + prices + lookups; ``apply(changes) → facts``, ``flush()``, ``discard()``, ``tables``."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        stock: StockMapping | None = None,
        prices: PriceMapping | None = None,
        lookups: dict[str, LookupMapping] | None = None,
        default_schema: str = "public",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.conn = conn
        self.clock = clock
        self.stock_map, self.price_map = stock, prices
        self.lookups: dict[str, _Lookup] = {}
        for name, lm in (lookups or {}).items():
            p = f"lookups.{name}"
            value = Rule(lm.value, f"{p}.value")
            filt = Rule(lm.filter, f"{p}.filter") if lm.filter else None
            for r in (value, filt):
                if r is not None and r.lookups:
                    raise RuleError(f"{r.path}: a lookup's own rules cannot call lookup()")
            self.lookups[name] = _Lookup(name, table_name(lm.table, default_schema), lm.key, value, filt)
        self.stock_rules: dict[str, Rule] = {}
        if stock is not None:
            self.stock_table = table_name(stock.table, default_schema)
            for f in ("sku", "warehouse", "quantity", "reserved", "filter", "safety_stock_per_sku"):
                if getattr(stock, f) is not None:
                    self.stock_rules[f] = Rule(getattr(stock, f), f"stock.{f}")
            if isinstance(stock.safety_stock, dict):
                bad = sorted(set(stock.safety_stock) - set(stock.locations.values()))
                if bad:
                    raise RuleError(
                        f"stock.safety_stock: {bad[0]!r} is not a shop location of stock.locations"
                    )
        self.price_rules: dict[str, Rule] = {}
        if prices is not None:
            self.price_table = table_name(prices.table, default_schema)
            for f in (
                "sku",
                "price_list",
                "amount",
                "currency",
                "compare_at",
                "valid_from",
                "valid_to",
                "filter",
            ):
                if getattr(prices, f) is not None:
                    self.price_rules[f] = Rule(getattr(prices, f), f"prices.{f}")
            try:
                self.tz = ZoneInfo(prices.timezone)
            except Exception:
                raise RuleError(f"prices.timezone: unknown time zone {prices.timezone!r}") from None
        for rule in [*self.stock_rules.values(), *self.price_rules.values()]:
            for name in rule.lookup_names:
                if name not in self.lookups:
                    raise RuleError(f"{rule.path}: lookup {name!r} is not declared under lookups:")
        self.stock_cols = _columns(self.stock_rules.values())
        self.price_cols = _columns(self.price_rules.values())
        self._stock_lk = any(r.lookups for r in self.stock_rules.values())
        self._price_lk = any(r.lookups for r in self.price_rules.values())
        conn.executescript(STATE_SCHEMA)
        self.clamped = 0  # how many times a negative sum was clamped to 0 (a metric)
        self.data_errors = 0
        self._row_cache = {"stock": _Cache(), "price": _Cache()}
        self._sum_cache = _Cache()
        self._lk_cache = _Cache()
        self.discard()

    # --------------------------------------------------------------------------------------------
    @property
    def tables(self) -> list[str]:
        """Every table the source must publish/stream; lookup tables first so a snapshot resolves keys
        before the rows that use them arrive."""
        out = [lk.table for lk in self.lookups.values()]
        if self.stock_map is not None:
            out.append(self.stock_table)
        if self.price_map is not None:
            out.append(self.price_table)
        return list(dict.fromkeys(out))

    @property
    def overlay_size(self) -> int:
        return len(self._rows["stock"]) + len(self._rows["price"]) + len(self._sums) + len(self._lk)

    def discard(self) -> None:
        """Forget everything not yet committed (and the caches, which may have seen it)."""
        for c in (*self._row_cache.values(), self._sum_cache, self._lk_cache):
            c.clear()
        self._reset_overlay()

    def _reset_overlay(self) -> None:
        self._rows: dict[str, dict[str, Row | None]] = {"stock": {}, "price": {}}
        self._sums: dict[tuple[str, str], list[Any]] = {}  # (sku, loc) -> [qty, {safety: count} | None]
        self._lk: dict[tuple[str, str], tuple[dict[str, Any], Any] | None] = {}
        self._lk_dirty: set[tuple[str, str]] = set()
        self._dep_overlay: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._price_groups: dict[tuple[str, str], set[str]] = {}
        self._timers: set[tuple[float, str, str]] = set()
        self._fired_upto: float | None = None
        self._errors: list[tuple[float, str, str, str]] = []
        self._truncated: set[str] = set()

    # apply ----------------------------------------------------------------------------------------
    def apply(self, changes: list[RowChange], position: str = "", commit_ts: float = 0.0) -> list[Fact]:
        """Apply one chunk of changes to the in-memory overlay; return the facts it changes.

        Nothing is written until flush(), which the caller runs inside the outbox transaction that also
        stores the facts and the position — so the SQLite write lock is held only for that short commit."""
        touched_s: dict[tuple[str, str], None] = {}
        touched_p: dict[tuple[str, str], None] = {}
        i = 0
        while i < len(changes):  # runs of one table keep the state loads batched
            j = i + 1
            table = changes[i].table
            while j < len(changes) and changes[j].table == table:
                j += 1
            run = changes[i:j]
            for lk in self.lookups.values():
                if lk.table == table:
                    self._lookup_run(lk, run, touched_s, touched_p)
            if self.stock_map is not None and table == self.stock_table:
                self._row_run("stock", run, touched_s, touched_p)
            if self.price_map is not None and table == self.price_table:
                self._row_run("price", run, touched_s, touched_p)
            i = j
        return self._stock_facts(touched_s, position, commit_ts) + self._price_facts(
            touched_p, position, commit_ts
        )

    def _rowkey(self, kind: str, change: RowChange, row: dict[str, Any]) -> str:
        m = self.stock_map if kind == "stock" else self.price_map
        cols = (m.key if m is not None else None) or list(change.key)
        if not cols:  # no key: the whole mapped row identifies it (only safe for insert-only tables)
            cols = self.stock_cols if kind == "stock" else self.price_cols
        if len(cols) == 1:
            v = row.get(cols[0])
            if type(v) is int:  # the common integer primary key; same text as the JSON form below
                return f"[{v}]"
        return json.dumps([_plain(row.get(c)) for c in cols], separators=(",", ":"))

    def _row_run(
        self,
        kind: str,
        run: list[RowChange],
        ts: dict[tuple[str, str], None],
        tp: dict[tuple[str, str], None],
    ) -> None:
        columns = self.stock_cols if kind == "stock" else self.price_cols
        rows = self._rows[kind]
        keyed: list[tuple[RowChange, str | None, str | None]] = []
        needed: list[str] = []
        for c in run:
            if c.op == "t":
                keyed.append((c, None, None))
                continue
            old_key = self._rowkey(kind, c, c.before) if c.before is not None else None
            new_key = self._rowkey(kind, c, c.after) if c.after is not None else None
            if old_key is None:
                old_key = new_key  # an insert replayed after a crash finds its own earlier contribution
            keyed.append((c, old_key, new_key))
            needed.extend(k for k in (old_key, new_key) if k is not None)
        self._load_rows(kind, list(dict.fromkeys(needed)))
        rules = self.stock_rules if kind == "stock" else self.price_rules
        if self._stock_lk if kind == "stock" else self._price_lk:
            self._preload(rules.values(), [c.after for c in run if c.after is not None])
        for c, old_key, new_key in keyed:
            if c.op == "t":
                self._truncate(kind, ts, tp)
                continue
            prev = rows.get(old_key) if old_key else None
            after = c.after
            if after is not None and not all(k in after for k in columns):
                # A mapped column is gone from the row (dropped or renamed in the ERP): the rules would
                # read NULL and push a made-up value. Name it and keep the row's last good contribution.
                gone = [k for k in columns if k not in after]
                paths = [r.path for r in rules.values() if set(r.columns) & set(gone)]
                table = self.stock_table if kind == "stock" else self.price_table
                self._data_error(table, str(new_key), f"{', '.join(paths)}: column(s) {', '.join(gone)} "
                                 f"missing from {table} (dropped or renamed?); the shop keeps the last value")
                continue
            if prev is not None:
                self._unset(kind, prev, ts, tp)
            if c.op == "d":
                if old_key:
                    self._set_row(kind, old_key, None)
                continue
            assert c.after is not None and new_key is not None
            cols = {k: c.after.get(k) for k in columns}
            if any(v is UNCHANGED_TOAST for v in cols.values()):
                # pgoutput did not repeat an unchanged TOASTed value: take it from the stored row
                known = prev[0] if prev else {}
                cols = {k: (known.get(k) if v is UNCHANGED_TOAST else v) for k, v in cols.items()}
            if old_key is not None and old_key != new_key:
                self._set_row(kind, old_key, None)
                self._load_rows(kind, [new_key])
                other = rows.get(new_key)
                if other is not None:
                    self._unset(kind, other, ts, tp)
            self._set_row(kind, new_key, self._evaluate(kind, new_key, cols), ts, tp)

    def _evaluate(self, kind: str, rowkey: str, cols: dict[str, Any]) -> Row:
        rules = self.stock_rules if kind == "stock" else self.price_rules
        uses_lookups = self._stock_lk if kind == "stock" else self._price_lk
        deps = () if not uses_lookups else tuple(
            sorted(
                {
                    (self.lookups[n].src, _lkey(k))
                    for r in rules.values()
                    for n, f in r.lookups
                    if (k := f(cols)) is not None
                }
            )
        )
        contrib = self._stock_contrib(rowkey, cols) if kind == "stock" else self._price_line(rowkey, cols)
        return (cols, contrib, deps)

    def _set_row(
        self,
        kind: str,
        rowkey: str,
        row: Row | None,
        ts: dict[tuple[str, str], None] | None = None,
        tp: dict[tuple[str, str], None] | None = None,
    ) -> None:
        self._rows[kind][rowkey] = row
        if row is None:
            return
        for d in row[2]:
            self._dep_overlay.setdefault(d, set()).add((kind, rowkey))
        if kind == "stock":
            self._shift(row[1], +1, ts)
        else:
            g = row[1].group
            if g is not None:
                self._price_groups.setdefault(g, set()).add(rowkey)
                if tp is not None:
                    tp[g] = None
                now = self.clock()
                for at in (row[1].vfrom, row[1].vto):
                    if at is not None and at > now:
                        self._timers.add((at, g[0], g[1]))

    def _unset(
        self, kind: str, row: Row, ts: dict[tuple[str, str], None], tp: dict[tuple[str, str], None]
    ) -> None:
        if kind == "stock":
            self._shift(row[1], -1, ts)
        elif row[1].group is not None:
            tp[row[1].group] = None

    # lookups --------------------------------------------------------------------------------------
    def _lookup_run(
        self,
        lk: _Lookup,
        run: list[RowChange],
        ts: dict[tuple[str, str], None],
        tp: dict[tuple[str, str], None],
    ) -> None:
        keys: list[str] = []
        for c in run:
            for img in (c.before, c.after):
                if img is not None and img.get(lk.key) is not None and img.get(lk.key) is not UNCHANGED_TOAST:
                    keys.append(_lkey(img[lk.key]))
        self._load_lookups(lk.name, list(dict.fromkeys(keys)))
        changed: set[str] = set()
        for c in run:
            if c.op == "t":
                for (lkey,) in self.conn.execute("SELECT lkey FROM state_lookups WHERE name=?", (lk.name,)):
                    self._lk.setdefault((lk.name, lkey), None)
                for k in [k for k in self._lk if k[0] == lk.name]:
                    if self._lk[k] is not None:
                        changed.add(k[1])
                    self._lk[k] = None
                    self._lk_dirty.add(k)
                continue
            old = c.before.get(lk.key) if c.before is not None else None
            old_k = _lkey(old) if old is not None else None
            if c.op == "d":
                if old_k is None:
                    self._data_error(
                        lk.table,
                        str(c.before),
                        f"lookups.{lk.name}: delete without "
                        f"{lk.key!r} in the before-image (set REPLICA IDENTITY FULL or key on the PK)",
                    )
                    continue
                if self._lk.get((lk.name, old_k)) is not None:
                    changed.add(old_k)
                self._lk[(lk.name, old_k)] = None
                self._lk_dirty.add((lk.name, old_k))
                continue
            assert c.after is not None
            new = c.after.get(lk.key)
            if new is None:
                continue
            new_k = _lkey(new)
            prev = self._lk.get((lk.name, new_k))
            cols = {k: c.after.get(k) for k in lk.columns}
            if any(v is UNCHANGED_TOAST for v in cols.values()):
                known = prev[0] if prev else {}
                cols = {k: (known.get(k) if v is UNCHANGED_TOAST else v) for k, v in cols.items()}
            try:
                ok = lk.filter is None or _true(lk.filter(cols))
                value = lk.value(cols) if ok else None
            except (ValueError, TypeError, ArithmeticError) as e:
                self._data_error(lk.table, new_k, f"lookups.{lk.name}: {e}")
                value = None
            if old_k is not None and old_k != new_k:
                if self._lk.get((lk.name, old_k)) is not None:
                    changed.add(old_k)
                self._lk[(lk.name, old_k)] = None
                self._lk_dirty.add((lk.name, old_k))
            if (prev[1] if prev else None) != value or prev is None:
                changed.add(new_k)
            self._lk[(lk.name, new_k)] = (cols, value)
            self._lk_dirty.add((lk.name, new_k))
        if changed:
            self._recompute({(lk.src, k) for k in changed}, ts, tp)

    def _recompute(
        self, deps: set[tuple[str, str]], ts: dict[tuple[str, str], None], tp: dict[tuple[str, str], None]
    ) -> None:
        """A lookup value changed (SKU rename, item deactivated…): re-evaluate the rows that read it."""
        cands: dict[str, set[str]] = {"stock": set(), "price": set()}
        for d in deps:
            for kind, rk in self._dep_overlay.get(d, ()):
                cands[kind].add(rk)
            for kind, rk in self.conn.execute(
                "SELECT kind, rowkey FROM state_deps WHERE src=? AND lkey=?", d
            ):
                if kind not in self._truncated:
                    cands[kind].add(rk)
        for kind, rks in cands.items():
            if not rks:
                continue
            self._load_rows(kind, list(rks))
            rows = self._rows[kind]
            cur = [(rk, rows[rk]) for rk in rks if rows.get(rk) is not None]
            self._preload(
                (self.stock_rules if kind == "stock" else self.price_rules).values(),
                [r[0] for _, r in cur if r is not None],
            )
            for rk, row in cur:
                assert row is not None
                self._unset(kind, row, ts, tp)
                self._set_row(kind, rk, self._evaluate(kind, rk, row[0]), ts, tp)

    def _resolve(self, name: str, key: Any) -> Any:
        if key is None:
            return None
        k = (name, _lkey(key))
        if k not in self._lk:
            self._load_lookups(name, [k[1]])
        v = self._lk[k]
        return None if v is None else v[1]

    def _preload(self, rules: Iterable[Rule], rows: list[dict[str, Any]]) -> None:
        want: dict[str, set[str]] = {}
        for r in rules:
            for name, f in r.lookups:
                s = want.setdefault(name, set())
                for row in rows:
                    try:
                        k = f(row)
                    except (ValueError, TypeError, ArithmeticError):
                        continue
                    if k is not None:
                        s.add(_lkey(k))
        for name, keys in want.items():
            self._load_lookups(name, [k for k in keys if (name, k) not in self._lk])

    def _load_lookups(self, name: str, keys: list[str]) -> None:
        missing = []
        for k in keys:
            if (name, k) in self._lk:
                continue
            hit = self._lk_cache.get((name, k))
            if hit is KeyError:
                missing.append(k)
            else:
                self._lk[(name, k)] = hit
        for i in range(0, len(missing), _IN_BATCH):
            part = missing[i : i + _IN_BATCH]
            found = {
                lkey: (_dec(cols), _dec(value))
                for lkey, cols, value in self.conn.execute(
                    "SELECT lkey, cols, value FROM state_lookups WHERE name=? AND lkey IN "
                    f"({','.join('?' * len(part))})",
                    [name, *part],
                )
            }
            for k in part:
                self._lk[(name, k)] = found.get(k)

    # stock ----------------------------------------------------------------------------------------
    def _stock_contrib(self, rowkey: str, cols: dict[str, Any]) -> Contribution:
        r = self.stock_rules
        m = self.stock_map
        assert m is not None
        L = self._resolve
        try:
            if "filter" in r and not _true(r["filter"](cols, L)):
                return Contribution(None, None, Decimal(0))
            sku = r["sku"](cols, L)
            location = m.location_of(r["warehouse"](cols, L))
            qty = _dec0(r["quantity"](cols, L))
            if "reserved" in r:
                qty -= _dec0(r["reserved"](cols, L))
            safety = _dec0(r["safety_stock_per_sku"](cols, L)) if "safety_stock_per_sku" in r else Decimal(0)
            if not qty.is_finite() or not safety.is_finite():
                raise ValueError(f"quantity is {qty}")
        except (ValueError, TypeError, ArithmeticError, InvalidOperation) as e:
            self._data_error(self.stock_table, rowkey, f"stock.quantity: {e}")
            return Contribution(None, None, Decimal(0))
        if sku is None or (isinstance(sku, str) and not sku.strip()):
            if not r["sku"].lookups:  # through a lookup, no SKU means "not for sale": not an error
                self._data_error(self.stock_table, rowkey, f"{r['sku'].path}: the SKU is NULL or blank")
            return Contribution(None, location, qty)
        return Contribution(str(sku), location, qty, safety)

    def _sum(self, key: tuple[str, str]) -> list[Any]:
        s = self._sums.get(key)
        if s is None and "stock" not in self._truncated:
            hit = self._sum_cache.get(key)
            if hit is not KeyError:
                s = self._sums[key] = [hit[0], dict(hit[1])]
                return s
        if s is None:
            row = (
                None
                if "stock" in self._truncated
                else self.conn.execute(
                    "SELECT qty, safeties FROM state_stock_sums WHERE sku=? AND location=?", key
                ).fetchone()
            )
            s = [Decimal(row[0]), json.loads(row[1]) if row[1] else {}] if row else [Decimal(0), {}]
            self._sums[key] = s
        return s

    def _shift(self, contrib: Contribution, sign: int, touched: dict[tuple[str, str], None] | None) -> None:
        if not contrib.counts:
            return
        k = (contrib.sku, contrib.location)
        s = self._sum(k)  # type: ignore[arg-type]
        s[0] += sign * contrib.qty
        if "safety_stock_per_sku" in self.stock_rules:
            sk = str(contrib.safety)
            n = s[1].get(sk, 0) + sign
            if n:
                s[1][sk] = n
            else:
                s[1].pop(sk, None)
        if touched is not None:
            touched[k] = None  # type: ignore[index]

    def _stock_facts(
        self, touched: dict[tuple[str, str], None], position: str, commit_ts: float
    ) -> list[Fact]:
        facts = []
        m = self.stock_map
        assert m is not None
        safety_for = m.safety_for
        zero = Decimal(0)
        for k in touched:
            total, safeties = self._sums[k]
            per_sku = max((Decimal(x) for x in safeties), default=zero) if safeties else zero
            available = math.floor(total - per_sku) - safety_for(k[1])
            if available < 0:
                if total < 0:
                    self.clamped += 1
                available = 0
            facts.append(Fact(FactKey("stock", k[0], k[1]), {"available": available}, 0, position, commit_ts))
        return facts

    # prices ---------------------------------------------------------------------------------------
    def _price_line(self, rowkey: str, cols: dict[str, Any]) -> PriceLine:
        r = self.price_rules
        m = self.price_map
        assert m is not None
        L = self._resolve
        try:
            if "filter" in r and not _true(r["filter"](cols, L)):
                return PriceLine(None, None)
            sku = r["sku"](cols, L)
            plist = m.list_of(r["price_list"](cols, L))
            amount = self._round(r["amount"](cols, L))
            cur = r["currency"](cols, L)
            cmp = self._round(r["compare_at"](cols, L)) if "compare_at" in r else None
            vfrom = _epoch(r["valid_from"](cols, L), self.tz) if "valid_from" in r else None
            vto = _epoch(r["valid_to"](cols, L), self.tz) if "valid_to" in r else None
        except (ValueError, TypeError, ArithmeticError, InvalidOperation) as e:
            self._data_error(self.price_table, rowkey, f"prices: {e}")
            return PriceLine(None, None)
        if sku is None or (isinstance(sku, str) and not sku.strip()):
            return PriceLine(None, plist)
        return PriceLine(str(sku), plist, amount, None if cur is None else str(cur), cmp, vfrom, vto)

    def _round(self, v: Any) -> Decimal | None:
        if v is None:
            return None
        assert self.price_map is not None
        d = Decimal(_num(v))
        if not d.is_finite():
            raise ValueError(f"amount is {d}")
        rr = self.price_map.rounding
        return d.quantize(Decimal(1).scaleb(-rr.places), rounding=_ROUNDING[rr.mode])

    def _group_lines(self, g: tuple[str, str]) -> list[PriceLine]:
        rows = self._rows["price"]
        out = [
            r[1]
            for rk in self._price_groups.get(g, ())
            if (r := rows.get(rk)) is not None and r[1].group == g
        ]
        if "price" not in self._truncated:
            for rk, sku, plist, amount, cur, cmp, vfrom, vto in self.conn.execute(
                # a stored line without an amount is in no group (PriceLine.group), and Decimal(None) fails
                "SELECT rowkey, sku, plist, amount, currency, compare_at, vfrom, vto FROM state_price_rows "
                "WHERE sku=? AND plist=? AND amount IS NOT NULL",
                g,
            ):
                if rk not in rows:
                    out.append(
                        PriceLine(sku, plist, Decimal(amount), cur, Decimal(cmp) if cmp else None, vfrom, vto)
                    )
        return out

    def _price_facts(
        self, touched: Iterable[tuple[str, str]], position: str, commit_ts: float, now: float | None = None
    ) -> list[Fact]:
        now = self.clock() if now is None else now
        facts = []
        for g in touched:
            valid = [p for p in self._group_lines(g) if p.valid(now)]
            if not valid:
                continue  # no price applies now: the shop keeps its last one (see the module doc)
            best = min(valid, key=PriceLine.rank)
            assert best.amount is not None
            facts.append(
                price_fact(
                    g[0],
                    g[1],
                    best.amount,
                    best.currency or "",
                    best.compare_at,
                    position=position,
                    commit_ts=commit_ts,
                )
            )
        return facts

    def next_timer(self) -> float | None:
        """When the next validity window opens or closes (epoch seconds), or None."""
        if self.price_map is None:
            return None
        row = self.conn.execute(
            "SELECT min(at) FROM state_price_timers WHERE at > ?",
            (self._fired_upto if self._fired_upto is not None else -1e18,),
        ).fetchone()
        cands = [
            a
            for a in (row[0] if row else None, min((t[0] for t in self._timers), default=None))
            if a is not None
        ]
        return min(cands) if cands else None

    def due_timers(self, now: float | None = None) -> list[Fact]:
        """Facts of the price groups whose validity window opened or closed by ``now``."""
        if self.price_map is None:
            return []
        now = self.clock() if now is None else now
        lo = self._fired_upto if self._fired_upto is not None else -1e18
        groups = {
            (s, p)
            for _a, s, p in self.conn.execute(
                "SELECT at, sku, plist FROM state_price_timers WHERE at > ? AND at <= ?", (lo, now)
            )
        }
        for t in [t for t in self._timers if t[0] <= now]:
            groups.add((t[1], t[2]))
            self._timers.discard(t)
        self._fired_upto = max(now, lo)
        return self._price_facts(sorted(groups), "", now, now) if groups else []

    # shared ---------------------------------------------------------------------------------------
    def _load_rows(self, kind: str, rowkeys: list[str]) -> None:
        """Bring the stored state of these rows into the overlay (rows already there stay as they are)."""
        rows = self._rows[kind]
        missing = [k for k in rowkeys if k not in rows]
        if kind in self._truncated:  # the table was emptied after what the store holds
            rows.update(dict.fromkeys(missing))
            return
        cache = self._row_cache[kind]
        if missing:
            uncached = []
            for k in missing:
                hit = cache.get(k)
                if hit is KeyError:
                    uncached.append(k)
                else:
                    rows[k] = hit
            missing = uncached
        for i in range(0, len(missing), _IN_BATCH):
            part = missing[i : i + _IN_BATCH]
            marks = ",".join("?" * len(part))
            if kind == "stock":
                found = {
                    rk: (_dec(cols), Contribution(sku, loc, Decimal(qty), Decimal(saf or 0)))
                    for rk, cols, sku, loc, qty, saf in self.conn.execute(
                        f"SELECT rowkey, cols, sku, location, qty, safety FROM state_stock_rows "
                        f"WHERE rowkey IN ({marks})",
                        part,
                    )
                }
            else:
                found = {
                    rk: (
                        _dec(cols),
                        PriceLine(sku, pl, Decimal(a) if a else None, cur, Decimal(c) if c else None, vf, vt),
                    )
                    for rk, cols, sku, pl, a, cur, c, vf, vt in self.conn.execute(
                        f"SELECT rowkey, cols, sku, plist, amount, currency, compare_at, vfrom, vto "
                        f"FROM state_price_rows WHERE rowkey IN ({marks})",
                        part,
                    )
                }
            rules = self.stock_rules if kind == "stock" else self.price_rules
            for k in part:
                f = found.get(k)
                # deps are a pure function of the row's columns: recompute instead of storing them twice
                rows[k] = (
                    None
                    if f is None
                    else (
                        f[0],
                        f[1],
                        tuple(
                            sorted(
                                {
                                    (self.lookups[n].src, _lkey(v))
                                    for r in rules.values()
                                    for n, fn in r.lookups
                                    if (v := fn(f[0])) is not None
                                }
                            )
                        ),
                    )
                )

    def _truncate(self, kind: str, ts: dict[tuple[str, str], None], tp: dict[tuple[str, str], None]) -> None:
        # Every row of the table is gone: every sum / price group, stored or in the overlay, is affected.
        if kind == "stock":
            if "stock" not in self._truncated:
                for sku, loc in self.conn.execute("SELECT sku, location FROM state_stock_sums"):
                    self._sum((sku, loc))
            for k, s in self._sums.items():
                s[0], s[1] = Decimal(0), {}
                ts[k] = None
        else:
            if "price" not in self._truncated:
                for sku, plist in self.conn.execute(
                    "SELECT DISTINCT sku, plist FROM state_price_rows "
                    "WHERE sku IS NOT NULL AND plist IS NOT NULL"
                ):
                    tp[(sku, plist)] = None
            tp.update(dict.fromkeys(self._price_groups))
            self._price_groups = {}
        self._rows[kind].clear()
        self._truncated.add(kind)

    def _data_error(self, table: str, rowkey: str, problem: str) -> None:
        self.data_errors += 1
        log.warning(
            "data error in %s row %s: %s (row contributes nothing until fixed)", table, rowkey, problem
        )
        self._errors.append((time.time(), table, rowkey, problem[:500]))

    def flush(self) -> None:
        """Write the overlay (inside the caller's open outbox transaction) and forget it."""
        c = self.conn
        for kind, tbl in (("stock", "state_stock_rows"), ("price", "state_price_rows")):
            rows = self._rows[kind]
            track_deps = self._stock_lk if kind == "stock" else self._price_lk
            if kind in self._truncated:
                c.execute(f"DELETE FROM {tbl}")
                c.execute("DELETE FROM state_deps WHERE kind=?", (kind,))
            else:
                dels = [(k,) for k, v in rows.items() if v is None]
                if dels:
                    c.executemany(f"DELETE FROM {tbl} WHERE rowkey=?", dels)
                if track_deps and rows:
                    c.executemany(
                        "DELETE FROM state_deps WHERE kind=? AND rowkey=?", [(kind, k) for k in rows]
                    )
            if kind == "stock":
                c.executemany(
                    "INSERT OR REPLACE INTO state_stock_rows VALUES (?,?,?,?,?,?)",
                    [
                        (k, _enc(v[0]), v[1].sku, v[1].location, str(v[1].qty), str(v[1].safety))
                        for k, v in rows.items()
                        if v is not None
                    ],
                )
            else:
                c.executemany(
                    "INSERT OR REPLACE INTO state_price_rows VALUES (?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            k,
                            _enc(v[0]),
                            p.sku,
                            p.plist,
                            _s(p.amount),
                            p.currency,
                            _s(p.compare_at),
                            p.vfrom,
                            p.vto,
                        )
                        for k, v in rows.items()
                        if v is not None
                        for p in (v[1],)
                    ],
                )
            if track_deps:
                c.executemany(
                    "INSERT OR IGNORE INTO state_deps VALUES (?,?,?,?)",
                    [(kind, k, s, lk) for k, v in rows.items() if v is not None for s, lk in v[2]],
                )
        if "stock" in self._truncated:
            c.execute("DELETE FROM state_stock_sums")
        if self._sums:
            c.executemany(
                "INSERT OR REPLACE INTO state_stock_sums VALUES (?,?,?,?)",
                [(k[0], k[1], str(v[0]), json.dumps(v[1]) if v[1] else None) for k, v in self._sums.items()],
            )
        lk_del = [k for k in self._lk_dirty if self._lk[k] is None]
        if lk_del:
            c.executemany("DELETE FROM state_lookups WHERE name=? AND lkey=?", lk_del)
        lk_set = [
            (k[0], k[1], _enc(v[0]), _enc(v[1])) for k in self._lk_dirty if (v := self._lk[k]) is not None
        ]
        if lk_set:
            c.executemany("INSERT OR REPLACE INTO state_lookups VALUES (?,?,?,?)", lk_set)
        if self._fired_upto is not None:
            c.execute("DELETE FROM state_price_timers WHERE at <= ?", (self._fired_upto,))
        if self._timers:
            c.executemany("INSERT OR IGNORE INTO state_price_timers VALUES (?,?,?)", sorted(self._timers))
        if self._errors:
            c.executemany("INSERT OR REPLACE INTO data_errors VALUES (?,?,?,?)", self._errors)
        # What was just written is what the store holds: keep it warm for the next commits.
        for kind in ("stock", "price"):
            cache = self._row_cache[kind]
            if kind in self._truncated:
                cache.clear()
            for k, v in self._rows[kind].items():
                cache.put(k, v)
        if "stock" in self._truncated:
            self._sum_cache.clear()
        for k, v in self._sums.items():
            self._sum_cache.put(k, (v[0], dict(v[1])))
        for k in self._lk_dirty:
            self._lk_cache.put(k, self._lk[k])
        self._reset_overlay()


class StockNormalizer(Normalizer):
    """A normalizer for a ``stock:`` block alone (the original, simple mapping)."""

    def __init__(
        self,
        mapping: StockMapping,
        conn: sqlite3.Connection,
        *,
        default_schema: str = "public",
        path: str = "stock",
    ) -> None:
        super().__init__(conn, stock=mapping, default_schema=default_schema)
        self.mapping = mapping
        self.table = self.stock_table
        self.sku = self.stock_rules["sku"]
        self.warehouse = self.stock_rules["warehouse"]
        self.quantity = self.stock_rules["quantity"]


def normalizer_for(cfg: Any, conn: sqlite3.Connection, clock: Callable[[], float] = time.time) -> Normalizer:
    """The composite normalizer of a loaded Config (stock + prices + lookups)."""
    default_schema = "public" if cfg.source.kind == "postgres" else cfg.source.database
    return Normalizer(
        conn,
        stock=cfg.stock,
        prices=getattr(cfg, "prices", None),
        lookups=getattr(cfg, "lookups", None) or {},
        default_schema=default_schema,
        clock=clock,
    )


def _columns(rules: Iterable[Rule]) -> list[str]:
    return list(dict.fromkeys(c for r in rules for c in r.columns))


def _true(v: Any) -> bool:
    return v is not None and v is not UNCHANGED_TOAST and bool(v)


def _dec0(v: Any) -> Decimal:
    return Decimal(0) if v is None else Decimal(_num(v))


def _s(v: Decimal | None) -> str | None:
    return None if v is None else str(v)


def _lkey(v: Any) -> str:
    """Canonical text of a lookup key, equal for equal values of different types (5, Decimal('5'))."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, Decimal) and v == v.to_integral_value():
        return str(int(v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _epoch(v: Any, tz: ZoneInfo) -> float | None:
    """Epoch seconds of a date (midnight) or timestamp; naive values are read in the mapping's zone."""
    if v is None:
        return None
    if isinstance(v, str):
        v = datetime.fromisoformat(v.strip())
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=tz)).timestamp()
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day, tzinfo=tz).timestamp()
    raise ValueError(f"not a date or timestamp: {v!r}")


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
    return None if text is None else json.loads(text, object_hook=_dec_hook)


def _plain(v: Any) -> Any:
    """JSON-safe form of a column value for row keys (Decimal keeps its digits)."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return repr(v)
    return str(v)
