"""Prices: one fact per (sku, shop price list): among the lines valid *now*, the latest ``valid_from``
wins, then the lowest amount. Validity boundaries in the future are timers (``due_timers`` /
``next_timer``), so a price starting at midnight is pushed at midnight without an ERP change. When no line
is valid any more, no fact is written: the shop keeps its last price (a shop cannot sell an item without
one; take an item off sale through stock).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, datetime
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_UP, ROUND_UP, Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from cdc.facts import Fact, price_fact
from cdc.mapping.compiled import PriceRules
from cdc.mapping.rules import to_number
from cdc.normalize.rows import RowStrategy, Touched, is_true
from cdc.normalize.state import Group, PriceLine, PriceRows, PriceTimers, RowState, StateStore

_ROUNDING = {
    "half_up": ROUND_HALF_UP,
    "down": ROUND_DOWN,
    "up": ROUND_UP,
    "floor": ROUND_FLOOR,
    "ceiling": ROUND_CEILING,
}


class PriceStrategy(RowStrategy[PriceLine]):
    """The ``prices:`` block: lines grouped by (sku, price list) in PriceRows, timers in PriceTimers."""

    row_table = PriceRows
    rows: PriceRows

    def __init__(self, block: PriceRules, store: StateStore, clock: Callable[[], float]) -> None:
        super().__init__(block, store)
        self.spec, self.tz, self.clock = block.spec, block.tz, clock
        self.timers = store.add(PriceTimers(store.conn))
        rr = block.spec.rounding
        self._quantum, self._rounding = Decimal(1).scaleb(-rr.places), _ROUNDING[rr.mode]

    def value_of(self, rowkey: str, cols: dict[str, Any]) -> PriceLine:
        r, L = self.rules, self.resolve
        try:
            if "filter" in r and not is_true(r["filter"].fn(cols, L)):
                return PriceLine(None, None)
            sku = r["sku"].fn(cols, L)
            plist = self.spec.list_of(r["price_list"].fn(cols, L))
            amount = self._round(r["amount"].fn(cols, L))
            cur = r["currency"].fn(cols, L)
            cmp = self._round(r["compare_at"].fn(cols, L)) if "compare_at" in r else None
            vfrom = _epoch(r["valid_from"].fn(cols, L), self.tz) if "valid_from" in r else None
            vto = _epoch(r["valid_to"].fn(cols, L), self.tz) if "valid_to" in r else None
        except (ValueError, TypeError, ArithmeticError, InvalidOperation) as e:
            self.store.errors.record(self.table, rowkey, f"prices: {e}")
            return PriceLine(None, None)
        if sku is None or (isinstance(sku, str) and not sku.strip()):
            return PriceLine(None, plist)
        return PriceLine(str(sku), plist, amount, None if cur is None else str(cur), cmp, vfrom, vto)

    def _round(self, v: Any) -> Decimal | None:
        if v is None:
            return None
        d = Decimal(to_number(v))
        if not d.is_finite():
            raise ValueError(f"amount is {d}")
        return d.quantize(self._quantum, rounding=self._rounding)

    def count(self, rowkey: str, row: RowState[PriceLine], touched: Touched) -> None:
        line = row.value
        g = line.group
        if g is None:
            return
        self.rows.note_group(g, rowkey)
        touched[g] = None
        now = self.clock()
        for at in (line.vfrom, line.vto):
            if at is not None and at > now:
                self.timers.add(at, g)

    def uncount(self, row: RowState[PriceLine], touched: Touched) -> None:
        g = row.value.group
        if g is not None:
            touched[g] = None

    def truncate(self, touched: Touched) -> None:
        touched.update(dict.fromkeys(self.rows.known_groups()))
        self.rows.truncate()

    def facts(
        self, touched: Iterable[Group], position: str, commit_ts: float, now: float | None = None
    ) -> list[Fact]:
        now = self.clock() if now is None else now
        facts = []
        for g in touched:
            valid = [p for p in self.rows.lines_of(g) if p.valid(now)]
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
        return self.timers.next()

    def due_timers(self, now: float) -> list[Fact]:
        groups = self.timers.fire(now)
        return self.facts(sorted(groups), "", now, now) if groups else []


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
