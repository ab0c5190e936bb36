"""PrestaShop sink against its emulator."""

from __future__ import annotations

from decimal import Decimal

import httpx

from cdc.facts import Fact, price_fact, stock_fact
from sinks.base import Outcome
from tests.sink_contract import check_contract, check_faults, check_secrets, shop

KIND = "prestashop"
AUTH = ("PRESTAEMULATORKEY0000000000000000", "")


def test_contract_5000_skus() -> None:
    check_contract(KIND)


def test_faults_deliver_newest_only() -> None:
    check_faults(KIND, n_skus=150)


def test_secrets_never_leak(caplog) -> None:  # type: ignore[no-untyped-def]
    check_secrets(KIND, caplog)


def test_emulator_rejects_wrong_shapes() -> None:
    with shop(KIND, skus=5) as (emu, _sink):
        api = emu.url + "/api"
        xml = "<prestashop><stock_available><id>1</id><quantity>5</quantity></stock_available></prestashop>"
        assert httpx.post(api + "/stock_availables", auth=AUTH, content=xml).status_code == 405
        r = httpx.patch(api + "/stock_availables/1", auth=AUTH, json={"quantity": 5})  # bodies are XML
        assert r.status_code == 400 and "<errors>" in r.text
        r = httpx.patch(api + "/stock_availables/2", auth=AUTH, content=xml)  # id must match the URL
        assert r.status_code == 400
        r = httpx.put(api + "/stock_availables/1", auth=AUTH, content=xml)  # PUT needs every field
        assert r.status_code == 400
        r = httpx.get(api + "/products", auth=AUTH, params={"filter[reference]": "SKU-000001"})  # no brackets
        assert r.status_code == 400
        r = httpx.get(
            api + "/products", auth=AUTH, params={"filter[reference]": "[nope]", "output_format": "JSON"}
        )
        assert r.json() == []
        assert emu.state()["stock"]["SKU-000000"]["madrid"] == 0


def test_a_recreated_product_is_retried_under_its_new_id() -> None:
    """The cached id of a SKU went away (product deleted and recreated): its facts are written one after
    the other (concurrency 1); the first finds the id stale and forgets it, the next ones still use the id
    read before (push used to raise KeyError), and the retry resolves the new id."""
    with shop(KIND, skus=10, sink_over={"concurrency": 1}) as (emu, sink):

        def facts(v: int) -> list[Fact]:
            return [price_fact("SKU-000001", "RETAIL", Decimal(v), "EUR", version=v + 1),
                    stock_fact("SKU-000001", "madrid", v, version=v)]

        assert [r.outcome for r in sink.push(facts(1))] == [Outcome.OK] * 2
        with emu.lock:
            products = emu.products  # type: ignore[attr-defined]
            products[99] = dict(products.pop(2), id=99)
            for row in emu.stock.values():  # type: ignore[attr-defined]
                if row["id_product"] == 2:
                    row["id_product"] = 99
        res = sink.push(facts(10))
        assert res[0].outcome is Outcome.RETRY and "stale id cache" in res[0].message, res
        assert res[1].outcome is not Outcome.PERMANENT, res
        assert [r.outcome for r in sink.push(facts(10))] == [Outcome.OK] * 2
        assert Decimal(emu.state()["prices"]["SKU-000001"]["regular"]) == 10
