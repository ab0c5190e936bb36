"""Shared helpers for the shop sink tests: build an emulator + sink pair, generate facts, deliver them with
a simple retry loop (what the delivery worker does), and check the shop's final state and write order."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cdc.facts import Fact, FactKey, price_fact, stock_fact
from sinks.base import Outcome, PushResult, Sink
from sinks.config import (
    MagentoSinkConfig,
    PrestaShopSinkConfig,
    ShopifySinkConfig,
    WooCommerceSinkConfig,
)
from sinks.emulators.base import Emulator, Faults
from sinks.registry import make_sink
from sinks.registry_emulators import make_emulator

LOCATIONS = ["madrid", "milan", "paris"]
PRICE_FIELDS = {  # two ERP price lists per platform, onto the fields the platform has
    "shopify": {"RETAIL": "regular", "LIST": "compare_at"},
    "woocommerce": {"RETAIL": "regular", "PROMO": "sale"},
    "magento": {"RETAIL": "regular", "PROMO": "sale"},
    "prestashop": {"RETAIL": "regular"},
}
SECRETS = {
    "shopify": "shpat_emulator",
    "woocommerce": ("ck_emulator", "cs_emulator"),
    "magento": "magento-emulator-token",
    "prestashop": "PRESTAEMULATORKEY0000000000000000",
}


def sink_config(kind: str, emu: Emulator, **over: Any) -> Any:
    base: dict[str, Any] = {
        "name": f"{kind}-test",
        "url": emu.url,
        "price_lists": PRICE_FIELDS[kind],
        "timeout_seconds": 5.0,
    }
    names = (
        emu.location_names
        if kind in ("shopify", "woocommerce")
        else (emu.sources if kind == "magento" else list(emu.shops.values()))
    )  # type: ignore[attr-defined]
    if kind == "shopify":
        base |= {"access_token": SECRETS[kind], "locations": {n: emu.location_gid(n) for n in names}}  # type: ignore[attr-defined]
        model: Any = ShopifySinkConfig
    elif kind == "woocommerce":
        ck, cs = SECRETS[kind]
        base |= {"consumer_key": ck, "consumer_secret": cs, "locations": {n: emu.meta_key(n) for n in names}}  # type: ignore[attr-defined]
        model = WooCommerceSinkConfig
    elif kind == "magento":
        base |= {"token": SECRETS[kind], "locations": {n: n for n in names}}
        model = MagentoSinkConfig
    else:
        base |= {"webservice_key": SECRETS[kind], "locations": {n: emu.shop_id(n) for n in names}}  # type: ignore[attr-defined]
        model = PrestaShopSinkConfig
    return model(**(base | over))


@contextmanager
def shop(
    kind: str,
    skus: int = 100,
    faults: Faults | None = None,
    sink_over: dict[str, Any] | None = None,
    **settings: Any,
) -> Iterator[tuple[Emulator, Sink]]:
    if kind == "shopify":  # tests other than the pacing ones run on a roomy plan
        settings = {"bucket": 1_000_000, "restore_rate": 1_000_000} | settings
    emu = make_emulator(
        kind, skus=skus, locations=LOCATIONS, price_lists=list(PRICE_FIELDS[kind]), faults=faults, **settings
    )
    emu.start()
    sink = make_sink(sink_config(kind, emu, **(sink_over or {})))
    try:
        yield emu, sink
    finally:
        sink.close()
        emu.stop()


def make_facts(kind: str, n_skus: int, round_no: int = 1, version_base: int = 0) -> list[Fact]:
    """Every key of n_skus × locations × price lists, values growing with round_no (so write order can be
    checked from values alone). Ordered by SKU, as a coalescing outbox would hand them over."""
    facts: list[Fact] = []
    v = version_base
    for i in range(n_skus):
        sku = f"SKU-{i:06d}"
        for loc in LOCATIONS:
            v += 1
            facts.append(stock_fact(sku, loc, round_no * 100_000 + i, version=v))
        for plist in PRICE_FIELDS[kind]:
            v += 1
            facts.append(
                price_fact(
                    sku, plist, Decimal(round_no * 10_000 + i % 9973) + Decimal("0.25"), "EUR", version=v
                )
            )
    return facts


def push_all(sink: Sink, facts: list[Fact]) -> list[PushResult]:
    out: list[PushResult] = []
    for i in range(0, len(facts), sink.max_batch):
        batch = facts[i : i + sink.max_batch]
        res = sink.push(batch)
        assert [r.key for r in res] == [f.key for f in batch], "one result per fact, same order"
        out += res
    return out


@dataclass
class Delivery:
    results: dict[FactKey, PushResult]
    rounds: int
    retried: int


def deliver(
    sink: Sink,
    facts: list[Fact],
    newer: list[Fact] | None = None,
    max_rounds: int = 60,
    max_sleep: float = 0.2,
) -> Delivery:
    """The delivery worker in miniature: push, keep RETRY ones (newest per key), wait, push again. ``newer``
    facts arrive after the first pass and supersede pending older values."""
    pending = {f.key: f for f in facts}
    final: dict[FactKey, PushResult] = {}
    retried = 0
    for rnd in range(1, max_rounds + 1):
        batch = list(pending.values())
        pending = {}
        waits = []
        for r, f in zip(push_all(sink, batch), batch, strict=True):
            if r.outcome is Outcome.RETRY:
                pending[f.key] = f
                retried += 1
                waits.append(r.retry_after or 0.0)
            else:
                final[f.key] = r
        if newer is not None:
            for f in newer:
                if f.key not in pending or pending[f.key].version < f.version:
                    pending[f.key] = f
            newer = None
        if not pending:
            return Delivery(final, rnd, retried)
        time.sleep(min(max(waits, default=0.0), max_sleep))
    raise AssertionError(f"{len(pending)} facts still pending after {max_rounds} rounds")


def expected_state(
    kind: str, facts: list[Fact]
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, Decimal]]]:
    stock: dict[str, dict[str, int]] = {}
    prices: dict[str, dict[str, Decimal]] = {}
    newest: dict[FactKey, Fact] = {}
    for f in facts:
        if f.key not in newest or f.version > newest[f.key].version:
            newest[f.key] = f
    for f in newest.values():
        if f.kind == "stock":
            stock.setdefault(f.sku, {})[f.location] = f.available
        elif f.price_list in PRICE_FIELDS[kind]:
            prices.setdefault(f.sku, {})[PRICE_FIELDS[kind][f.price_list]] = f.amount
    return stock, prices


def assert_state(kind: str, emu: Emulator, facts: list[Fact]) -> None:
    stock, prices = expected_state(kind, facts)
    state = emu.state()
    wrong_stock = [
        (s, state["stock"][s], want)
        for s, want in stock.items()
        if {k: state["stock"][s].get(k) for k in want} != want
    ]
    assert not wrong_stock, f"{len(wrong_stock)} SKUs with wrong stock, e.g. {wrong_stock[:3]}"
    wrong_prices = [
        (s, state["prices"][s], want)
        for s, want in prices.items()
        if any(Decimal(state["prices"][s][k] or "NaN") != v for k, v in want.items())
    ]
    assert not wrong_prices, f"{len(wrong_prices)} SKUs with wrong prices, e.g. {wrong_prices[:3]}"


def assert_never_older(emu: Emulator) -> None:
    """Per key, the sequence of values the shop saw never goes back (values grow with the round)."""
    bad = {
        k: seq
        for k, seq in emu.history.items()  # type: ignore[attr-defined]
        if any(Decimal(str(b)) < Decimal(str(a)) for a, b in itertools.pairwise(seq))
    }
    assert not bad, f"older value written after a newer one: {list(bad.items())[:3]}"


FAULTS_10PCT = Faults(
    rate_429=0.03,
    rate_500=0.03,
    rate_timeout=0.02,
    rate_drop=0.01,
    rate_html=0.01,
    timeout_seconds=0.6,
    retry_after=0.05,
    seed=7,
)


# --- the checks every platform runs ---------------------------------------------------------------------


def check_contract(kind: str, n_skus: int = 5000) -> None:
    """All keys of n_skus × 3 locations × 2 price lists land exactly; max_batch slices; one bad SKU and an
    unmapped price list come back PERMANENT without holding up the rest."""
    with shop(kind, skus=n_skus) as (emu, sink):
        good = make_facts(kind, n_skus)
        facts = list(good)
        facts.insert(7, stock_fact("NO-SUCH-SKU", "madrid", 5, version=10**9))
        facts.insert(500, price_fact("SKU-000001", "UNMAPPED", Decimal(1), "EUR", version=10**9 + 1))
        results = push_all(sink, facts)
        by_key = {r.key: r for r in results}
        bad = by_key[FactKey("stock", "NO-SUCH-SKU", "madrid")]
        assert bad.outcome is Outcome.PERMANENT and "NO-SUCH-SKU" in bad.message
        assert by_key[FactKey("price", "SKU-000001", "UNMAPPED")].outcome is Outcome.PERMANENT
        others = [r for r in results if r.key.sku != "NO-SUCH-SKU" and r.key.scope != "UNMAPPED"]
        assert all(r.outcome is Outcome.OK for r in others), [
            r for r in others if r.outcome is not Outcome.OK
        ][:3]
        assert_state(kind, emu, good)
        snap = {f.key: f for f in sink.snapshot()}
        for f in facts[:300]:
            if f.key in snap:
                got = snap[f.key]
                assert (got.available == f.available) if f.kind == "stock" else (got.amount == f.amount), (
                    f,
                    got,
                )
        assert len(snap) >= len(facts) - 2


def check_faults(kind: str, n_skus: int = 300, **settings: Any) -> Delivery:
    """~10% injected 429/5xx/timeouts/drops/HTML pages: the retry loop delivers the newest value of every key
    and no key ever sees an older value after a newer one."""
    with shop(kind, skus=n_skus, faults=FAULTS_10PCT, sink_over={"timeout_seconds": 0.4}, **settings) as (
        emu,
        sink,
    ):
        old = make_facts(kind, n_skus, round_no=1)
        new = make_facts(kind, n_skus, round_no=2, version_base=len(old))
        delivery = deliver(sink, old, newer=new)
        assert emu.stats["injected"] > 0
        assert delivery.retried > 0
        assert all(r.outcome is Outcome.OK for r in delivery.results.values())
        assert_state(kind, emu, old + new)
        assert_never_older(emu)
        return delivery


def check_secrets(kind: str, caplog: Any) -> None:
    """A secret value never shows in repr/str/json of the config, in results or in logs, even on errors."""
    secret = "S3CR3T-value-xyz"
    caplog.set_level(logging.DEBUG)
    with shop(kind, skus=10) as (emu, _sink):
        fields = {
            "shopify": ["access_token"],
            "woocommerce": ["consumer_key", "consumer_secret"],
            "magento": ["token"],
            "prestashop": ["webservice_key"],
        }[kind]
        cfg = sink_config(kind, emu, **{f: secret for f in fields})
        for text in (repr(cfg), str(cfg), cfg.model_dump_json(), str(cfg.model_dump())):
            assert secret not in text
        sink = make_sink(cfg)
        try:
            results = sink.push(make_facts(kind, 3))  # wrong credentials: refused by the shop
            assert all(r.outcome is Outcome.RETRY for r in results), results
            emu.set_faults(down=True)
            results += sink.push(make_facts(kind, 3))
            emu.stop()
            results += sink.push(make_facts(kind, 3))  # connection refused
            for r in results:
                assert secret not in r.message and secret not in repr(r)
        finally:
            sink.close()
        assert secret not in caplog.text
