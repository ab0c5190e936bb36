"""Each mapping rule against a real PostgreSQL (Odoo-like schema, config/odoo-postgres.yaml): the streamed
facts are checked by value, and against the snapshot SELECT after every step."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from cdc.normalize.normalizer import normalizer_for
from erpsync.config import ConfigError, load_config_text
from erpsync.erpdb import SchemaError, check_mapping
from tests.mapping_harness import ROOT, T0, PgHarness


@pytest.fixture(scope="module")
def base(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgHarness]:
    h = PgHarness(
        pg_server.create_database("mapping_rules"),
        "odoo-postgres.yaml",
        "odoo-postgres.sql",
        tmp_path_factory.mktemp("rules"),
    )
    yield h
    h.close()


@pytest.fixture
def h(base: PgHarness) -> PgHarness:
    base.reset()
    base.now = T0
    tx(
        base,
        [
            ("stock_location", {"id": 1, "barcode": "WH-MAD"}),
            ("stock_location", {"id": 2, "barcode": "WH-BCN"}),
            ("stock_location", {"id": 3, "barcode": "WH-MIL"}),
            ("product_pricelist", {"id": 1, "name": "Retail", "currency_code": "EUR"}),
            ("product_product", {"id": 10, "default_code": "SKU-A"}),
        ],
    )
    return base


def tx(h: PgHarness, inserts: list[tuple[str, dict[str, Any]]]) -> None:
    h.begin()
    for table, row in inserts:
        h.insert(table, row)
    h.commit()
    h.check()


def step(h: PgHarness, fn: Any) -> None:
    h.begin()
    fn()
    h.commit()
    h.check()


def stock(h: PgHarness) -> dict[tuple[str, str], int]:
    return h.actual()["stock"]


def quant(pid: int, loc: int, q: str, r: str | None = None) -> tuple[str, dict[str, Any]]:
    return (
        "stock_quant",
        {
            "product_id": pid,
            "location_id": loc,
            "quantity": Decimal(q),
            "reserved_quantity": None if r is None else Decimal(r),
        },
    )


def test_sum_per_location_reserved_and_safety(h: PgHarness) -> None:
    tx(h, [quant(10, 1, "5", "1"), quant(10, 2, "3.5"), quant(10, 3, "2")])
    assert stock(h) == {("SKU-A", "madrid"): 6, ("SKU-A", "milan"): 2}  # floor(7.5) - 1 (madrid safety)
    step(h, lambda: h.update("product_product", 10, x_safety_stock=Decimal(2)))
    assert stock(h) == {("SKU-A", "madrid"): 4, ("SKU-A", "milan"): 0}


def test_sku_rename_retires_old_sku(h: PgHarness) -> None:
    tx(h, [quant(10, 1, "5")])
    step(h, lambda: h.update("product_product", 10, default_code="SKU-A2"))
    assert stock(h) == {("SKU-A", "madrid"): 0, ("SKU-A2", "madrid"): 4}


def test_deactivated_and_deleted_item_go_to_zero(h: PgHarness) -> None:
    tx(h, [quant(10, 3, "5"), ("product_product", {"id": 11, "default_code": "SKU-B"}), quant(11, 3, "7")])
    step(h, lambda: h.update("product_product", 10, active=False))
    step(h, lambda: h.delete("product_product", 11))
    assert stock(h) == {("SKU-A", "milan"): 0, ("SKU-B", "milan"): 0}
    step(h, lambda: h.update("product_product", 10, active=True))  # back on sale
    assert stock(h)[("SKU-A", "milan")] == 5


def test_not_sellable_filter(h: PgHarness) -> None:
    tx(h, [quant(10, 3, "5")])
    step(h, lambda: h.update("product_product", 10, sale_ok=False))
    assert stock(h) == {("SKU-A", "milan"): 0}


def test_warehouse_remap_moves_stock(h: PgHarness) -> None:
    tx(h, [quant(10, 3, "5")])
    step(h, lambda: h.update("stock_location", 3, barcode="WH-MAD"))
    assert stock(h) == {("SKU-A", "milan"): 0, ("SKU-A", "madrid"): 4}
    step(h, lambda: h.update("stock_location", 3, usage="view"))  # not an internal location any more
    assert stock(h) == {("SKU-A", "milan"): 0, ("SKU-A", "madrid"): 0}


def test_negative_stock_is_clamped_and_counted(h: PgHarness) -> None:
    tx(h, [quant(10, 3, "-4"), quant(10, 1, "1")])
    assert stock(h) == {("SKU-A", "milan"): 0, ("SKU-A", "madrid"): 0}
    assert h.norm.clamped == 1


def test_nulls(h: PgHarness) -> None:
    tx(
        h,
        [
            quant(10, 3, "4", None),
            ("stock_quant", {"product_id": None, "location_id": 3}),
            ("stock_quant", {"product_id": 10, "location_id": None, "quantity": 9}),
            ("product_product", {"id": 12, "default_code": None}),
            quant(12, 3, "3"),
        ],
    )
    assert stock(h) == {("SKU-A", "milan"): 4}


def dt(ts: float) -> datetime:
    return datetime.utcfromtimestamp(ts)


def test_price_validity_rollover_without_erp_change(h: PgHarness) -> None:
    line = {"pricelist_id": 1, "product_id": 10}
    tx(
        h,
        [
            ("product_pricelist_item", {**line, "fixed_price": Decimal("10.005")}),
            (
                "product_pricelist_item",
                {**line, "fixed_price": Decimal("8"), "date_start": dt(T0 + 3600), "date_end": dt(T0 + 7200)},
            ),
        ],
    )
    assert h.actual()["price"] == {("SKU-A", "RETAIL"): (Decimal("10.01"), "EUR", None)}  # half_up
    assert h.norm.next_timer() == T0 + 3600
    h.advance(3600)  # the sale starts: no ERP change, a timer fires
    h.check()
    assert h.actual()["price"][("SKU-A", "RETAIL")][0] == Decimal("8.00")
    h.advance(3600)
    h.check()
    assert h.actual()["price"][("SKU-A", "RETAIL")][0] == Decimal("10.01")
    assert h.norm.next_timer() is None


def test_price_follows_sku_rename_and_currency(h: PgHarness) -> None:
    tx(h, [("product_pricelist_item", {"pricelist_id": 1, "product_id": 10, "fixed_price": Decimal("5")})])
    step(h, lambda: h.update("product_product", 10, default_code="SKU-Z"))
    step(h, lambda: h.update("product_pricelist", 1, currency_code="USD"))
    assert h.actual()["price"][("SKU-Z", "RETAIL")] == (Decimal("5.00"), "USD", None)


def test_state_survives_restart(h: PgHarness) -> None:
    tx(h, [quant(10, 1, "5")])
    h.norm = normalizer_for(h.cfg, h.outbox.conn, clock=lambda: h.now)  # a new process on the same store
    step(h, lambda: h.update("product_product", 10, default_code="SKU-R"))
    assert stock(h) == {("SKU-A", "madrid"): 0, ("SKU-R", "madrid"): 4}


def test_check_mapping_against_live_schema(h: PgHarness) -> None:
    check_mapping(h.cfg, h.conn)
    bad = (
        (ROOT / "config" / "odoo-postgres.yaml")
        .read_text()
        .replace("${ERP_DSN}", "host=x")
        .replace("value: barcode", "value: bar_code")
    )
    with pytest.raises(SchemaError, match=r"lookups\.location_code\.value"):
        check_mapping(load_config_text(bad), h.conn)


def test_config_refuses_unknown_lookup_and_untranspilable_rule() -> None:
    text = (ROOT / "config" / "odoo-postgres.yaml").read_text().replace("${ERP_DSN}", "host=x")
    with pytest.raises(ConfigError, match=r"stock\.sku: lookup 'nope'"):
        load_config_text(
            text.replace(
                "sku: lookup(product_sku, product_id)\n  warehouse",
                "sku: lookup(nope, product_id)\n  warehouse",
                1,
            )
        )
    with pytest.raises(ConfigError, match=r"prices\.amount"):
        load_config_text(text.replace("amount: fixed_price", "amount: fixed_price::money"))
