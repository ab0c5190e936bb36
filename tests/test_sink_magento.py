"""Magento sink against its emulator."""

from __future__ import annotations

from decimal import Decimal

import httpx

from cdc.facts import price_fact, stock_fact
from sinks.base import Outcome
from tests.sink_contract import check_contract, check_faults, check_secrets, shop

KIND = "magento"
AUTH = {"Authorization": "Bearer magento-emulator-token"}


def test_contract_5000_skus() -> None:
    check_contract(KIND)


def test_faults_deliver_newest_only() -> None:
    check_faults(KIND)


def test_secrets_never_leak(caplog) -> None:  # type: ignore[no-untyped-def]
    check_secrets(KIND, caplog)


def test_emulator_rejects_wrong_shapes() -> None:
    with shop(KIND, skus=30) as (emu, _sink):
        api = emu.url + "/rest/all/V1"
        items = [
            {"sku": f"SKU-{i:06d}", "source_code": "madrid", "quantity": 1, "status": 1} for i in range(21)
        ]
        r = httpx.post(api + "/inventory/source-items", headers=AUTH, json={"sourceItems": items})
        assert r.status_code == 400 and "parameters" in r.json()  # over the 20-item sync list limit
        r = httpx.post(api + "/inventory/source-items", headers=AUTH, json={"items": items[:2]})
        assert r.status_code == 400 and r.json()["parameters"] == {"fieldName": "sourceItems"}
        r = httpx.post(
            api + "/products/special-price",
            headers=AUTH,
            json={"prices": [{"sku": "SKU-000001", "price": 3, "store_id": 0, "price_from": "tomorrow"}]},
        )
        assert r.status_code == 200 and r.json() and "price_from" in r.json()[0]["parameters"]
        assert emu.state()["stock"]["SKU-000001"]["madrid"] == 0


def test_bad_sku_in_all_or_nothing_stock_list_does_not_block_others() -> None:
    with shop(KIND, skus=30) as (emu, sink):
        facts = [stock_fact(f"SKU-{i:06d}", "milan", 10 + i) for i in range(10)]
        facts.insert(4, stock_fact("GHOST", "milan", 3))
        facts.append(price_fact("GHOST", "RETAIL", Decimal("2.50"), "EUR"))
        res = sink.push(facts)
        assert [r.outcome for r in res].count(Outcome.PERMANENT) == 2
        assert 'SKU "GHOST" does not exist' in res[4].message
        assert "GHOST" in res[-1].message
        assert emu.state()["stock"]["SKU-000009"]["milan"] == 19
