"""WooCommerce sink against its emulator."""

from __future__ import annotations

from decimal import Decimal

import httpx

from cdc.facts import Fact, price_fact, stock_fact
from sinks.base import Outcome
from tests.sink_contract import check_contract, check_faults, check_secrets, shop

KIND = "woocommerce"
AUTH = ("ck_emulator", "cs_emulator")


def test_contract_5000_skus() -> None:
    check_contract(KIND)


def test_faults_deliver_newest_only() -> None:
    check_faults(KIND)


def test_secrets_never_leak(caplog) -> None:  # type: ignore[no-untyped-def]
    check_secrets(KIND, caplog)


def test_emulator_rejects_wrong_shapes() -> None:
    with shop(KIND, skus=10) as (emu, _sink):
        api = emu.url + "/wp-json/wc/v3"
        r = httpx.post(api + "/products/batch", auth=AUTH, json={"update": [{"id": 10}] * 101})
        assert r.status_code == 413 and r.json()["code"] == "woocommerce_rest_request_entity_too_large"
        r = httpx.get(api + "/products", auth=AUTH, params={"per_page": 101})
        assert r.status_code == 400 and r.json()["code"] == "rest_invalid_param"
        r = httpx.post(
            api + "/products/batch", auth=AUTH, json={"update": [{"id": 10, "regular_price": 12.5}]}
        )
        assert "error" in r.json()["update"][0]  # prices are strings in Woo
        r = httpx.get(api + "/products", params={"sku": "SKU-000001"})
        assert r.status_code == 401
        r = httpx.post(api + "/products/batch", auth=AUTH, json={"update": [{"id": 10, "stock_quantity": 3}]})
        assert emu.state()["stock"]["SKU-000000"]["madrid"] is None  # ignored without manage_stock


def test_rate_limit_paced_without_429() -> None:
    with shop(KIND, skus=200, rate_limit=50, sink_over={"max_requests_per_second": 50}) as (emu, sink):
        from tests.sink_contract import deliver, make_facts

        deliver(sink, make_facts(KIND, 200))
        assert emu.stats["throttled"] == 0


def test_a_recreated_product_is_retried_under_its_new_id() -> None:
    """The cached id of a SKU went away (product deleted and recreated): each of its facts is retried, and
    the retry resolves the new id (push used to raise KeyError on the SKU's second fact)."""
    with shop(KIND, skus=10) as (emu, sink):

        def facts(v: int) -> list[Fact]:
            return [stock_fact("SKU-000001", "madrid", v, version=v),
                    price_fact("SKU-000001", "RETAIL", Decimal(v), "EUR", version=v + 1)]

        assert [r.outcome for r in sink.push(facts(1))] == [Outcome.OK] * 2
        with emu.lock:
            products = emu.products  # type: ignore[attr-defined]
            p = products.pop(emu.by_sku["SKU-000001"])  # type: ignore[attr-defined]
            p["id"] = new = max(products) + 1
            products[new] = p
            emu.by_sku["SKU-000001"] = new  # type: ignore[attr-defined]
        res = sink.push(facts(10))
        assert [r.outcome for r in res] == [Outcome.RETRY] * 2
        assert all("stale id cache" in r.message and r.retry_after == 0.0 for r in res)
        assert [r.outcome for r in sink.push(facts(10))] == [Outcome.OK] * 2
        assert emu.state()["stock"]["SKU-000001"]["madrid"] == 10
