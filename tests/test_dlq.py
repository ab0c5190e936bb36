"""Facts a shop refuses land in the dead-letter table without blocking other SKUs; `erpsync dlq` lists,
retries and drops them."""

from __future__ import annotations

import json
import random

from click.testing import CliRunner

from erpsync.cli import main
from erpsync.testing import wait_for
from sinks.emulators.webhook import WebhookEmulator
from tests.erp import PostgresErp
from tests.test_e2e import Running


def dlq(config: str, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["--log-format", "text", "dlq", *args, "--config", config])
    # stdout only on success: a pipeline running in this process logs to the captured stderr meanwhile
    return r.exit_code, (r.stdout if r.exit_code == 0 else r.stderr)


def test_unknown_skus_are_dead_lettered_then_retried_or_dropped(pg_dsn, tmp_path) -> None:
    erp = PostgresErp(pg_dsn)
    erp.create_stock_table()
    skus = erp.seed(20, random.Random(3))
    bad = {skus[3], skus[7]}
    shop = WebhookEmulator(known_skus=set(skus) - bad)  # the shop does not know two of the SKUs
    shop.start()
    config = erp.config(tmp_path, shop.endpoint)
    try:
        with Running(config):
            good = {k: v for k, v in erp.expected().items() if k[0] not in bad}
            assert wait_for(lambda: shop.stock() == good, timeout=30)  # the others are not blocked
            code, out = dlq(config, "list", "--json")
            assert code == 0
            assert wait_for(lambda: len(json.loads(dlq(config, "list", "--json")[1])) == 4, timeout=10)
            rows = json.loads(dlq(config, "list", "--json")[1])
            assert {r["sku"] for r in rows} == bad and all("unknown sku" in r["error"] for r in rows)
            code, out = dlq(config, "list")
            assert code == 0 and skus[3] in out
            # the merchant creates one of the products in the shop: retry delivers it
            assert shop.known_skus is not None
            shop.known_skus.add(skus[3])
            code, out = dlq(config, "retry", "--sku", skus[3])
            assert code == 0 and "2 dead letter(s) queued again" in out
            assert wait_for(lambda: (skus[3], "madrid") in shop.stock(), timeout=30)
            code, out = dlq(config, "drop", "--sku", skus[7])
            assert code == 0 and "2 dead letter(s) dropped" in out
            assert json.loads(dlq(config, "list", "--json")[1]) == []
    finally:
        shop.stop()
        erp.close()


def test_dlq_without_an_outbox_says_so(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("source: {kind: postgres, dsn: 'host=x'}\n"
                 "stock: {table: t, sku: s, warehouse: w, quantity: q, locations: {a: b}}\n"
                 f"outbox: {{path: {tmp_path / 'none.db'}}}\n")
    code, out = dlq(str(p), "list")
    assert code == 1 and "does not exist" in out


def test_a_shop_outage_longer_than_max_attempts_dead_letters_nothing(pg_dsn, tmp_path) -> None:
    import yaml

    erp = PostgresErp(pg_dsn)
    erp.create_stock_table()
    skus = erp.seed(10, random.Random(4))
    shop = WebhookEmulator()
    shop.start()
    config = erp.config(tmp_path, shop.endpoint)
    from pathlib import Path

    cfg = yaml.safe_load(Path(config).read_text())
    cfg["sinks"][0]["max_attempts"] = 2  # the outage below spends far more tries than that
    Path(config).write_text(yaml.safe_dump(cfg))
    try:
        with Running(config):
            assert wait_for(lambda: shop.stock() == erp.expected(), timeout=30)
            shop.set_faults(down=True, retry_after=0.2)
            for sku in skus:
                erp.execute("UPDATE stock_levels SET on_hand = on_hand + 5 WHERE sku=%s", (sku,))
            import time

            time.sleep(5)
            shop.set_faults(down=False)
            assert wait_for(lambda: shop.stock() == erp.expected(), timeout=90)
            assert json.loads(dlq(config, "list", "--json")[1]) == []
    finally:
        shop.stop()
        erp.close()
