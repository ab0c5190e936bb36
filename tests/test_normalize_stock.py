"""The stock normalizer on hand-built changes (the streaming tests feed it real WAL)."""

import sqlite3
from decimal import Decimal

from cdc.changes import UNCHANGED_TOAST, RowChange, SourceInfo
from cdc.mapping.model import MappingSpec, StockMapping
from cdc.normalize.normalizer import Normalizer, normalizer_for

M = StockMapping(table="public.stock", sku="sku", warehouse="wh", quantity="on_hand - reserved",
                 locations={"W1": "mad", "W2": "mad", "W3": "mil"}, safety_stock=1)
SRC = SourceInfo("postgresql", "erp", "public", "stock")


def ch(op, before=None, after=None):
    return RowChange(op, SRC, before, after, ("id",))


def row(i, sku, wh, on_hand, reserved=0):
    return {"id": i, "sku": sku, "wh": wh, "on_hand": Decimal(on_hand), "reserved": Decimal(reserved)}


def stock_normalizer(m: StockMapping) -> Normalizer:
    return normalizer_for(MappingSpec(stock=m), sqlite3.connect(":memory:"))


def facts(n, changes):
    out = {(f.sku, f.location): f.available for f in n.apply(changes)}
    n.flush()  # as the pipeline does at each outbox commit
    return out


def test_sums_warehouses_per_location_minus_safety_and_reserved():
    n = stock_normalizer(M)
    got = facts(n, [ch("c", after=row(1, "A", "W1", 5, 1)), ch("c", after=row(2, "A", "W2", 3)),
                    ch("c", after=row(3, "A", "W3", 2))])
    assert got == {("A", "mad"): 6, ("A", "mil"): 1}


def test_update_delete_move_and_clamp():
    n = stock_normalizer(M)
    facts(n, [ch("c", after=row(1, "A", "W1", 5)), ch("c", after=row(2, "A", "W3", 5))])
    assert facts(n, [ch("u", after=row(1, "A", "W1", 2))]) == {("A", "mad"): 1}
    # the row moves to another location: both locations change
    assert facts(n, [ch("u", after=row(1, "A", "W3", 2))]) == {("A", "mad"): 0, ("A", "mil"): 6}
    assert facts(n, [ch("d", before={"id": 2})]) == {("A", "mil"): 1}
    assert facts(n, [ch("u", after=row(1, "A", "W3", -10))]) == {("A", "mil"): 0}
    assert n.clamped == 1


def test_replay_is_harmless():
    n = stock_normalizer(M)
    batch = [ch("c", after=row(1, "A", "W1", 5)), ch("u", after=row(1, "A", "W1", 7))]
    assert facts(n, batch) == {("A", "mad"): 6}
    assert facts(n, batch) == {("A", "mad"): 6}  # at-least-once delivery from the log


def test_unchanged_toast_column_keeps_known_value():
    m = M.model_copy(update={"sku": "sku_text"})
    n = stock_normalizer(m)
    r = row(1, "x", "W1", 5) | {"sku_text": "LONG-SKU"}
    facts(n, [ch("c", after=r)])
    upd = r | {"on_hand": Decimal(9), "sku_text": UNCHANGED_TOAST}
    assert facts(n, [ch("u", after=upd)]) == {("LONG-SKU", "mad"): 8}


def test_truncate_zeroes_everything():
    n = stock_normalizer(M)
    facts(n, [ch("c", after=row(1, "A", "W1", 5)), ch("c", after=row(2, "B", "W3", 5))])
    assert facts(n, [ch("t")]) == {("A", "mad"): 0, ("B", "mil"): 0}


def test_bad_quantity_is_recorded_not_fatal():
    m = M.model_copy(update={"quantity": "qty_text"})
    n = stock_normalizer(m)
    got = facts(n, [ch("c", after={"id": 1, "sku": "A", "wh": "W1", "qty_text": "lots"}),
                    ch("c", after={"id": 2, "sku": "A", "wh": "W2", "qty_text": "4"})])
    assert got == {("A", "mad"): 3}
    assert n.data_errors == 1
    (problem,) = n.conn.execute("SELECT problem FROM data_errors").fetchone()
    assert "stock.quantity" in problem and "lots" in problem
