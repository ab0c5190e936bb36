"""Stock: every counted row (filter true, SKU and mapped warehouse known) contributes ``quantity -
reserved`` of its SKU to the shop location its warehouse maps to; the fact is ``floor(sum - max per-SKU
safety) - location safety``, clamped at 0. A (sku, location) that no longer has counted rows (item
deleted, deactivated, renamed) gets ``available: 0``: that is how a retired SKU is told to the shops.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

from cdc.facts import Fact, FactKey
from cdc.mapping.compiled import StockRules
from cdc.mapping.rules import to_number
from cdc.normalize.rows import RowStrategy, Touched, is_true
from cdc.normalize.state import Contribution, RowState, StateStore, StockRows, StockSums

_ZERO = Decimal(0)


class StockStrategy(RowStrategy[Contribution]):
    """The ``stock:`` block: rows' contributions summed per (sku, location) in StockSums."""

    row_table = StockRows

    def __init__(self, block: StockRules, store: StateStore) -> None:
        super().__init__(block, store)
        self.spec = block.spec
        self.sums = store.add(StockSums(store.conn))
        self._per_sku_safety = "safety_stock_per_sku" in block.rules

    def value_of(self, rowkey: str, cols: dict[str, Any]) -> Contribution:
        r, L = self.rules, self.resolve
        try:
            if "filter" in r and not is_true(r["filter"].fn(cols, L)):
                return Contribution(None, None, _ZERO)
            sku = r["sku"].fn(cols, L)
            location = self.spec.location_of(r["warehouse"].fn(cols, L))
            qty = _dec0(r["quantity"].fn(cols, L))
            if "reserved" in r:
                qty -= _dec0(r["reserved"].fn(cols, L))
            safety = _dec0(r["safety_stock_per_sku"].fn(cols, L)) if self._per_sku_safety else _ZERO
            if not qty.is_finite() or not safety.is_finite():
                raise ValueError(f"quantity is {qty}")
        except (ValueError, TypeError, ArithmeticError, InvalidOperation) as e:
            self.store.errors.record(self.table, rowkey, f"stock.quantity: {e}")
            return Contribution(None, None, _ZERO)
        if sku is None or (isinstance(sku, str) and not sku.strip()):
            if not r["sku"].lookups:  # through a lookup, no SKU means "not for sale": not an error
                self.store.errors.record(self.table, rowkey, f"{r['sku'].path}: the SKU is NULL or blank")
            return Contribution(None, location, qty)
        return Contribution(str(sku), location, qty, safety)

    def count(self, rowkey: str, row: RowState[Contribution], touched: Touched) -> None:
        self._shift(row.value, +1, touched)

    def uncount(self, row: RowState[Contribution], touched: Touched) -> None:
        self._shift(row.value, -1, touched)

    def _shift(self, contrib: Contribution, sign: int, touched: Touched) -> None:
        sku, location = contrib.sku, contrib.location
        if sku is None or location is None:  # the row does not count (Contribution.counts)
            return
        k = (sku, location)
        s = self.sums.get(k)
        s.qty += sign * contrib.qty
        if self._per_sku_safety:
            sk = str(contrib.safety)
            n = s.safeties.get(sk, 0) + sign
            if n:
                s.safeties[sk] = n
            else:
                s.safeties.pop(sk, None)
        touched[k] = None

    def truncate(self, touched: Touched) -> None:
        touched.update(dict.fromkeys(self.sums.truncate()))
        self.rows.truncate()

    def facts(self, touched: Touched, position: str, commit_ts: float) -> list[Fact]:
        facts = []
        safety_for = self.spec.safety_for
        sums = self.sums.overlay
        for k in touched:
            s = sums[k]
            per_sku = max((Decimal(x) for x in s.safeties), default=_ZERO) if s.safeties else _ZERO
            available = math.floor(s.qty - per_sku) - safety_for(k[1])
            if available < 0:
                if s.qty < 0:
                    self.clamped += 1
                available = 0
            facts.append(Fact(FactKey("stock", k[0], k[1]), {"available": available}, 0, position, commit_ts))
        return facts


def _dec0(v: Any) -> Decimal:
    return Decimal(0) if v is None else Decimal(to_number(v))
