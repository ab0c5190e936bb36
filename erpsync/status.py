"""``erpsync status``: what the outbox file and the ERP say about a (possibly running) service.

The outbox is opened read-only (SQLite WAL lets us read while ``run`` writes). The ERP is optional: when
it is unreachable the outbox half is still reported, with a warning.
"""

from __future__ import annotations

import time
from typing import Any

from cdc.outbox.views import open_readonly, outbox_status
from cdc.redact import neutralise
from erpsync.config import Config

OK, WARN, FAIL = "ok", "warn", "fail"


def sink_problem(s: dict[str, Any], now: float, down_seconds: float,
                 since: float | None = None, *, with_error: bool = True) -> str | None:
    """Why a sink counts as down, or None. Down = facts are waiting and every push for ``down_seconds``
    has failed (its last success, if any, is older than its last error). ``with_error=False`` leaves the
    shop's error text out (the unauthenticated ops endpoint)."""
    if not s.get("pending"):
        return None
    err_at, ok_at = s.get("last_error_at"), s.get("last_ok_at")
    if not err_at or (ok_at and ok_at >= err_at):
        return None
    start = ok_at or s.get("added_at") or since or err_at
    if since is not None:
        start = max(start, since)  # failures before this process started were judged by the last one
    failing_for = now - start
    if failing_for < down_seconds:
        return None
    why = f"no successful push for {failing_for:.0f}s with {s['pending']} pending"
    if not with_error:
        return f"{why} (last error: see `erpsync status`)"
    return f"{why}; last error: {s.get('last_error') or '?'}"


def gather(cfg: Config, *, erp: bool = True) -> dict[str, Any]:
    """Everything ``status`` shows, as plain data (the --json output)."""
    from cdc.sources.registry import plugin_for

    now = time.time()
    sid = plugin_for(cfg.source.kind).source_id(cfg.source)
    sink_names = [s.name for s in cfg.sinks]
    path = cfg.outbox_path()
    report: dict[str, Any] = {"time": now, "source": {"kind": cfg.source.kind, "id": sid},
                              "outbox": str(path), "checks": []}
    checks: list[dict[str, str]] = report["checks"]

    def check(name: str, status: str, detail: str) -> None:
        checks.append({"name": name, "status": status, "detail": detail})

    ob: dict[str, Any] = {"positions": {}, "sinks": {n: {"pending": 0, "dlq": 0} for n in sink_names},
                          "data_errors": 0}
    if not path.exists():
        check("outbox", WARN, f"{path} does not exist yet (has `erpsync run` ever run?)")
    else:
        conn = open_readonly(path)
        try:
            ob = outbox_status(conn, sink_names)
        finally:
            conn.close()
    pos = ob["positions"].get(sid)
    report["source"].update({"position": pos["position"] if pos else None,
                             "snapshot_done": bool(pos and pos["snapshot_done"]),
                             "position_commit_ts": pos["commit_ts"] if pos else None,
                             "position_updated_at": pos["updated_at"] if pos else None})
    report["sinks"] = ob["sinks"]
    report["data_errors"] = ob["data_errors"]
    report["lag"] = {"bytes": None, "seconds": None}

    for name, s in ob["sinks"].items():
        problem = sink_problem(s, now, cfg.ops.sink_down_seconds)
        s["state"] = "down" if problem else ("failing" if s.get("last_error_at") and (
            not s.get("last_ok_at") or s["last_error_at"] > s["last_ok_at"]) and s["pending"] else "ok")
        if problem:
            check(f"sink {name}", FAIL, problem)
        if s["dlq"]:
            check(f"sink {name} dlq", WARN, f"{s['dlq']} dead letter(s): erpsync dlq list --sink {name}")
    if ob["data_errors"]:
        check("data errors", WARN, f"{ob['data_errors']} ERP row(s) a mapping rule could not evaluate "
                                   "(see the data_errors table / logs)")

    report["erp"] = {"reachable": False}
    if erp:
        _erp_status(cfg, report, pos["position"] if pos else None, check)
    if pos and report["lag"]["bytes"] is not None:
        # Approximation: while behind, we are at least as late as the last commit we confirmed.
        behind = report["lag"]["bytes"] > 0 and pos["commit_ts"]
        report["lag"]["seconds"] = round(max(0.0, now - pos["commit_ts"]), 3) if behind else 0.0
    worst = FAIL if any(c["status"] == FAIL for c in checks) else (
        WARN if any(c["status"] == WARN for c in checks) else OK)
    report["status"] = worst
    return report


def _erp_status(cfg: Config, report: dict[str, Any], stored: str | None, check: Any) -> None:
    """The ERP half: the database's plugin reports its slot or binlog retention and the lag."""
    from cdc.sources.admin import ConnectError
    from cdc.sources.registry import plugin_for

    plugin = plugin_for(cfg.source.kind)
    if not plugin.has_sql:
        report["erp"] = plugin.erp_status(None, cfg.source, stored).info
        return
    try:
        conn = plugin.connect_sql(cfg.source)
    except ConnectError as e:
        report["erp"] = {"reachable": False, "error": str(e)}
        check("erp", WARN, f"ERP not reachable: {e}")
        return
    try:
        st = plugin.erp_status(conn, cfg.source, stored)
        report["erp"] = st.info
        if st.lag_bytes is not None:
            report["lag"]["bytes"] = st.lag_bytes
        for name, level, detail in st.checks:
            check(name, level, detail)
    except Exception as e:
        report["erp"] = {"reachable": True, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"}
        check("erp", WARN, f"ERP status query failed: {report['erp']['error']}")
    finally:
        conn.close()


def render(report: dict[str, Any]) -> str:
    """The human view of ``gather()``: one line per item, with control characters of what a shop or the
    ERP said (errors, names) escaped, so they cannot drive the terminal or forge a line."""
    return "\n".join(neutralise(line) for line in _render_lines(report))


def _render_lines(report: dict[str, Any]) -> list[str]:
    src = report["source"]
    lines = [f"source    {src['kind']} ({src['id']})  position {src.get('position') or '-'}"
             + ("" if src.get("snapshot_done") else "  (no completed snapshot)")]
    lag = report["lag"]
    if lag["bytes"] is not None:
        lines.append(f"lag       {lag['bytes']} bytes, ~{lag['seconds']}s")
    erp = report["erp"]
    if erp.get("reachable"):
        if "slot" in erp:
            if erp.get("slot_exists"):
                lines.append(f"slot      {erp['slot']}: confirmed {erp['confirmed_flush_lsn']}, "
                             f"wal_status {erp['wal_status']}, retains {erp['retained_bytes'] or 0} bytes, "
                             f"{'active' if erp['active'] else 'inactive'}")
            else:
                lines.append(f"slot      {erp['slot']}: does not exist")
        elif "current" in erp:
            lines.append(f"binlog    current {erp['current']}, oldest kept {erp.get('oldest')}")
    else:
        lines.append(f"erp       unreachable: {erp.get('error', 'not checked')}")
    lines.append(f"outbox    {report['outbox']}  data errors: {report['data_errors']}")
    for name, s in report["sinks"].items():
        lines.append(f"sink      {name}: {s.get('state', 'ok')}, pending {s['pending']}, dlq {s['dlq']}"
                     + (f", last error: {s['last_error']}" if s.get("last_error") else ""))
    for c in report["checks"]:
        if c["status"] != OK:
            lines.append(f"{c['status'].upper():<9} {c['name']}: {c['detail']}")
    lines.append(f"status    {report['status'].upper()}")
    return lines
