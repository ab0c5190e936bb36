"""The Dolibarr-like example on a real MariaDB, through the whole stream (binlog → normalizer → shop):
after random ERP transactions (stock moves, SKU renames, products taken off sale, warehouse remaps, new
prices) the shop equals what the transpiled snapshot SELECT computes on the ERP."""

from __future__ import annotations

import os
import random
import threading
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from cdc.snapshot_sql import facts_select
from erpsync.config import load_config
from erpsync.pipeline import Pipeline
from erpsync.throwaway import wait_for
from sinks.emulators.webhook import WebhookEmulator

ROOT = Path(__file__).resolve().parent.parent


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
    stop = threading.Event()
    pipeline = Pipeline(cfg, drain_seconds=1)
    worker = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    worker.start()
    try:
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
        selects = facts_select(cfg, "mysql")
        cur.execute(selects["stock"])
        want_stock = {(s, loc): int(a) for s, loc, a in cur.fetchall()}
        cur.execute(selects["price"])
        want_price = {(r[0], r[1]): Decimal(str(r[2])) for r in cur.fetchall()}

        def shop_matches() -> bool:
            got = shop.stock()
            if any(got.get(k) != v for k, v in want_stock.items()):
                return False
            # keys the snapshot no longer has (renamed, off sale) must have been set to 0
            if any(v != 0 for k, v in got.items() if k not in want_stock):
                return False
            prices = {(k[1], k[2]): Decimal(v["amount"]) for k, v in shop.values.items() if k[0] == "price"}
            return all(prices.get(k) == v for k, v in want_price.items())

        assert wait_for(shop_matches, timeout=60), "shop != snapshot SELECT on the ERP"
        assert not shop.regressions
        assert pipeline.stats.changes > 300
    finally:
        stop.set()
        worker.join(30)
        shop.stop()
        conn.close()
        os.environ.pop("ERP_PASSWORD", None)
