"""Both example configs on real databases, through the whole stream (log → normalizer → shop):
after random ERP transactions (stock moves, SKU renames, products taken off sale, warehouse remaps, new
prices) the shop equals what the transpiled snapshot SELECT computes on the ERP."""

from __future__ import annotations

import os
import random
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cdc.mapping.snapshot_sql import facts_select
from erpsync.config import load_config
from erpsync.testing import wait_for
from sinks.emulators.webhook import WebhookEmulator
from tests.test_e2e import Running

ROOT = Path(__file__).resolve().parent.parent


def assert_shop_equals_snapshot_select(shop: WebhookEmulator, cfg: Any, cur: Any, dialect: str) -> None:
    """The shop holds what the mapping's transpiled snapshot SELECT computes on the ERP right now; keys
    the snapshot no longer has (renamed, off sale) must have been set to 0."""
    selects = facts_select(cfg, dialect)
    cur.execute(selects["stock"])
    want_stock = {(s, loc): int(a) for s, loc, a in cur.fetchall()}
    cur.execute(selects["price"])
    want_price = {(r[0], r[1]): Decimal(str(r[2])) for r in cur.fetchall()}

    def shop_matches() -> bool:
        got = shop.stock()
        if any(got.get(k) != v for k, v in want_stock.items()):
            return False
        if any(v != 0 for k, v in got.items() if k not in want_stock):
            return False
        prices = {(k[1], k[2]): Decimal(v["amount"]) for k, v in shop.values.items() if k[0] == "price"}
        return all(prices.get(k) == v for k, v in want_price.items())

    assert wait_for(shop_matches, timeout=60), "shop != snapshot SELECT on the ERP"


