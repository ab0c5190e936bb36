"""WooCommerce sink against its emulator."""

from __future__ import annotations

import httpx

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
