"""Property: after every committed ERP transaction (and every clock advance), the facts the streaming
path stored in the outbox equal the facts the transpiled snapshot SELECT computes on the ERP (MariaDB,
Dolibarr-like schema and config/dolibarr-mariadb.yaml). The normalizer reads the real binlog through the
MySQL source: the row images, types (DOUBLE, DECIMAL, DATETIME, TINYINT) and transaction boundaries are
the server's own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.mapping_harness import T0, MariaHarness, replay

DAY = 86_400.0
# refs that collide under MariaDB's case- and trailing-space-insensitive collation, and a blank one
refs = st.sampled_from(["P-1", "P-2", "P-3", "p-1", "P-2 ", ""])
wh_refs = st.sampled_from(["WH-MAD", "WH-BCN", "WH-MIL", "WH-OLD", "wh-mil", "WH-MAD "])
reel = st.one_of(st.none(), st.decimals(min_value=-5, max_value=30, places=2))
when = st.sampled_from([T0 - 2 * DAY, T0 - DAY, T0 + 3_600, T0 + 2 * DAY])

stock_row = st.tuples(st.just("stock"), st.integers(1, 4), st.integers(1, 4), reel)
price_row = st.tuples(
    st.just("price"),
    st.integers(1, 4),
    st.integers(1, 3),
    when,
    st.one_of(st.none(), st.decimals(min_value=0, max_value=100, places=4)),
)
op = st.one_of(
    stock_row,  # rows first and twice: hypothesis favours early branches, and rows make facts
    price_row,
    stock_row,
    price_row,
    st.tuples(st.just("product"), st.integers(1, 4), refs, st.integers(0, 1)),
    st.tuples(st.just("del_product"), st.integers(1, 4)),
    st.tuples(st.just("warehouse"), st.integers(1, 4), wh_refs, st.integers(0, 1)),
    st.tuples(st.just("del_warehouse"), st.integers(1, 4)),
    st.tuples(st.just("upd_stock"), st.integers(0, 9), reel),
    st.tuples(st.just("move_stock"), st.integers(0, 9), st.integers(1, 4), st.integers(1, 4)),
    st.tuples(st.just("del_stock"), st.integers(0, 9)),
    st.tuples(st.just("upd_price"), st.integers(0, 9), st.decimals(min_value=0, max_value=100, places=3)),
    st.tuples(st.just("del_price"), st.integers(0, 9)),
)
step = st.one_of(
    st.tuples(st.just("tx"), st.lists(op, min_size=1, max_size=5)),
    st.tuples(st.just("clock"), st.sampled_from([1_800.0, 3 * 3_600.0, DAY])),
)


@pytest.fixture(scope="module")
def harness(mariadb_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaHarness]:
    h = MariaHarness(
        mariadb_server, "dolibarr-mariadb.yaml", "dolibarr-mariadb.sql", tmp_path_factory.mktemp("mprop")
    )
    yield h
    h.close()


def _nth(h: MariaHarness, table: str, i: int) -> int | None:
    ids = [r["rowid"] for r in h._q(f"SELECT rowid FROM {table} ORDER BY rowid")]
    return ids[i % len(ids)] if ids else None


def run_op(h: MariaHarness, o: tuple[Any, ...]) -> None:
    kind = o[0]
    if kind == "product":
        _, pid, ref, tosell = o
        h.exec(
            "INSERT INTO llx_product (rowid, ref, tosell) VALUES (%s,%s,%s) "
            "ON DUPLICATE KEY UPDATE ref=VALUES(ref), tosell=VALUES(tosell)",
            (pid, ref, tosell),
        )
    elif kind == "warehouse":
        _, wid, ref, statut = o
        h.exec(
            "INSERT INTO llx_entrepot (rowid, ref, statut) VALUES (%s,%s,%s) "
            "ON DUPLICATE KEY UPDATE ref=VALUES(ref), statut=VALUES(statut)",
            (wid, ref, statut),
        )
    elif kind in ("del_product", "del_warehouse"):
        h.exec(f"DELETE FROM {'llx_product' if kind == 'del_product' else 'llx_entrepot'} WHERE rowid=%s",
               (o[1],))
    elif kind == "stock":
        _, pid, wid, q = o
        h.exec(
            "INSERT INTO llx_product_stock (fk_product, fk_entrepot, reel) VALUES (%s,%s,%s) "
            "ON DUPLICATE KEY UPDATE reel=VALUES(reel)",
            (pid, wid, q),
        )
    elif kind == "price":
        _, pid, level, at, amount = o
        h.exec(
            "INSERT INTO llx_product_price (fk_product, price_level, date_price, price) VALUES (%s,%s,%s,%s)",
            (pid, level, datetime.fromtimestamp(at, UTC).replace(tzinfo=None), amount),
        )
    else:
        table = "llx_product_stock" if "stock" in kind else "llx_product_price"
        id_ = _nth(h, table, o[1])
        if id_ is None:
            return
        if kind == "upd_stock":
            h.exec("UPDATE llx_product_stock SET reel=%s WHERE rowid=%s", (o[2], id_))
        elif kind == "move_stock":
            h.exec("UPDATE llx_product_stock SET fk_product=%s, fk_entrepot=%s WHERE rowid=%s",
                   (o[2], o[3], id_))
        elif kind == "upd_price":
            h.exec("UPDATE llx_product_price SET price=%s WHERE rowid=%s", (o[2], id_))
        else:
            h.exec(f"DELETE FROM {table} WHERE rowid=%s", (id_,))


@settings(
    max_examples=int(os.environ.get("PROP_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=1, max_size=12))
def test_binlog_stream_equals_snapshot_select_on_mariadb(harness: MariaHarness, steps: list[Any]) -> None:
    h = harness
    h.reset()
    # a sellable catalogue with stock and prices to start from, so the random steps change facts
    h.begin()
    for i, (ref, wh) in enumerate([("P-1", "WH-MAD"), ("P-2", "WH-BCN"), ("P-3", "WH-MIL")], 1):
        run_op(h, ("product", i, ref, 1))
        run_op(h, ("warehouse", i, wh, 1))
        for j in (1, 2, 3):
            run_op(h, ("stock", i, j, Decimal(4 * i + j) + Decimal("0.25")))
        for level in (1, 2):
            run_op(h, ("price", i, level, T0 - DAY, Decimal(10 * i + level) + Decimal("0.125")))
    h.commit()
    h.check()
    replay(h, steps, run_op)


def test_harness_sees_decimal_types_from_the_binlog(harness: MariaHarness) -> None:
    """The comparison is not vacuous: a price line and stock streamed from the binlog reach the outbox."""
    h = harness
    h.reset()
    h.begin()
    h.exec("INSERT INTO llx_product (rowid, ref) VALUES (1, 'P-1')")
    h.exec("INSERT INTO llx_entrepot (rowid, ref) VALUES (1, 'WH-MIL')")
    h.exec("INSERT INTO llx_product_stock (fk_product, fk_entrepot, reel) VALUES (1, 1, 7.5)")
    h.exec("INSERT INTO llx_product_price (fk_product, price_level, date_price, price) "
           "VALUES (1, 2, '2025-12-01', 12.345)")
    h.commit()
    h.check()
    assert h.actual() == {"stock": {("P-1", "milan"): 7},
                          "price": {("P-1", "WHOLESALE"): (Decimal("12.35"), "EUR", None)}}
