"""End to end on real databases: ERP SQL transactions → log → erpsync → shop emulator."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from erpsync.config import Config, load_config
from erpsync.pipeline import Pipeline
from erpsync.testing import wait_for
from sinks.emulators.webhook import WebhookEmulator
from tests.erp import Erp, PostgresErp


@pytest.fixture
def shop() -> Iterator[WebhookEmulator]:
    emu = WebhookEmulator()
    emu.start()
    yield emu
    emu.stop()


class Running:
    """The pipeline on a background thread, stopped (gracefully) at exit."""

    def __init__(self, config: str | Config, drain_seconds: float = 2) -> None:
        cfg = load_config(config) if isinstance(config, str) else config
        self.pipeline = Pipeline(cfg, drain_seconds=drain_seconds)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.pipeline.run(self.stop)
        except BaseException as e:
            self.error = e

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "pipeline did not stop"
        if self.error and not exc[0]:
            raise self.error


def converge(erp: Erp, shop: WebhookEmulator, timeout: float = 60) -> None:
    expected = erp.expected()
    ok = wait_for(lambda: shop.stock() == expected, timeout=timeout)
    if not ok:
        got = shop.stock()
        diff = {k: (v, got.get(k)) for k, v in expected.items() if got.get(k) != v}
        extra = set(got) - set(expected)
        pytest.fail(f"shop != ERP: {len(diff)} differ (expected, got), e.g. {list(diff.items())[:5]}; "
                    f"extra keys {list(extra)[:5]}")
    assert not shop.regressions, f"older values overwrote newer ones: {shop.regressions[:5]}"


def test_snapshot_then_10000_transactions_arrive_exactly(erp: Erp, shop: WebhookEmulator, tmp_path) -> None:
    rng = random.Random(3)
    skus = erp.seed(500, rng)
    cfg = erp.config(tmp_path, shop.endpoint)
    writes = [erp.random_transaction(rng, skus) for _ in range(10_000)]
    with Running(cfg):
        # the first 2,000 race the snapshot; the rest stream
        for stmts in writes:
            erp.transaction(stmts)
        # inserts and deletes too
        erp.execute("INSERT INTO stock_levels (sku, warehouse_code, on_hand) VALUES ('NEW-1', 'WH-MIL', 7)")
        erp.execute("DELETE FROM stock_levels WHERE sku=%s AND warehouse_code='WH-MAD'", (skus[0],))
        converge(erp, shop)
    assert len(shop.stock()) == 500 * 2 + 1


def test_rolled_back_transaction_never_reaches_the_shop(erp: Erp, shop: WebhookEmulator, tmp_path) -> None:
    erp.seed(5, random.Random(1))
    with Running(erp.config(tmp_path, shop.endpoint)):
        converge(erp, shop)
        before = shop.received
        erp.transaction([("UPDATE stock_levels SET on_hand = 999 WHERE sku='SKU-00001'", ())], rollback=True)
        erp.execute("UPDATE stock_levels SET on_hand = 5 WHERE sku='SKU-00002' AND warehouse_code='WH-MIL'")
        converge(erp, shop)
        assert all(v < 900 for v in shop.stock().values())
        assert shop.received - before == 1  # only the committed change


def test_update_of_other_column_of_toasted_row_zeroes_nothing(erp: Erp, shop: WebhookEmulator,
                                                              tmp_path) -> None:
    if erp.kind == "postgres":
        erp.execute("ALTER TABLE stock_levels ALTER COLUMN note SET STORAGE EXTERNAL")
    erp.seed(3, random.Random(2))
    big = "".join(random.Random(5).choice("abcdefghij") for _ in range(200_000))  # TOASTed, not compressible
    erp.execute("UPDATE stock_levels SET note=%s, on_hand = 30 WHERE sku='SKU-00001'", (big,))
    with Running(erp.config(tmp_path, shop.endpoint)):
        converge(erp, shop)
        erp.execute("UPDATE stock_levels SET updated_at = now() WHERE sku='SKU-00001'")
        erp.execute("UPDATE stock_levels SET on_hand = 31 WHERE sku='SKU-00001' AND warehouse_code='WH-MIL'")
        converge(erp, shop)
        assert shop.stock()[("SKU-00001", "madrid")] == 2 * 30 - 1 - sum(
            int(r[0]) for r in erp.query("SELECT reserved FROM stock_levels WHERE sku='SKU-00001' "
                                         "AND warehouse_code IN ('WH-MAD','WH-BCN')"))


def test_shop_outage_is_absorbed_by_the_outbox_not_the_erp(erp: Erp, shop: WebhookEmulator, tmp_path) -> None:
    rng = random.Random(4)
    skus = erp.seed(50, rng)
    with Running(erp.config(tmp_path, shop.endpoint)):
        converge(erp, shop)
        shop.set_faults(rate_500=1.0)  # every request fails with HTTP 500
        start = erp.confirmed_flush("erpsync") if isinstance(erp, PostgresErp) else None
        for _ in range(300):
            erp.transaction(erp.random_transaction(rng, skus))
        if isinstance(erp, PostgresErp):
            end_lsn = int(erp.query("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0])
            # the slot moves on while the shop is down: the ERP keeps no WAL for us
            assert wait_for(lambda: (erp.confirmed_flush("erpsync") or 0) >= end_lsn, timeout=30), (
                start, erp.confirmed_flush("erpsync"), end_lsn)
        assert shop.stock() != erp.expected()
        shop.set_faults(rate_500=0.0)
        converge(erp, shop, timeout=90)


def test_alter_table_add_column_mid_stream(erp: Erp, shop: WebhookEmulator, tmp_path) -> None:
    rng = random.Random(8)
    skus = erp.seed(30, rng)
    with Running(erp.config(tmp_path, shop.endpoint)):
        for _ in range(100):
            erp.transaction(erp.random_transaction(rng, skus))
        erp.execute("ALTER TABLE stock_levels ADD COLUMN lot_code VARCHAR(20)")
        erp.execute("UPDATE stock_levels SET lot_code = 'L1', on_hand = on_hand + 1 WHERE sku = %s",
                    (skus[0],))
        for _ in range(100):
            erp.transaction(erp.random_transaction(rng, skus))
        converge(erp, shop)
