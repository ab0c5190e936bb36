"""Run history in a DuckDB file: each run's summary per sink and its drift items, for trends."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from cdc.private_files import make_private, private_dir, private_umask
from cdc.redact import redact

SCHEMA = """
CREATE TABLE IF NOT EXISTS hist.runs (
    run_id BIGINT, started_at TIMESTAMP, finished_at TIMESTAMP, sink VARCHAR, erp_position VARCHAR,
    erp_rows BIGINT, erp_keys BIGINT, shop_keys BIGINT, in_flight BIGINT, drift_total BIGINT,
    stock_mismatch BIGINT, price_mismatch BIGINT, missing_in_shop BIGINT, not_in_erp BIGINT,
    not_mapped BIGINT, healed BIGINT, error VARCHAR, caught_up BOOLEAN);
CREATE TABLE IF NOT EXISTS hist.items (
    run_id BIGINT, sink VARCHAR, drift VARCHAR, fact_kind VARCHAR, sku VARCHAR, scope VARCHAR,
    erp_value DECIMAL(38,4), shop_value DECIMAL(38,4), severity DOUBLE, note VARCHAR);
"""


def attach(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """The history file attached as ``hist``: created private (0600, a new directory 0700), an older one
    readable by others made private."""
    private_dir(path.parent)
    make_private(path)
    with private_umask():  # DuckDB creates the file (and its .wal) itself
        con.execute(f"ATTACH '{str(path).replace(chr(39), chr(39) * 2)}' AS hist")
        con.execute(SCHEMA)


def next_run_id(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM hist.runs").fetchone()[0])  # type: ignore[index]


def record(con: duckdb.DuckDBPyConnection, run_id: int, summaries: list[dict[str, Any]]) -> None:
    """Keep the run's per-sink summaries and its items (from the working ``drift`` table)."""
    cols = ["run_id", "started_at", "finished_at", "sink", "erp_position", "erp_rows", "erp_keys",
            "shop_keys", "in_flight", "drift_total", "stock_mismatch", "price_mismatch", "missing_in_shop",
            "not_in_erp", "not_mapped", "healed", "error", "caught_up"]
    # a shop's error text may echo our credentials
    rows = [[run_id if c == "run_id" else _redacted(_utc(s.get(c))) for c in cols] for s in summaries]
    with private_umask():  # the .wal DuckDB writes beside the file
        con.executemany(f"INSERT INTO hist.runs VALUES ({', '.join('?' * len(cols))})", rows)
        con.execute("INSERT INTO hist.items SELECT $run, sink, drift, fact_kind, sku, scope, erp_value, "
                    "shop_value, severity, note FROM drift", {"run": run_id})


def _redacted(v: Any) -> Any:
    return redact(v) if isinstance(v, str) else v


def _utc(v: Any) -> Any:
    """Times are kept as naive UTC (TIMESTAMPTZ would need pytz to read back)."""
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(UTC).replace(tzinfo=None)
    return v


def trend(con: duckdb.DuckDBPyConnection, runs: int) -> list[dict[str, Any]]:
    """Drift per run (all sinks summed) for the last ``runs`` runs, oldest first."""
    cur = con.execute("""
        SELECT run_id, min(started_at) AS at, sum(drift_total) AS total,
               sum(stock_mismatch) AS stock_mismatch,
               sum(price_mismatch) AS price_mismatch, sum(missing_in_shop) AS missing_in_shop,
               sum(not_in_erp) AS not_in_erp, sum(not_mapped) AS not_mapped
        FROM hist.runs GROUP BY run_id ORDER BY run_id DESC LIMIT $n""", {"n": runs})
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in reversed(cur.fetchall())]
