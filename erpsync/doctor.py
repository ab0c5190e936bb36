"""``erpsync doctor``: every prerequisite of a CDC source, checked with the configured credentials.

The database's plugin (cdc/sources/<db>/admin.py) runs its checks, each a ``Check(name, status, detail,
fix)`` where ``fix`` is the exact SQL or config line that resolves a WARN/FAIL; this module gathers what
they need from the config and renders the result.
"""

from __future__ import annotations

from cdc.sources.admin import FAIL, PASS, WARN, Check, DoctorInput
from cdc.sources.registry import plugin_for
from erpsync.config import Config


def mapped_tables(cfg: Config) -> list[str]:
    """Every fully qualified table the mapping reads (``schema.table``; the database for MySQL): the
    stock and prices tables and the lookups' — what setup grants and publishes and doctor checks."""
    from cdc.mapping.compiled import CompiledMapping

    return CompiledMapping.of(cfg).tables


def run_doctor(cfg: Config) -> list[Check]:
    inp = DoctorInput(mapped_tables(cfg), outage_budget_hours=cfg.ops.outage_budget_hours,
                      has_stock_key=bool(cfg.stock and cfg.stock.key), origin=cfg.origin)
    return plugin_for(cfg.source.kind).doctor_checks(cfg.source, inp)


def render(checks: list[Check]) -> str:
    lines = []
    for ch in checks:
        lines.append(f"{ch.status:<5} {ch.name}: {ch.detail}")
        if ch.fix and ch.status != PASS:
            for i, fl in enumerate(ch.fix.splitlines()):
                lines.append(f"      {'fix: ' if i == 0 else '     '}{fl}")
    fails = sum(ch.status == FAIL for ch in checks)
    warns = sum(ch.status == WARN for ch in checks)
    lines.append(f"{len(checks)} checks: {fails} FAIL, {warns} WARN")
    return "\n".join(lines)


__all__ = ["FAIL", "PASS", "WARN", "Check", "mapped_tables", "render", "run_doctor"]
