"""Property: after every committed ERP transaction (and every clock advance), the facts the streaming
path stored in the outbox equal the facts the transpiled snapshot SELECT computes on the ERP (PostgreSQL,
Odoo-like schema and config/odoo-postgres.yaml)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.mapping_harness import T0, PgHarness, replay

DAY = 86_400.0
codes = st.sampled_from(["A", "B", "C", None, ""])
qty = st.decimals(min_value=-5, max_value=30, places=2)
when = st.sampled_from([None, T0 - DAY, T0 + 3_600, T0 + 2 * DAY, T0 + 5 * DAY])

op = st.one_of(
    st.tuples(
        st.just("product"),
        st.integers(1, 4),
        codes,
        st.booleans(),
        st.booleans(),
        st.sampled_from([None, Decimal(0), Decimal("1.5"), Decimal(3)]),
    ),
    st.tuples(st.just("del_product"), st.integers(1, 4)),
    st.tuples(
        st.just("location"),
        st.integers(1, 4),
        st.sampled_from(["WH-MAD", "WH-BCN", "WH-MIL", "X", None]),
        st.sampled_from(["internal", "view"]),
    ),
    st.tuples(
        st.just("quant"),
        st.integers(1, 5),
        st.integers(1, 5),
        qty,
        st.one_of(st.none(), st.decimals(min_value=0, max_value=4, places=1)),
    ),
    st.tuples(st.just("upd_quant"), st.integers(0, 9), qty),
    st.tuples(st.just("del_quant"), st.integers(0, 9)),
    st.tuples(
        st.just("price"),
        st.integers(1, 5),
        st.integers(1, 3),
        st.one_of(st.none(), st.decimals(min_value=0, max_value=100, places=3)),
        when,
        when,
    ),
    st.tuples(st.just("upd_price"), st.integers(0, 9), st.decimals(min_value=1, max_value=100, places=3)),
    st.tuples(st.just("del_price"), st.integers(0, 9)),
    st.tuples(st.just("pricelist"), st.integers(1, 3), st.sampled_from(["EUR", "USD", None])),
)
step = st.one_of(
    st.tuples(st.just("tx"), st.lists(op, min_size=1, max_size=4)),
    st.tuples(st.just("clock"), st.sampled_from([1_800.0, 3 * 3_600.0, DAY, 3 * DAY])),
)


@pytest.fixture(scope="module")
def harness(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgHarness]:
    h = PgHarness(
        pg_server.create_database("mapping_prop"),
        "odoo-postgres.yaml",
        "odoo-postgres.sql",
        tmp_path_factory.mktemp("prop"),
    )
    yield h
    h.close()


def run_op(h: PgHarness, o: tuple[Any, ...]) -> None:
    kind = o[0]
    if kind == "product":
        _, pid, code, active, sale_ok, safety = o
        if h._q("SELECT 1 FROM product_product WHERE id=%s", (pid,)):
            h.update(
                "product_product",
                pid,
                default_code=code,
                active=active,
                sale_ok=sale_ok,
                x_safety_stock=safety,
            )
        else:
            h.insert(
                "product_product",
                {
                    "id": pid,
                    "default_code": code,
                    "active": active,
                    "sale_ok": sale_ok,
                    "x_safety_stock": safety,
                },
            )
    elif kind == "del_product":
        h.delete("product_product", o[1])
    elif kind == "location":
        _, lid, code, usage = o
        if h._q("SELECT 1 FROM stock_location WHERE id=%s", (lid,)):
            h.update("stock_location", lid, barcode=code, usage=usage)
        else:
            h.insert("stock_location", {"id": lid, "barcode": code, "usage": usage})
    elif kind == "quant":
        _, pid, lid, q, r = o
        h.insert(
            "stock_quant", {"product_id": pid, "location_id": lid, "quantity": q, "reserved_quantity": r}
        )
    elif kind in ("upd_quant", "del_quant", "upd_price", "del_price"):
        table = "stock_quant" if "quant" in kind else "product_pricelist_item"
        ids = [r["id"] for r in h._q(f"SELECT id FROM {table} ORDER BY id")]
        if not ids:
            return
        id_ = ids[o[1] % len(ids)]
        if kind == "upd_quant":
            h.update(table, id_, quantity=o[2])
        elif kind == "upd_price":
            h.update(table, id_, fixed_price=o[2])
        else:
            h.delete(table, id_)
    elif kind == "price":
        _, pid, plist, amount, start, end = o
        from datetime import UTC, datetime

        ts = [
            None if x is None else datetime.fromtimestamp(x, UTC).replace(tzinfo=None) for x in (start, end)
        ]
        h.insert(
            "product_pricelist_item",
            {
                "pricelist_id": plist,
                "product_id": pid,
                "fixed_price": amount,
                "date_start": ts[0],
                "date_end": ts[1],
            },
        )
    elif kind == "pricelist":
        _, lid, cur = o
        if h._q("SELECT 1 FROM product_pricelist WHERE id=%s", (lid,)):
            h.update("product_pricelist", lid, currency_code=cur)
        else:
            h.insert("product_pricelist", {"id": lid, "name": f"L{lid}", "currency_code": cur})


@settings(
    max_examples=int(__import__("os").environ.get("PROP_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=1, max_size=12))
def test_stream_equals_snapshot_select_on_postgres(harness: PgHarness, steps: list[Any]) -> None:
    h = harness
    h.reset()
    replay(h, steps, run_op)
