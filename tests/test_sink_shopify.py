"""Shopify sink against its GraphQL emulator."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest

from cdc.facts import Fact, price_fact, stock_fact
from sinks.base import Outcome
from tests.sink_contract import (
    assert_state,
    check_contract,
    check_faults,
    check_secrets,
    deliver,
    make_facts,
    push_all,
    shop,
)

KIND = "shopify"
HDR = {"X-Shopify-Access-Token": "shpat_emulator"}


def test_contract_5000_skus() -> None:
    check_contract(KIND)


def test_faults_deliver_newest_only() -> None:
    check_faults(KIND)


def test_secrets_never_leak(caplog) -> None:  # type: ignore[no-untyped-def]
    check_secrets(KIND, caplog)


@pytest.mark.parametrize("version", ["2025-07", "2026-01", "2026-04"])
def test_api_versions_and_compare_quantity(version: str) -> None:
    with shop(KIND, skus=60, sink_over={"api_version": version, "compare_quantity": "last_known"}) as (
        emu,
        sink,
    ):
        facts = make_facts(KIND, 60)
        assert all(r.outcome is Outcome.OK for r in push_all(sink, facts))
        # the shop moves under us (an order): compare-and-set notices, the sink re-reads and sets again
        with emu.lock:
            emu.levels[(5000, 1)]["available"] -= 1  # type: ignore[attr-defined]
        res = sink.push([stock_fact("SKU-000000", "madrid", 4242)])
        assert res[0].outcome is Outcome.OK, res
        assert emu.state()["stock"]["SKU-000000"]["madrid"] == 4242


def test_emulator_rejects_wrong_shapes() -> None:
    with shop(KIND, skus=5) as (emu, _sink):
        url = emu.url + "/admin/api/2025-07/graphql.json"

        def gql(query: str, variables: dict | None = None, version: str = "2025-07") -> dict:
            r = httpx.post(
                url.replace("2025-07", version),
                headers=HDR,
                json={"query": query, "variables": variables or {}},
            )
            assert r.status_code == 200  # GraphQL errors come with HTTP 200
            return r.json()

        m = (
            "mutation S($input: InventorySetQuantitiesInput!) { inventorySetQuantities(input: $input) "
            "{ userErrors { code field message } } }"
        )
        q = {
            "inventoryItemId": "gid://shopify/InventoryItem/5000",
            "locationId": "gid://shopify/Location/1",
            "quantity": 3,
        }
        body = gql(m, {"input": {"name": "available", "quantities": [q]}})  # reason missing
        assert body["errors"][0]["extensions"]["code"] == "INVALID_VARIABLE"
        body = gql(m, {"input": {"name": "available", "reason": "correction", "quantities": [q]}})
        assert body["data"]["inventorySetQuantities"]["userErrors"][0]["code"] == "COMPARE_QUANTITY_REQUIRED"
        body = gql(
            m,
            {
                "input": {
                    "name": "available",
                    "reason": "correction",
                    "quantities": [{**q, "changeFromQuantity": 0}],
                }
            },
        )
        assert body["errors"][0]["extensions"]["code"] == "INVALID_VARIABLE"  # not a 2025-07 field
        body = gql(
            m,
            {
                "input": {
                    "name": "available",
                    "reason": "correction",
                    "quantities": [{**q, "changeFromQuantity": 0}],
                }
            },
            "2026-04",
        )
        assert "idempotent" in body["errors"][0]["message"]
        body = gql("{ productVariants(first: 5) { nodes { id skuu } } }")
        assert body["errors"][0]["extensions"]["code"] == "undefinedField"
        body = gql("mutation { productVariantsBulkUpdate(variants: []) { userErrors { message } } }")
        assert body["errors"][0]["extensions"]["code"] == "missingRequiredArguments"
        body = gql("{ productVariants(first: 5) { nodes { id } }")
        assert body["errors"][0]["extensions"]["code"] == "parseError"
        assert "throttleStatus" in body["extensions"]["cost"]
        assert emu.state()["stock"]["SKU-000000"]["madrid"] == 0


def test_pacing_avoids_throttling_and_unpaced_recovers() -> None:
    # a tight plan: bucket 300 points restoring 600/s; each stock call costs 10 + 1 per item
    with shop(KIND, skus=400, bucket=300, restore_rate=600) as (emu, sink):
        facts = make_facts(KIND, 400)
        stock = [f for f in facts if f.kind == "stock"]
        delivery = deliver(sink, stock)
        assert delivery.retried == 0
        assert emu.stats["throttled"] == 0 and sink.stats["paced_seconds"] > 0  # type: ignore[attr-defined]
        assert_state(KIND, emu, stock)
    with shop(KIND, skus=400, bucket=300, restore_rate=600, sink_over={"pace": False}) as (emu, sink):
        stock = [f for f in make_facts(KIND, 400) if f.kind == "stock"]
        deliver(sink, stock)
        assert emu.stats["throttled"] > 0  # without the mirror bucket the shop throttles us...
        assert_state(KIND, emu, stock)  # ...and the THROTTLED handling still gets everything through


@pytest.mark.parametrize("mode", ["bulk", "pages"])
def test_snapshot_modes(mode: str) -> None:
    with shop(KIND, skus=120, sink_over={"snapshot_mode": mode, "bulk_poll_seconds": 0.05}) as (_emu, sink):
        facts = make_facts(KIND, 120)
        push_all(sink, facts)
        snap = {f.key: f for f in sink.snapshot()}
        for f in facts:
            got = snap[f.key]
            assert got.available == f.available if f.kind == "stock" else got.amount == Decimal(f.amount)


def _recreate(emu: Any, sku: str, new: int) -> None:
    """Delete the SKU's variant and create it again under new variant, product and inventory item ids."""
    with emu.lock:
        v = emu.variants.pop(emu.by_sku[sku])
        emu.variants[new] = dict(v, item=new, product=new)
        emu.by_sku[sku] = new
        emu.item_to_variant = {x["item"]: k for k, x in emu.variants.items()}
        for loc in emu.locations:
            emu.levels[(new, loc)] = {"available": 0, "on_hand": 0}


@pytest.mark.parametrize("kinds", [("stock", "price"), ("price",)])
def test_a_recreated_variant_is_retried_under_its_new_ids(kinds: tuple[str, ...]) -> None:
    """The cached ids of a SKU went away (variant deleted and recreated): the first answer naming them
    forgets them, and every fact of that SKU in the push is retried (push used to raise KeyError on the
    prices after the stock, and to dead-letter the SKU's other locations); the retry resolves the new ids."""
    with shop(KIND, skus=10) as (emu, sink):

        def facts(v: int) -> list[Fact]:
            stock = [stock_fact("SKU-000001", loc, v, version=v) for loc in ("madrid", "milan", "paris")]
            prices = [price_fact("SKU-000001", "RETAIL", Decimal(v), "EUR", version=v + 1),
                      price_fact("SKU-000001", "LIST", Decimal(v + 1), "EUR", version=v + 2)]
            return (stock if "stock" in kinds else []) + prices

        assert {r.outcome for r in sink.push(facts(1))} == {Outcome.OK}
        _recreate(emu, "SKU-000001", 9999)
        res = sink.push(facts(10))
        assert {r.outcome for r in res} == {Outcome.RETRY}, res
        assert all("stale id cache" in r.message and r.retry_after == 0.0 for r in res)
        assert {r.outcome for r in sink.push(facts(10))} == {Outcome.OK}
        assert emu.state()["prices"]["SKU-000001"]["regular"] == "10.00"
