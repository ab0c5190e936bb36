"""Read-only views of the outbox (status, metrics, reconciler) and the operator's dead-letter actions."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from cdc.outbox.store import Transaction


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """Read-only: status and metrics must never take a write lock the running service would wait for."""
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, timeout=10.0,
                           isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() \
        is not None


def outbox_status(conn: sqlite3.Connection, sinks: list[str] | None = None) -> dict[str, Any]:
    """Positions, per-sink pending / DLQ / last outcome, data errors — one read transaction. Tables a
    not-yet-started service has not created read as empty."""
    conn.execute("BEGIN")
    try:
        names = list(sinks or [])
        added: dict[str, float] = {}
        if _has_table(conn, "sinks"):
            for n, at in conn.execute("SELECT name, added_at FROM sinks"):
                added[n] = at
                if sinks is None and n not in names:
                    names.append(n)
        pend = pending_counts(conn) if _has_table(conn, "deliveries") else {}
        dlq = dlq_counts(conn) if _has_table(conn, "dead_letters") else {}
        st: dict[str, tuple[Any, ...]] = {}
        if _has_table(conn, "sink_status"):
            st = {r[0]: r[1:] for r in conn.execute(
                "SELECT sink, last_ok_at, last_error, last_error_at FROM sink_status")}
        out_sinks = {}
        for n in names:
            last_ok, last_err, last_err_at = st.get(n, (None, None, None))
            out_sinks[n] = {"pending": int(pend.get(n, 0)), "dlq": int(dlq.get(n, 0)), "last_ok_at": last_ok,
                            "last_error": last_err, "last_error_at": last_err_at, "added_at": added.get(n)}
        positions = {}
        if _has_table(conn, "positions"):
            for src, pos, done, cts, upd in conn.execute(
                    "SELECT source, position, snapshot_done, commit_ts, updated_at FROM positions"):
                positions[src] = {"position": pos, "snapshot_done": bool(done), "commit_ts": cts,
                                  "updated_at": upd}
        data_errors = 0
        if _has_table(conn, "data_errors"):  # the normalizer's table, in the same file
            data_errors = int(conn.execute("SELECT count(*) FROM data_errors").fetchone()[0])
    finally:
        conn.execute("COMMIT")
    return {"positions": positions, "sinks": out_sinks, "data_errors": data_errors}


# for the reconciler: what is in flight between the outbox and a shop -------------------------------
def max_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(version), 0) FROM facts").fetchone()[0])


def pending_keys(conn: sqlite3.Connection, sink: str) -> list[tuple[str, str, str]]:
    """(kind, sku, scope) of every fact ``sink`` has not acknowledged yet."""
    return conn.execute("SELECT kind, sku, scope FROM deliveries WHERE sink=? AND want > done",
                        (sink,)).fetchall()


def newer_keys(conn: sqlite3.Connection, version: int) -> list[tuple[str, str, str]]:
    """(kind, sku, scope) of every fact written above ``version``."""
    return conn.execute("SELECT kind, sku, scope FROM facts WHERE version > ?", (version,)).fetchall()


def stored_position(conn: sqlite3.Connection, source: str) -> str | None:
    """The position the pipeline stored for ``source`` (snapshot finished or not), or None."""
    row = conn.execute("SELECT position FROM positions WHERE source=?", (source,)).fetchone()
    return row[0] if row else None


# metrics and dead letters ---------------------------------------------------------------------------

def pending_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT sink, count(*) FROM deliveries WHERE want > done GROUP BY sink"))


def dlq_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT sink, count(*) FROM dead_letters GROUP BY sink"))


def dlq_list(conn: sqlite3.Connection, sink: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    q = "SELECT sink, kind, sku, scope, version, value, error, attempts, failed_at FROM dead_letters"
    args: tuple[Any, ...] = ()
    if sink:
        q += " WHERE sink=?"
        args = (sink,)
    q += " ORDER BY failed_at LIMIT ?"
    cols = ["sink", "kind", "sku", "scope", "version", "value", "error", "attempts", "failed_at"]
    return [dict(zip(cols, r, strict=True)) for r in conn.execute(q, (*args, limit))]


def _dlq_where(sink: str | None, skus: list[str] | None) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if sink:
        clauses.append("sink=?")
        args.append(sink)
    if skus:
        clauses.append(f"sku IN ({','.join('?' * len(skus))})")
        args.extend(skus)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def dlq_retry(conn: sqlite3.Connection, sink: str | None = None, skus: list[str] | None = None) -> int:
    """Queue dead letters again (with the fact's *current* value) and clear them."""
    where, args = _dlq_where(sink, skus)
    with Transaction(conn):
        rows = conn.execute(f"SELECT sink, kind, sku, scope FROM dead_letters{where}", args).fetchall()
        conn.executemany("UPDATE deliveries SET done=0, attempts=0, next_at=0, last_error=NULL "
                         "WHERE sink=? AND kind=? AND sku=? AND scope=?", rows)
        conn.execute(f"DELETE FROM dead_letters{where}", args)
    return len(rows)


def dlq_drop(conn: sqlite3.Connection, sink: str | None = None, skus: list[str] | None = None) -> int:
    where, args = _dlq_where(sink, skus)
    with Transaction(conn):
        return conn.execute(f"DELETE FROM dead_letters{where}", args).rowcount
