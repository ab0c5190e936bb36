"""Scale-out throughput: facts/s delivered from the NATS bus by 1, 2 and 4 `erpsync worker` processes.

A throwaway nats-server (JetStream) per round; the stream is filled first with ``--facts`` stock facts of
distinct keys over 8 partitions (so nothing coalesces), then the workers start and the clock runs until a
webhook emulator (no rate limit, in this process) has every fact. The figure is worker throughput (fetch,
KV version guard, HTTP push, KV put, ack), not the reader's. Prints facts/s per worker count and the ratio
4 workers / 1 worker. On a 2-core machine the workers, nats-server and the emulator share the cores.

    .venv/bin/python bench/scaleout.py                  # 40,000 facts
    .venv/bin/python bench/scaleout.py --facts 100000 --workers 1 2 4 8
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc.facts import stock_fact
from erpsync.config import load_config
from erpsync.delivery.nats_bus import NatsPublisher
from erpsync.testing.nats import ThrowawayNats
from sinks.emulators.webhook import WebhookEmulator

PARTITIONS = 8


def split(n: int, parts: int = PARTITIONS) -> list[str]:
    """Partitions for each of n workers: contiguous, as even as possible."""
    out, start = [], 0
    for i in range(n):
        size = parts // n + (1 if i < parts % n else 0)
        out.append(f"{start}-{start + size - 1}")
        start += size
    return out


def round_(workers: int, facts: int, batch: int) -> tuple[float, float]:
    shop = WebhookEmulator()
    shop.start()
    with ThrowawayNats() as nats, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "erpsync.yaml"
        path.write_text(yaml.safe_dump({
            "source": {"kind": "postgres", "dsn": "host=unused"},
            "stock": {"table": "t", "sku": "sku", "warehouse": "w", "quantity": "q", "locations": {"A": "a"}},
            "sinks": [{"name": "shop", "kind": "webhook", "url": shop.endpoint, "max_batch": batch,
                       "unsigned": True}],
            "bus": {"kind": "nats", "url": nats.url, "partitions": PARTITIONS}}))
        cfg = load_config(path)
        pub = NatsPublisher(cfg.bus, {"shop": ["stock"]})
        t0 = time.perf_counter()
        pub.publish([stock_fact(f"SKU-{i:07d}", "a", i % 100, version=i + 1) for i in range(facts)])
        publish_rate = facts / (time.perf_counter() - t0)
        pub.close()
        cli = [sys.executable, "-c", "from erpsync.cli import main; main()", "--log-level", "warning"]
        procs = [subprocess.Popen([*cli, "worker", "--config", str(path), "--sink", "shop", "--partitions",
                                   parts, "--name", f"w{i}", "--batch", str(batch)],
                                  stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / f"w{i}.log", "w"))  # noqa: SIM115
                 for i, parts in enumerate(split(workers))]
        t0 = time.perf_counter()
        try:
            while shop.received < facts:
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("a worker died: " + (Path(tmp) / "w0.log").read_text()[-2000:])
                if time.perf_counter() - t0 > 600:
                    raise RuntimeError(f"timeout: {shop.received}/{facts} delivered")
                time.sleep(0.02)
            rate = facts / (time.perf_counter() - t0)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
    shop.stop()
    return rate, publish_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--facts", type=int, default=40_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--batch", type=int, default=500, help="fetch size per partition = push batch")
    a = ap.parse_args()
    rates = {}
    for n in a.workers:
        rate, pub = round_(n, a.facts, a.batch)
        rates[n] = rate
        print(f"{n} worker(s): {rate:,.0f} facts/s delivered   (reader side: {pub:,.0f} facts/s published)",
              flush=True)
    if 1 in rates and 4 in rates:
        print(f"ratio 4 workers / 1 worker: {rates[4] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