def test_dolibarr_example_streams_what_the_snapshot_select_says(mariadb_server, mariadb_db, tmp_path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    conn = mariadb_server.connect(mariadb_db)
    cur = conn.cursor()
    schema = (ROOT / "config/schemas/dolibarr-mariadb.sql").read_text()
    body = "\n".join(ln for ln in schema.splitlines() if not ln.lstrip().startswith("--"))
    for stmt in body.split(";"):
        if stmt.strip():
            cur.execute(stmt)
    rng = random.Random(7)
    cur.executemany("INSERT INTO llx_entrepot (ref) VALUES (%s)", [("WH-MAD",), ("WH-BCN",), ("WH-MIL",),
                                                                   ("WH-OLD",)])
    cur.executemany("INSERT INTO llx_product (ref, tosell) VALUES (%s, 1)",
                    [(f"P-{i:03d}",) for i in range(60)])
    cur.executemany("INSERT INTO llx_product_stock (fk_product, fk_entrepot, reel) VALUES (%s,%s,%s)",
                    [(p, w, rng.randint(0, 30)) for p in range(1, 61) for w in range(1, 5)])
    t0 = datetime(2026, 1, 1)
    cur.executemany("INSERT INTO llx_product_price (fk_product, price_level, date_price, price) "
                    "VALUES (%s,%s,%s,%s)",
                    [(p, lvl, t0, Decimal(rng.randint(100, 9999)) / 100)
                     for p in range(1, 61) for lvl in (1, 2)])
    shop = WebhookEmulator()
    shop.start()
    monkeypatch.setenv("ERP_PORT", str(mariadb_server.port))
    monkeypatch.setenv("ERP_USER", "root")
    monkeypatch.setenv("ERP_PASSWORD", "")
    monkeypatch.setenv("ERP_DATABASE", mariadb_db)
    monkeypatch.setenv("SHOP_URL", shop.endpoint)
    monkeypatch.setenv("OUTBOX_PATH", str(tmp_path / "outbox.db"))
    cfg = load_config(ROOT / "config/dolibarr-mariadb.yaml")
    cfg.ops.listen = "127.0.0.1:0"
    try:
        with Running(cfg, drain_seconds=1) as running:
            for n in range(300):
                cur.execute("BEGIN")
                r = rng.random()
                p = rng.randint(1, 60)
                if r < 0.6:
                    cur.execute("UPDATE llx_product_stock SET reel = reel + %s "
                                "WHERE fk_product=%s AND fk_entrepot=%s",
                                (rng.randint(-5, 10), p, rng.randint(1, 4)))
                elif r < 0.7:
                    # SKU rename
                    cur.execute("UPDATE llx_product SET ref = %s WHERE rowid = %s", (f"R-{n}-{p}", p))
                elif r < 0.8:
                    cur.execute("UPDATE llx_product SET tosell = %s WHERE rowid = %s", (rng.randint(0, 1), p))
                elif r < 0.85:
                    cur.execute("UPDATE llx_entrepot SET ref = %s WHERE rowid = 4",
                                (rng.choice(["WH-OLD", "WH-MIL"]),))  # warehouse remapped to a shop location
                else:
                    cur.execute("INSERT INTO llx_product_price (fk_product, price_level, date_price, price) "
                                "VALUES (%s,%s,%s,%s)", (p, rng.randint(1, 2), t0 + timedelta(days=n + 1),
                                                         Decimal(rng.randint(100, 9999)) / 100))
                cur.execute("COMMIT")
            assert_shop_equals_snapshot_select(shop, cfg, cur, "mysql")
            assert not shop.regressions
            assert running.pipeline.stats.changes > 300
    finally:
        shop.stop()
        conn.close()
        os.environ.pop("ERP_PASSWORD", None)


def test_odoo_example_streams_what_the_snapshot_select_says(pg_dsn, tmp_path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The Odoo-like example on PostgreSQL, through logical replication (pgoutput), not hand-built events."""
    import psycopg2

    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute((ROOT / "config/schemas/odoo-postgres.sql").read_text())
    rng = random.Random(9)
    cur.executemany("INSERT INTO stock_location (id, barcode, usage) VALUES (%s,%s,%s)",
                    [(1, "WH-MAD", "internal"), (2, "WH-BCN", "internal"), (3, "WH-MIL", "internal"),
                     (4, "PARTNER", "customer")])
    cur.executemany("INSERT INTO product_product (id, default_code, x_safety_stock) VALUES (%s,%s,%s)",
                    [(i, f"OD-{i:03d}", rng.choice([None, 1, 2])) for i in range(1, 61)])
    cur.executemany("INSERT INTO stock_quant (product_id, location_id, quantity, reserved_quantity) "
                    "VALUES (%s,%s,%s,%s)",
                    [(p, loc, rng.randint(0, 30), rng.randint(0, 2))
                     for p in range(1, 61) for loc in (1, 2, 3, 4)])
    cur.executemany("INSERT INTO product_pricelist (id, name, currency_code) VALUES (%s,%s,%s)",
                    [(1, "Retail", "EUR"), (2, "Sale", "EUR")])
    cur.executemany("INSERT INTO product_pricelist_item (pricelist_id, product_id, fixed_price) "
                    "VALUES (%s,%s,%s)", [(pl, p, Decimal(rng.randint(100, 9999)) / 100)
                                          for p in range(1, 61) for pl in (1, 2)])
    shop = WebhookEmulator()
    shop.start()
    monkeypatch.setenv("ERP_DSN", pg_dsn)
    monkeypatch.setenv("SHOP_URL", shop.endpoint)
    monkeypatch.setenv("OUTBOX_PATH", str(tmp_path / "outbox.db"))
    cfg = load_config(ROOT / "config/odoo-postgres.yaml")
    cfg.ops.listen = "127.0.0.1:0"
    try:
        with Running(cfg, drain_seconds=1):
            for n in range(300):
                cur.execute("BEGIN")
                r = rng.random()
                p = rng.randint(1, 60)
                if r < 0.55:
                    cur.execute("UPDATE stock_quant SET quantity = quantity + %s "
                                "WHERE product_id=%s AND location_id=%s",
                                (rng.randint(-5, 10), p, rng.randint(1, 4)))
                elif r < 0.65:
                    cur.execute("UPDATE product_product SET default_code = %s WHERE id = %s",
                                (f"RN-{n}-{p}", p))
                elif r < 0.75:
                    cur.execute("UPDATE product_product SET active = %s, sale_ok = %s WHERE id = %s",
                                (rng.random() < 0.7, rng.random() < 0.8, p))
                elif r < 0.8:
                    cur.execute("UPDATE stock_location SET usage = %s WHERE id = 3",
                                (rng.choice(["internal", "view"]),))
                elif r < 0.9:
                    cur.execute("UPDATE stock_quant SET reserved_quantity = %s WHERE product_id=%s",
                                (rng.randint(0, 4), p))
                else:
                    cur.execute("INSERT INTO product_pricelist_item "
                                "(pricelist_id, product_id, fixed_price, date_start) VALUES (%s,%s,%s,%s)",
                                (rng.randint(1, 2), p, Decimal(rng.randint(100, 9999)) / 100,
                                 datetime(2026, 1, 1) + timedelta(days=n)))
                cur.execute("COMMIT")
            assert_shop_equals_snapshot_select(shop, cfg, cur, "postgres")
            assert not shop.regressions
    finally:
        shop.stop()
        conn.close()
