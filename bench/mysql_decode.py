"""Decode throughput of the MySQL/MariaDB source vs ``mariadb-binlog --read-from-remote-server --verbose``.

Starts its own throwaway MariaDB, writes ``--rows`` row changes (inserts in 1,000-row transactions, updates
in 10-row transactions, deletes in 100-row transactions) to an ERP-like stock table, then decodes the same
binlog with both and prints rows/s. The last line is ``ratio <source rows/s ÷ mariadb-binlog rows/s>``.

    .venv/bin/python bench/mysql_decode.py            # 300,000 row changes
    .venv/bin/python bench/mysql_decode.py --rows 30000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cdc.sources.mysql.config import MySQLSourceConfig
from cdc.sources.mysql.replication import MySQLSource
from erpsync.testing.mariadb import ThrowawayMariaDB


def write_workload(db: ThrowawayMariaDB, rows: int) -> tuple[str, int]:
    """Returns the binlog position before the workload and the number of row changes written."""
    conn = db.connect()
    cur = conn.cursor()
    cur.execute("CREATE DATABASE erp CHARACTER SET utf8mb4")
    cur.execute("""CREATE TABLE erp.stock_levels (
        id INT UNSIGNED PRIMARY KEY, item_id INT NOT NULL, warehouse_code VARCHAR(16) NOT NULL,
        on_hand DECIMAL(12,3) NOT NULL, reserved DECIMAL(12,3) NOT NULL, updated_at DATETIME(3) NOT NULL)""")
    cur.execute("SHOW MASTER STATUS")
    f, p = cur.fetchone()[:2]
    n_ins, n_upd = rows // 3, rows // 2
    n_del = rows - n_ins - n_upd
    whs = ["WH-MAD", "WH-BCN", "WH-MIL", "WH-PAR"]
    for start in range(0, n_ins, 1000):
        vals = ",".join(f"({i},{i // 4},'{whs[i % 4]}',{i % 997}.{i % 1000:03d},{i % 7},NOW(3))"
                        for i in range(start, min(start + 1000, n_ins)))
        cur.execute(f"INSERT INTO erp.stock_levels VALUES {vals}")
    done = 0
    while done < n_upd:
        lo = done % n_ins
        k = min(10, n_upd - done, n_ins - lo)
        cur.execute(f"UPDATE erp.stock_levels SET on_hand = on_hand + 1, updated_at = NOW(3) "
                    f"WHERE id BETWEEN {lo} AND {lo + k - 1}")
        done += k
    for start in range(0, n_del, 100):
        last = min(start + 100, n_del) - 1
        cur.execute(f"DELETE FROM erp.stock_levels WHERE id BETWEEN {start} AND {last}")
    conn.close()
    return f"{f}:{p}", n_ins + n_upd + n_del


def bench_source(db: ThrowawayMariaDB, start: str, total: int) -> float:
    cfg = MySQLSourceConfig(port=db.port, user="root", database="erp", server_id=777)
    src = MySQLSource(cfg, ["stock_levels"])
    n = 0
    t0 = time.perf_counter()
    for ch in src.stream(start):
        n += len(ch.changes)
        if n >= total:
            break
    dt = time.perf_counter() - t0
    src.close()
    assert n == total, (n, total)
    return total / dt


def bench_mariadb_binlog(db: ThrowawayMariaDB, total: int) -> float:
    conn = db.connect()
    cur = conn.cursor()
    cur.execute("SHOW BINARY LOGS")
    files = [r[0] for r in cur.fetchall()]
    conn.close()
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        subprocess.run(["mariadb-binlog", "--read-from-remote-server", "--host=127.0.0.1",
                        f"--port={db.port}",
                        "--user=root", "--verbose", "--base64-output=DECODE-ROWS", *files],
                       stdout=out, check=True)
        dt = time.perf_counter() - t0
        out.seek(0)
        n = sum(1 for line in out if line.startswith((b"### INSERT INTO", b"### UPDATE", b"### DELETE FROM")))
    assert n == total, (n, total)
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300_000, help="row changes to write and decode")
    args = ap.parse_args()
    with ThrowawayMariaDB() as db:
        t0 = time.perf_counter()
        start, total = write_workload(db, args.rows)
        print(f"wrote {total} row changes in {time.perf_counter() - t0:.1f}s")
        theirs = bench_mariadb_binlog(db, total)
        print(f"mariadb-binlog --verbose  {theirs:12,.0f} rows/s")
        ours = bench_source(db, start, total)
        print(f"erpsync MySQLSource       {ours:12,.0f} rows/s")
        print(f"ratio {ours / theirs:.3f}")


if __name__ == "__main__":
    main()
