"""PrestaShop sink against its emulator."""

from __future__ import annotations

import httpx

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
