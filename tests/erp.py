"""A small ERP for end-to-end tests, the same on every source database: a stock table, a workload
generator, and an oracle computing what the shop must show straight from the ERP tables."""

from __future__ import annotations

import math
import random
import time
from typing import Any

import yaml

LOCATIONS = {"WH-MAD": "madrid", "WH-BCN": "madrid", "WH-MIL": "milan"}
SAFETY = 1
WHERE = "WHERE sku=%s AND warehouse_code=%s"


class Erp:
    kind = "?"
    conn: Any

    def execute(self, query: str, params: tuple[Any, ...] = ()) -> None:
        with self.conn.cursor() as cur:
            cur.execute(query, params)

    def executemany(self, query: str, rows: list[tuple[Any, ...]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(query, rows)

    def transaction(self, statements: list[tuple[str, tuple[Any, ...]]], rollback: bool = False) -> None:
        with self.conn.cursor() as cur:
            cur.execute("BEGIN")
            for q, p in statements:
                cur.execute(q, p)
            cur.execute("ROLLBACK" if rollback else "COMMIT")

    def query(self, q: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(q, params)
            return list(cur.fetchall())

    # to define per database
    def create_stock_table(self) -> None:
        raise NotImplementedError

    def source(self, name: str) -> dict[str, Any]:
        raise NotImplementedError

    def table(self) -> str:
        raise NotImplementedError

    # shared ---------------------------------------------------------------------------------------
    def seed(self, skus: int, rng: random.Random) -> list[str]:
        names = [f"SKU-{i:05d}" for i in range(skus)]
        rows = [(s, wh, rng.randint(0, 40), rng.randint(0, 3)) for s in names for wh in LOCATIONS]
        self.executemany("INSERT INTO stock_levels (sku, warehouse_code, on_hand, reserved) "
                         "VALUES (%s,%s,%s,%s)", rows)
        return names

    def random_transaction(self, rng: random.Random, skus: list[str]) -> list[tuple[str, tuple[Any, ...]]]:
        """One ERP transaction touching 1..3 stock rows (sales, receipts, reservations, transfers)."""
        out = []
        for _ in range(rng.randint(1, 3)):
            sku, wh = rng.choice(skus), rng.choice(list(LOCATIONS))
            r = rng.random()
            if r < 0.5:
                out.append((f"UPDATE stock_levels SET on_hand = on_hand - %s {WHERE}",
                            (rng.randint(1, 3), sku, wh)))
            elif r < 0.8:
                out.append((f"UPDATE stock_levels SET on_hand = on_hand + %s {WHERE}",
                            (rng.randint(1, 20), sku, wh)))
            else:
                out.append((f"UPDATE stock_levels SET reserved = %s {WHERE}", (rng.randint(0, 5), sku, wh)))
        return out

    def expected(self) -> dict[tuple[str, str], int]:
        sums: dict[tuple[str, str], float] = {}
        for sku, wh, qty in self.query("SELECT sku, warehouse_code, on_hand - reserved FROM stock_levels"):
            loc = LOCATIONS.get(wh)
            if loc:
                sums[(sku, loc)] = sums.get((sku, loc), 0) + float(qty)
        return {k: max(0, math.floor(v) - SAFETY) for k, v in sums.items()}

    def config(self, tmp_path: Any, shop_url: str, name: str = "erpsync", **outbox: Any) -> str:
        cfg = {
            "source": self.source(name),
            "stock": {"table": self.table(), "sku": "sku", "warehouse": "warehouse_code",
                      "quantity": "on_hand - reserved", "locations": LOCATIONS, "safety_stock": SAFETY},
            "sinks": [{"name": "shop", "kind": "webhook", "url": shop_url, "timeout_seconds": 2,
                       "secret": "hook-test-key"}],
            "outbox": {"path": str(tmp_path / "outbox.db"), **outbox},
            "ops": {"listen": "127.0.0.1:0"},  # tests run side by side: never fight over the default port
        }
        path = tmp_path / "erpsync.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)


class PostgresErp(Erp):
    kind = "postgres"

    def __init__(self, dsn: str) -> None:
        import psycopg2

        self.dsn = dsn
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True

    def create_stock_table(self) -> None:
        self.execute("""CREATE TABLE stock_levels (
            id bigserial PRIMARY KEY, sku text NOT NULL, warehouse_code text NOT NULL,
            on_hand numeric(12,3) NOT NULL DEFAULT 0, reserved numeric(12,3) NOT NULL DEFAULT 0,
            note text, updated_at timestamptz NOT NULL DEFAULT now(), UNIQUE (sku, warehouse_code))""")

    def table(self) -> str:
        return "public.stock_levels"

    def source(self, name: str) -> dict[str, Any]:
        return {"kind": "postgres", "dsn": self.dsn, "slot": name, "publication": name,
                "heartbeat_seconds": 1}

    def confirmed_flush(self, slot: str) -> int | None:
        rows = self.query("SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots "
                          "WHERE slot_name=%s", (slot,))
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def close(self) -> None:
        # Slot names are cluster-wide: free this database's slots for the next test.
        for _ in range(50):
            self.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                         "WHERE database = current_database() AND active_pid IS NOT NULL")
            try:
                self.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                             "WHERE database = current_database()")
                break
            except Exception:  # still active for a moment after its walsender was told to stop
                time.sleep(0.1)
        self.conn.close()


class MariaErp(Erp):
    kind = "mysql"

    def __init__(self, server: Any, database: str) -> None:
        self.server = server
        self.database = database
        self.conn = server.connect(database)

    def create_stock_table(self) -> None:
        self.execute("""CREATE TABLE stock_levels (
            id BIGINT AUTO_INCREMENT PRIMARY KEY,
            sku VARCHAR(64) NOT NULL, warehouse_code VARCHAR(16) NOT NULL,
            on_hand DECIMAL(12,3) NOT NULL DEFAULT 0, reserved DECIMAL(12,3) NOT NULL DEFAULT 0,
            note LONGTEXT, updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
            UNIQUE KEY (sku, warehouse_code)) ENGINE=InnoDB""")

    def table(self) -> str:
        return "stock_levels"

    def source(self, name: str) -> dict[str, Any]:
        # server_id must be unique among the server's replicas: derive it from the database name
        return {"kind": "mysql", "host": "127.0.0.1", "port": self.server.port, "user": "root",
                "password": "", "database": self.database,
                "server_id": 1000 + abs(hash(self.database)) % 100_000, "heartbeat_seconds": 1}

    def close(self) -> None:
        self.conn.close()
