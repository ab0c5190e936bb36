"""Reconcile throughput: erpsync's reconciler vs reladiff, on the same data in the same run.

Data: a throwaway PostgreSQL with an ERP stock table of SKUS × 3 warehouses (one per shop location) and a
shop snapshot table ``shop_stock(sku, location, available)`` holding the mapped values with 1% of the keys
drifted (half of them a different quantity, half missing from the shop).

Both tools run --repeat times, alternated (the machine may be shared); medians are compared.
What is measured for erpsync (each phase printed):
* ERP snapshot: the mapping's ``facts_select`` stock SELECT, its per-row part streamed out of PostgreSQL
  (COPY … TO STDOUT → pyarrow CSV reader) and its GROUP BY part (sums, floor, safety, clamp) in DuckDB;
* shop snapshot: loading the shop's listing into DuckDB (one value per key). The listing itself is
  fetched *before* the clock starts (COPY of shop_stock into Arrow, printed as "listing fetch"): a
  real shop's API listing time is the shop's, the same for any tool, and not what is compared here;
* diff: the DuckDB classification (one FULL OUTER JOIN giving only the differing keys).
reladiff: ``diff_tables`` of the same shop table against the ERP side *already mapped* into an indexed
table (reladiff diffs two tables; it cannot apply the mapping). The time to build that table is shown
separately and added in the second ratio.

The last lines print both times and ``ratio`` (reladiff seconds ÷ erpsync seconds; goal ≥ 5), also with
the shop listing fetch counted on erpsync's side.

    .venv/bin/python bench/reconcile.py              # 1,000,000 SKUs × 3 locations
    .venv/bin/python bench/reconcile.py --skus 100000 --repeat 5
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import psycopg2
import pyarrow as pa
import pyarrow.csv as pacsv
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erpsync.config import load_config_text
from erpsync.testing.postgres import ThrowawayPostgres
from reconciler import diff
from reconciler.erp_snapshot import snapshot_erp
from reconciler.shop_snapshot import snapshot_shop

LOCATIONS = {"WH-A": "north", "WH-B": "south", "WH-C": "west"}
SAFETY = 1


def seed(dsn: str, skus: int) -> tuple[int, int]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("""CREATE TABLE stock_levels (id bigserial PRIMARY KEY, sku text NOT NULL,
                       warehouse_code text NOT NULL, on_hand numeric(12,3) NOT NULL,
                       reserved numeric(12,3) NOT NULL DEFAULT 0)""")
        cur.execute("""INSERT INTO stock_levels (sku, warehouse_code, on_hand, reserved)
                       SELECT 'SKU-' || lpad(i::text, 8, '0'), w, (i * 7 + ascii(right(w, 1))) %% 60, i %% 3
                       FROM generate_series(1, %s) i, unnest(ARRAY['WH-A','WH-B','WH-C']) w""", (skus,))
        cur.execute("CREATE TABLE locmap (warehouse text PRIMARY KEY, location text)")
        cur.executemany("INSERT INTO locmap VALUES (%s, %s)", list(LOCATIONS.items()))
        # the mapped ERP values, as the shop should show them
        mapped = f"""SELECT s.sku, l.location, greatest(floor(sum(s.on_hand - s.reserved)) - {SAFETY}, 0)::int
                     AS available FROM stock_levels s JOIN locmap l ON l.warehouse = s.warehouse_code
                     GROUP BY s.sku, l.location"""
        # 1% drift: 0.5% of keys with another quantity, 0.5% missing from the shop
        cur.execute(f"""CREATE TABLE shop_stock AS
                        SELECT sku, location, available + CASE WHEN h = 0 THEN 5 ELSE 0 END AS available
                        FROM (SELECT *, abs(hashtext(sku || location)) % 200 AS h FROM ({mapped}) m) x
                        WHERE h <> 1""")
        cur.execute("ALTER TABLE shop_stock ADD PRIMARY KEY (sku, location)")
        cur.execute("VACUUM ANALYZE")
        cur.execute("SELECT count(*) FILTER (WHERE h = 0), count(*) FILTER (WHERE h = 1) FROM "
                    f"(SELECT abs(hashtext(sku || location)) % 200 AS h FROM ({mapped}) m) x")
        changed, missing = cur.fetchone()
    conn.close()
    return changed, missing


def fetch_listing(dsn: str) -> pa.Table:
    """The shop's listing as a sink's ``snapshot_arrow()`` would give it (from shop_stock)."""
    conn = psycopg2.connect(dsn)
    buf = io.BytesIO()
    with conn.cursor() as cur:
        cur.copy_expert("COPY (SELECT 'stock', sku, location, available, NULL FROM shop_stock) "
                        "TO STDOUT WITH (FORMAT csv)", buf)
    conn.close()
    buf.seek(0)
    types = {"kind": pa.string(), "sku": pa.string(), "scope": pa.string(), "value": pa.int64(),
             "currency": pa.string()}
    return pacsv.read_csv(buf, read_options=pacsv.ReadOptions(column_names=list(types), block_size=16 << 20),
                          convert_options=pacsv.ConvertOptions(column_types=types))


class ListedShop:
    """A shop whose listing was fetched beforehand."""

    name = "bench-shop"

    def __init__(self, listing: pa.Table) -> None:
        self.listing = listing

    def snapshot_arrow(self) -> Any:
        yield self.listing

    def close(self) -> None:
        return None


def bench_config(dsn: str) -> Any:
    doc = {"source": {"kind": "postgres", "dsn": dsn, "slot": "bench", "publication": "bench"},
           "stock": {"table": "public.stock_levels", "sku": "sku", "warehouse": "warehouse_code",
                     "quantity": "on_hand - reserved", "locations": LOCATIONS, "safety_stock": SAFETY},
           "sinks": [{"name": "bench-shop", "kind": "webhook", "url": "http://127.0.0.1:1/hook",
                      "unsigned": True}]}
    return load_config_text(yaml.safe_dump(doc))


def run_erpsync(dsn: str, cfg: Any, listing: pa.Table) -> tuple[dict[str, float], dict[str, int]]:
    t0 = time.perf_counter()
    con = duckdb.connect()
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    snap = snapshot_erp(conn, "postgres", con, cfg, progress=False)
    conn.close()
    t1 = time.perf_counter()
    n = snapshot_shop(ListedShop(listing), con, progress=False)
    t2 = time.perf_counter()
    diff.load_in_flight(con, [])
    res = diff.classify(con, "bench-shop", kinds=["stock"])
    t3 = time.perf_counter()
    con.close()
    times = {"erp": t1 - t0, "erp_read": snap.read_seconds, "shop": t2 - t1, "diff": t3 - t2,
             "total": t3 - t0}
    print(f"  erpsync: ERP snapshot {snap.rows:,} rows {times['erp']:.2f}s (in the ERP transaction "
          f"{snap.read_seconds:.2f}s, after it {times['erp'] - snap.read_seconds:.2f}s), shop snapshot "
          f"{n:,} facts {times['shop']:.2f}s, diff {times['diff']:.2f}s = {times['total']:.2f}s", flush=True)
    return times, {k: v for k, v in res.counts.items() if v}


def run_reladiff(dsn: str, uri: str, run: int) -> tuple[float, float, dict[str, int]]:
    from reladiff import connect_to_table, diff_tables

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    t0 = time.perf_counter()
    with conn.cursor() as cur:  # reladiff cannot apply the mapping: give it the mapped ERP side as a table
        # a new table per run: reladiff's connections from the last run may still hold locks on theirs
        cur.execute(f"""CREATE TABLE erp_mapped{run} AS
                        SELECT s.sku, l.location,
                               greatest(floor(sum(s.on_hand - s.reserved)) - {SAFETY}, 0)::int AS available
                        FROM stock_levels s JOIN locmap l ON l.warehouse = s.warehouse_code
                        GROUP BY s.sku, l.location""")
        cur.execute(f"ALTER TABLE erp_mapped{run} ADD PRIMARY KEY (sku, location)")
        cur.execute(f"ANALYZE erp_mapped{run}")
    conn.close()
    t1 = time.perf_counter()
    a = connect_to_table(uri, f"erp_mapped{run}", ("sku", "location"), thread_count=2)
    b = connect_to_table(uri, "shop_stock", ("sku", "location"), thread_count=2)
    counts = {"-": 0, "+": 0}
    for sign, _row in diff_tables(a, b, extra_columns=("available",), threaded=True, max_threadpool_size=2):
        counts[sign] += 1
    t2 = time.perf_counter()
    # reladiff installs a psycopg2 wait callback (process-wide), which forbids COPY: remove it
    psycopg2.extensions.set_wait_callback(None)
    print(f"  reladiff: materialize mapped ERP {t1 - t0:.2f}s, diff_tables {t2 - t1:.2f}s "
          f"(rows only in ERP side '-': {counts['-']:,}, only in shop side '+': {counts['+']:,})", flush=True)
    return t2 - t1, t1 - t0, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skus", type=int, default=1_000_000, help="SKUs (× 3 locations = keys)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each tool, alternated (medians are compared)")
    args = ap.parse_args()
    with ThrowawayPostgres(wal_level="replica") as pg:
        dsn = pg.create_database("bench")
        t = time.perf_counter()
        changed, missing = seed(dsn, args.skus)
        print(f"seeded {args.skus:,} SKUs × 3 locations = {3 * args.skus:,} keys; drift: {changed:,} "
              f"quantities changed, {missing:,} missing in the shop ({time.perf_counter() - t:.1f}s)")
        cfg = bench_config(dsn)
        t = time.perf_counter()
        listing = fetch_listing(dsn)
        fetch = time.perf_counter() - t
        print(f"  shop listing fetch (not timed below): {listing.num_rows:,} facts in {fetch:.2f}s")
        uri = "postgresql://" + dsn.split("://", 1)[1] if "://" in dsn else _uri(dsn)
        # alternated, so that both tools see the same background load (the machine is shared)
        runs, theirs, preps = [], [], []
        for run in range(args.repeat):
            times, found = run_erpsync(dsn, cfg, listing)
            assert found == {"stock_mismatch": changed, "missing_in_shop": missing}, found
            runs.append(times)
            diff_s, prep_s, counts = run_reladiff(dsn, uri, run)
            assert counts["-"] == changed + missing and counts["+"] == changed, counts
            theirs.append(diff_s)
            preps.append(prep_s)
        print(f"  erpsync found {found}")
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    ours, their, prep = med["total"], statistics.median(theirs), statistics.median(preps)
    print(f"erpsync reconcile (median of {len(runs)}): {ours:.2f}s = ERP snapshot {med['erp']:.2f}s "
          f"(in the ERP transaction {med['erp_read']:.2f}s) + shop snapshot {med['shop']:.2f}s + diff "
          f"{med['diff']:.2f}s")
    print(f"reladiff diff_tables (median of {len(theirs)}): {their:.2f}s (+ {prep:.2f}s to materialize the "
          f"mapped ERP side)")
    pairs = ", ".join(f"{t / r['total']:.1f}" for t, r in zip(theirs, runs, strict=True))
    print(f"ratio {their / ours:.1f}  (run by run: {pairs}; with materialization "
          f"{(their + prep) / ours:.1f}; with erpsync's shop listing fetch counted too "
          f"{their / (ours + fetch):.1f})")
    return 0


def _uri(dsn: str) -> str:
    """key=value DSN → postgresql:// URI for reladiff."""
    kv = dict(p.split("=", 1) for p in dsn.split())
    user = kv.get("user", "postgres")
    return f"postgresql://{user}@{kv.get('host', '127.0.0.1')}:{kv.get('port', '5432')}/{kv.get('dbname')}"


if __name__ == "__main__":
    sys.exit(main())
