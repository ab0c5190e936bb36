"""Reconciler beyond the PostgreSQL stock case of test_reconcile.py: a MariaDB ERP (every seeded drift
found, none invented, in-flight left out, healing converges), prices through the Odoo-like mapping's
``facts_select`` (lookups, validity windows, price lists), and a WooCommerce shop listed through its
sink's ``snapshot()`` against the platform emulator; plus the split of facts_select's stock SELECT."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from cdc.facts import stock_fact
from cdc.mapping.snapshot_sql import facts_select
from erpsync.config import load_config
from erpsync.testing import wait_for
from reconciler.config import ReconcileConfig
from reconciler.erp_snapshot import snapshot_erp
from reconciler.run import reconcile
from sinks.emulators.webhook import WebhookEmulator
from sinks.registry import make_sink
from sinks.registry_emulators import make_emulator
from tests.erp import Erp, PostgresErp
from tests.test_e2e import Running, converge
from tests.test_reconcile import set_shop_stock

ROOT = Path(__file__).resolve().parent.parent


def _found(result: Any) -> set[tuple[str, str, str]]:
    with open(result.csv_path) as f:
        rows = [line.rstrip("\n").split(",") for line in f][1:]
    return {(r[1], r[3], r[4]) for r in rows}


@pytest.fixture
def shop() -> Any:
    emu = WebhookEmulator()
    emu.start()
    yield emu
    emu.stop()


# MariaDB ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("erp", ["mysql"], indirect=True)
def test_mariadb_drift_found_in_flight_left_out_and_healed(erp: Erp, shop: WebhookEmulator,
                                                           tmp_path: Path) -> None:
    erp.seed(20, random.Random(5))
    erp.execute("INSERT INTO stock_levels (sku, warehouse_code, on_hand) "
                "VALUES ('ONLY-RETURNS', 'WH-RET', 4)")
    path = erp.config(tmp_path, shop.endpoint)
    doc = yaml.safe_load(Path(path).read_text())
    doc["sinks"][0]["list_url"] = shop.url + "/_emulator/state"
    doc["reconcile"] = {"report_dir": "reports", "history": "hist.duckdb", "catch_up_seconds": 20}
    Path(path).write_text(yaml.safe_dump(doc))
    cfg = load_config(path)
    with Running(path):
        converge(erp, shop)
        expected = erp.expected()
        first = reconcile(cfg)
        assert first.exit_code == 0, _found(first)  # converged: nothing invented
        assert first.summaries[0]["erp_keys"] == 40 and first.summaries[0]["caught_up"] is True

        set_shop_stock(shop, "SKU-00001", "madrid", expected[("SKU-00001", "madrid")] + 7)
        set_shop_stock(shop, "SKU-00002", "milan", None)
        set_shop_stock(shop, "GHOST-1", "milan", 3)
        set_shop_stock(shop, "ONLY-RETURNS", "madrid", 2)
        shop.set_faults(down=True)  # SKU-00003's new stock stays pending in the outbox: in flight
        erp.execute("UPDATE stock_levels SET on_hand = on_hand + 50 WHERE sku='SKU-00003'")
        from cdc.outbox.store import connect as outbox_connect

        ob = outbox_connect(cfg.outbox_path(), durable=False)
        assert wait_for(lambda: ob.execute("SELECT count(*) FROM deliveries WHERE sku='SKU-00003' "
                                           "AND want > done").fetchone()[0] == 2, timeout=20)
        ob.close()
        result = reconcile(cfg)
        assert _found(result) == {("stock_mismatch", "SKU-00001", "madrid"),
                                  ("missing_in_shop", "SKU-00002", "milan"),
                                  ("not_in_erp", "GHOST-1", "milan"),
                                  ("not_mapped", "ONLY-RETURNS", "madrid")}
        assert result.summaries[0]["in_flight"] == 2 and result.exit_code == 3

        shop.set_faults(down=False)
        healed = reconcile(cfg, heal_drift=True, force=True)
        assert healed.summaries[0]["healed"] == 2
        assert wait_for(lambda: all(shop.stock().get(k) == v for k, v in erp.expected().items()), timeout=30)
        after = reconcile(cfg)
        assert _found(after) == {("not_in_erp", "GHOST-1", "milan"), ("not_mapped", "ONLY-RETURNS", "madrid")}
        assert not shop.regressions


# prices: the Odoo-like mapping on PostgreSQL ---------------------------------------------------------------
def _odoo(pg_dsn: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute((ROOT / "config/schemas/odoo-postgres.sql").read_text())
    rng = random.Random(11)
    cur.executemany("INSERT INTO stock_location (id, barcode, usage) VALUES (%s,%s,%s)",
                    [(1, "WH-MAD", "internal"), (2, "WH-BCN", "internal"), (3, "WH-MIL", "internal"),
                     (4, "PARTNER", "customer")])
    cur.executemany("INSERT INTO product_product (id, default_code, x_safety_stock) VALUES (%s,%s,%s)",
                    [(i, f"OD-{i:03d}", rng.choice([None, 1, 2])) for i in range(1, 31)])
    cur.executemany("INSERT INTO stock_quant (product_id, location_id, quantity, reserved_quantity) "
                    "VALUES (%s,%s,%s,%s)", [(p, loc, Decimal(rng.randint(0, 3000)) / 100, rng.randint(0, 2))
                                             for p in range(1, 31) for loc in (1, 2, 3, 4)])
    cur.executemany("INSERT INTO product_pricelist (id, name, currency_code) VALUES (%s,%s,%s)",
                    [(1, "Retail", "EUR"), (2, "Sale", "EUR")])
    cur.executemany("INSERT INTO product_pricelist_item (pricelist_id, product_id, fixed_price) "
                    "VALUES (%s,%s,%s)", [(pl, p, Decimal(rng.randint(100, 999_999)) / 10_000)
                                          for p in range(1, 31) for pl in (1, 2)])
    # validity windows: a newer price not valid yet and an expired one must not win
    cur.execute("INSERT INTO product_pricelist_item (pricelist_id, product_id, fixed_price, date_start) "
                "VALUES (1, 1, 1.00, now() + interval '30 days')")
    cur.execute("INSERT INTO product_pricelist_item (pricelist_id, product_id, fixed_price, date_start, "
                "date_end) VALUES (1, 2, 2.00, now() - interval '9 days', now() - interval '1 day')")
    return conn


def test_price_drift_through_facts_select(pg_dsn: str, shop: WebhookEmulator, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    conn = _odoo(pg_dsn)
    monkeypatch.setenv("ERP_DSN", pg_dsn)
    monkeypatch.setenv("SHOP_URL", shop.endpoint)
    monkeypatch.setenv("OUTBOX_PATH", str(tmp_path / "outbox.db"))
    cfg = load_config(ROOT / "config/odoo-postgres.yaml")
    cfg.ops.listen = "127.0.0.1:0"
    cfg.sinks[0].list_url = shop.url + "/_emulator/state"
    cfg.reconcile = ReconcileConfig(report_dir=str(tmp_path / "reports"), history=str(tmp_path / "h.duckdb"),
                                    catch_up_seconds=20)
    with conn.cursor() as cur:  # what the mapping says, computed by the ERP itself
        cur.execute(facts_select(cfg, "postgres")["price"])
        want = {(r[0], r[1]): Decimal(r[2]) for r in cur.fetchall()}
        cur.execute(facts_select(cfg, "postgres")["stock"])
        stock_keys = len(cur.fetchall())
    assert len(want) == 60 and want[("OD-001", "RETAIL")] != Decimal("1.00")

    # the stream fills the shop; the reconciler (its own split of the same SELECTs) then agrees with it
    from erpsync.pipeline import Pipeline

    with _Pipeline(Pipeline(cfg, drain_seconds=1)):
        assert wait_for(lambda: sum(k[0] == "price" for k in shop.values) == 60 and len(shop.stock()) >= 60,
                        timeout=60)
        first = reconcile(cfg)
        assert first.exit_code == 0, _found(first)
        s = first.summaries[0]
        assert s["erp_keys"] == 60 + stock_keys and s["shop_keys"] == 60 + len(shop.stock())

        with shop.lock:
            p3 = shop.values[("price", "OD-003", "RETAIL")]
            shop.values[("price", "OD-003", "RETAIL")] = {**p3, "amount": str(Decimal(p3["amount"]) + 1)}
            del shop.values[("price", "OD-004", "SALE")]
            p5 = shop.values[("price", "OD-005", "SALE")]
            shop.values[("price", "OD-005", "SALE")] = {**p5, "currency": "USD"}
            shop.values[("price", "GHOST-9", "RETAIL")] = {"kind": "price", "sku": "GHOST-9",
                                                            "price_list": "RETAIL", "amount": "9.99",
                                                            "currency": "EUR"}
        result = reconcile(cfg)
        assert _found(result) == {("price_mismatch", "OD-003", "RETAIL"),
                                  ("missing_in_shop", "OD-004", "SALE"),
                                  ("price_mismatch", "OD-005", "SALE"),
                                  ("not_in_erp", "GHOST-9", "RETAIL")}
        notes = {(i[3], i[4]): i for i in _csv(result)}
        assert notes[("OD-005", "SALE")][-1] == "currency differs"
        assert Decimal(notes[("OD-003", "RETAIL")][5]) == want[("OD-003", "RETAIL")]

        healed = reconcile(cfg, heal_drift=True, force=True)
        assert healed.summaries[0]["healed"] == 3

        def prices_back() -> bool:
            with shop.lock:
                got = {(k[1], k[2]): (Decimal(v["amount"]), v["currency"]) for k, v in shop.values.items()
                       if k[0] == "price"}
            return all(got.get(k) == (v, "EUR") for k, v in want.items())

        assert wait_for(prices_back, timeout=30)
        assert _found(reconcile(cfg)) == {("not_in_erp", "GHOST-9", "RETAIL")}
    conn.close()


def _csv(result: Any) -> list[list[str]]:
    import csv

    with open(result.csv_path, newline="") as f:
        return list(csv.reader(f))[1:]


class _Pipeline:
    def __init__(self, pipeline: Any) -> None:
        import threading

        self.pipeline, self.stop = pipeline, threading.Event()
        self.thread = threading.Thread(target=pipeline.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> _Pipeline:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


# a platform emulator's listing ----------------------------------------------------------------------------
def test_woocommerce_listing_through_its_sink(pg_dsn: str, tmp_path: Path) -> None:
    erp = PostgresErp(pg_dsn)
    erp.create_stock_table()
    skus = erp.seed(24, random.Random(3))
    emu = make_emulator("woocommerce", skus=[*skus, "GHOST-1"], locations=["madrid", "milan"])
    emu.start()
    try:
        path = erp.config(tmp_path, "http://127.0.0.1:1/unused")
        doc = yaml.safe_load(Path(path).read_text())
        locations = {n: emu.meta_key(n) for n in ("madrid", "milan")}  # type: ignore[attr-defined]
        doc["sinks"] = [{"name": "woo", "kind": "woocommerce", "url": emu.url, "kinds": ["stock"],
                         "consumer_key": "ck_emulator", "consumer_secret": "cs_emulator",
                         "locations": locations, "timeout_seconds": 5}]
        doc["reconcile"] = {"report_dir": "reports", "history": "hist.duckdb"}
        Path(path).write_text(yaml.safe_dump(doc))
        cfg = load_config(path)
        expected = erp.expected()
        sink = make_sink(cfg.sinks[0])  # the shop gets the ERP's values through the sink's own writes
        results = sink.push([stock_fact(s, loc, n) for (s, loc), n in expected.items()])
        sink.close()
        assert all(r.outcome.name == "OK" for r in results)
        first = reconcile(cfg)
        assert first.exit_code == 0, _found(first)
        assert first.summaries[0]["shop_keys"] == len(expected) == 48

        def product(sku: str) -> dict[str, Any]:
            return emu.products[emu.by_sku[sku]]  # type: ignore[attr-defined]

        with emu.lock:
            simple, variation = skus[0], skus[-1]  # the first half are simple products, the rest variations
            assert product(simple)["type"] == "simple" and product(variation)["type"] == "variation"
            product(simple)["stock_quantity"] += 4                                   # core stock differs
            meta = product(variation)["meta_data"]                                   # plugin meta removed
            product(variation)["meta_data"] = [m for m in meta if m["key"] != "_stock_milan"]
            product("GHOST-1").update(manage_stock=True, stock_quantity=5)          # stock the ERP lacks
        result = reconcile(cfg)
        assert _found(result) == {("stock_mismatch", simple, "madrid"),
                                  ("missing_in_shop", variation, "milan"),
                                  ("not_in_erp", "GHOST-1", "madrid")}
    finally:
        emu.stop()
        erp.close()


# the split of facts_select's stock SELECT -------------------------------------------------------------------
def test_split_stock_select_equals_the_whole_select_in_the_erp(pg_dsn: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-row part in PostgreSQL + GROUP BY in DuckDB == the whole SELECT run by PostgreSQL, including
    quantities the typed reader cannot hold (7 places: read again as text)."""
    conn = _odoo(pg_dsn)
    monkeypatch.setenv("ERP_DSN", pg_dsn)
    cfg = load_config(ROOT / "config/odoo-postgres.yaml")
    for fractional in (False, True):
        if fractional:
            with conn.cursor() as cur:
                cur.execute("ALTER TABLE stock_quant ALTER quantity TYPE numeric")
                cur.execute("UPDATE stock_quant SET quantity = quantity + 0.9999999 WHERE id % 3 = 0")
        with conn.cursor() as cur:
            cur.execute(facts_select(cfg, "postgres")["stock"])
            want = {(s, loc, Decimal(a)) for s, loc, a in cur.fetchall()}
        con = duckdb.connect()
        snap = snapshot_erp(conn, "postgres", con, cfg, progress=False)
        got = {(s, loc, Decimal(v).normalize() if v else Decimal(0)) for s, loc, v in
               con.execute("SELECT sku, scope, value FROM erp_facts WHERE kind = 'stock'").fetchall()}
        assert got == {(s, loc, a.normalize() if a else Decimal(0)) for s, loc, a in want}
        assert snap.rows == 120 + 60  # stock rows (all products on sale) + valid price lines
        con.close()
    with conn.cursor() as cur:  # an ERP without stock rows: no stock facts, not an error
        cur.execute("DELETE FROM stock_quant")
    con = duckdb.connect()
    snapshot_erp(conn, "postgres", con, cfg, progress=False)
    assert con.execute("SELECT kind, count(*) FROM erp_facts GROUP BY kind").fetchall() == [("price", 60)]
    conn.close()
