"""Shop sink benchmark against the emulators.

1. Throughput at the platform's rate limit: facts/s achieved vs the budget's theoretical maximum
   (goal ≥ 90 %) and throttled answers seen (goal 0 in steady state).
   Shopify: cost bucket (default 2000 points, restore 100/s Standard; --quick uses 1000/s Plus), each stock
   call costs 10 + 1 per item in the emulator, so max facts(T) = (bucket + restore·T) / (260/250).
   WooCommerce / Magento / PrestaShop have no core limit; we put the emulator behind a requests/s limit
   (as a host/WAF would) and pace the sink at the same rate: max facts(T) = rate·T·items per request.
2. API calls per 10,000 changes over 1,000 hot SKUs, coalesced to the newest per key before pushing, vs
   the minimum ceil(distinct keys / batch size). Lookups (SKU → id, cached afterwards) are shown apart.

Run: .venv/bin/python bench/sinks.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdc.facts import Fact, stock_fact
from sinks.base import Outcome
from sinks.registry import make_sink
from sinks.registry_emulators import make_emulator
from tests.sink_contract import sink_config

LOC = ["main"]


def run(kind: str, n: int, settings: dict, sink_over: dict) -> tuple[float, dict, object, object]:
    emu = make_emulator(kind, skus=n * 2 if kind == "woocommerce" else n, locations=LOC, **settings)
    emu.start()
    sink = make_sink(sink_config(kind, emu, **sink_over))
    # simple products only for Woo (the first half of its catalogue): variations batch per parent
    facts = [stock_fact(f"SKU-{i:06d}", "main", 1000 + i, version=i) for i in range(n)]
    # warm the id caches first: lookups are a one-off cost, measured apart in part 2
    sink.resolve([f.sku for f in facts])  # a no-op where the shop is keyed by SKU (Magento)
    if kind == "shopify":  # let the lookups' points restore: the run starts from a full bucket
        time.sleep(settings["bucket"] / settings["restore_rate"] + 0.1)
    calls_before = emu.stats["calls"]
    pending: list[Fact] = facts
    t0 = time.monotonic()
    while pending:
        nxt = []
        for i in range(0, len(pending), sink.max_batch):
            batch = pending[i : i + sink.max_batch]
            nxt += [f for f, r in zip(batch, sink.push(batch), strict=True) if r.outcome is Outcome.RETRY]
        pending = nxt
    elapsed = time.monotonic() - t0
    stats = dict(emu.stats, calls=emu.stats["calls"] - calls_before)
    return elapsed, stats, emu, sink


def throughput(quick: bool) -> None:
    print("== throughput at the rate limit ==")
    print(f"{'platform':12} {'facts':>6} {'secs':>6} {'facts/s':>8} {'max/s':>8} {'%':>5} {'throttled':>9}")
    restore = 1000.0 if quick else 100.0
    cases = [
        ("shopify", 5000 if quick else 4000, {"bucket": 2000, "restore_rate": restore}, {"pace": True}),
        ("woocommerce", 2000 if quick else 6000, {"rate_limit": 10}, {"max_requests_per_second": 10}),
        ("magento", 1000 if quick else 3000, {"rate_limit": 20}, {"max_requests_per_second": 20}),
        ("prestashop", 500 if quick else 2000, {"rate_limit": 100}, {"max_requests_per_second": 100}),
    ]
    for kind, n, settings, over in cases:
        elapsed, stats, emu, sink = run(kind, n, settings, over)
        if kind == "shopify":
            per_fact = (10 + 250) / 250
            max_facts = (2000 + restore * elapsed) / per_fact
        else:
            per_req = {"woocommerce": 100, "magento": 20, "prestashop": 1}[kind]
            # steady state: the sink's pacer spaces requests evenly and leaves the host's burst unused
            max_facts = settings["rate_limit"] * elapsed * per_req
        max_rate = max_facts / elapsed
        pct = 100 * n / max_facts
        thr = stats["throttled"]
        print(f"{kind:12} {n:6d} {elapsed:6.1f} {n / elapsed:8.1f} {max_rate:8.1f} {pct:5.1f} {thr:9d}")
        sink.close()
        emu.stop()


def calls_per_10k(quick: bool) -> None:
    print("\n== API calls per 10,000 changes over 1,000 hot SKUs (coalesced to newest per key) ==")
    print(f"{'platform':12} {'distinct':>8} {'batch':>5} {'minimum':>7} {'writes':>6} {'lookups':>7}")
    rng = random.Random(1)
    changes = [(f"SKU-{rng.randrange(1000):06d}", v) for v in range(10_000)]
    newest: dict[str, int] = {}
    for sku, v in changes:
        newest[sku] = v
    for kind in ("shopify", "woocommerce", "magento", "prestashop"):
        settings = {"bucket": 10**6, "restore_rate": 10**6} if kind == "shopify" else {}
        emu = make_emulator(kind, skus=2000 if kind == "woocommerce" else 1000, locations=LOC, **settings)
        emu.start()
        sink = make_sink(sink_config(kind, emu))
        facts = [stock_fact(s, "main", v % 5000, version=v) for s, v in sorted(newest.items())]
        for i in range(0, len(facts), sink.max_batch):
            sink.push(facts[i : i + sink.max_batch])
        lookups = sink.stats.get("lookups", 0)  # type: ignore[attr-defined]
        writes = emu.stats["calls"] - lookups
        minimum = math.ceil(len(facts) / sink.max_batch) if kind != "prestashop" else len(facts)
        print(f"{kind:12} {len(facts):8d} {sink.max_batch:5d} {minimum:7d} {writes:6d} {lookups:7d}")
        sink.close()
        emu.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller runs, Shopify on the Plus restore rate")
    args = ap.parse_args()
    throughput(args.quick)
    calls_per_10k(args.quick)


if __name__ == "__main__":
    main()
