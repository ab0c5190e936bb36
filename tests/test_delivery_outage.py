"""A down shop is probed, not hammered: while every push fails, the delivery thread pauses between batches
(so a long outage costs the ERP side neither CPU nor the outbox's write lock), keeps every fact queued, and
delivers them all once the shop answers again."""

from __future__ import annotations

import time
from pathlib import Path

from cdc.facts import stock_fact
from cdc.outbox.store import Outbox
from cdc.outbox.views import dlq_counts, pending_counts
from erpsync.delivery.embedded import Deliverer
from erpsync.delivery.policy import DOWN_PAUSE_MAX
from erpsync.testing import wait_for
from sinks.config import WebhookSinkConfig
from sinks.emulators.webhook import WebhookEmulator
from sinks.webhook import WebhookSink


def test_down_shop_is_probed_with_growing_pauses_then_gets_everything(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path, {"shop": ["stock"]})
    ob.begin()
    ob.write_facts([stock_fact(f"SKU-{i:05d}", "madrid", i % 17) for i in range(3000)])
    ob.commit()
    shop = WebhookEmulator()
    shop.start()
    shop.set_faults(down=True, retry_after=0)  # a 503 that does not say how long to wait
    sink = WebhookSink(WebhookSinkConfig(name="shop", url=shop.endpoint, batch_size=10, max_attempts=2))
    d = Deliverer(sink, path, max_attempts=2)
    d.start()
    try:
        time.sleep(4)
        probes = shop.stats["requests"]
        # without the pause the thread would cycle through all 300 batches in these 4 s
        assert 3 <= probes <= 12, probes
        assert d.down_batches == probes
        assert dlq_counts(ob.conn) == {}  # an outage dead-letters nothing, whatever max_attempts says
        shop.set_faults(down=False)
        # the next probe comes within the capped pause; then the backlog drains at full speed
        assert wait_for(lambda: len(shop.stock()) == 3000, timeout=DOWN_PAUSE_MAX + 30)
        assert d.down_batches == 0
        assert wait_for(lambda: not any(pending_counts(ob.conn).values()), timeout=10)
        assert dlq_counts(ob.conn) == {}
    finally:
        d.stop()
        d.join(10)
        shop.stop()
        ob.close()
