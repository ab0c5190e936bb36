"""Healing: make the shop show the ERP's value again for drifted keys, through the outbox.

The ERP stays the source of truth: for each healable drifted key the ERP snapshot's value is written as
a fact (a new version only when the outbox holds another value — Outbox.write_facts skips unchanged ones),
and the key's delivery to the drifted sink is marked pending again (done = 0), so the running pipeline
pushes it. Everything in one outbox transaction.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import duckdb

from cdc.facts import Fact, FactKey
from cdc.outbox.store import Outbox
from reconciler.diff import HEALABLE


class HealRefused(RuntimeError):
    pass


def heal(con: duckdb.DuckDBPyConnection, outbox_path: Any, sink: str, sink_kinds: dict[str, list[str]], *,
         catalogue: int, max_percent: float, force: bool = False, position: str = "") -> int:
    """Queue the ERP value of every healable drifted key of ``sink``; returns how many keys were queued.

    Raises HealRefused when that is more than ``max_percent`` of the sink's catalogue (ERP keys) and
    ``force`` is off: mass drift usually means a wrong mapping or the wrong shop, not a shop to overwrite.
    """
    kinds = ", ".join(f"'{k}'" for k in HEALABLE)
    rows = con.execute(
        f"SELECT fact_kind, sku, scope, erp_value, erp_currency FROM drift WHERE sink = $sink "
        f"AND drift IN ({kinds}) AND erp_value IS NOT NULL", {"sink": sink}).fetchall()
    if not rows:
        return 0
    share = 100.0 * len(rows) / max(catalogue, 1)
    if share > max_percent and not force:
        raise HealRefused(f"sink {sink}: {len(rows):,} keys to heal = {share:.1f}% of {catalogue:,} "
                          f"(limit {max_percent:g}%); check the mapping, or pass --force")
    now = time.time()
    ob = Outbox(outbox_path)
    try:
        facts = []
        for kind, sku, scope, value, currency in rows:
            key = FactKey(kind, sku, scope)
            if kind == "stock":
                v: dict[str, Any] = {"available": int(value)}
            else:  # keep what the ERP snapshot does not carry (compare_at) from the outbox's value
                v = {"compare_at": None, **(ob.current(key) or {}), "amount": Decimal(value)}
                v["currency"] = currency or v.get("currency") or ""
            facts.append(Fact(key, v, 0, position, now))
        ob.sink_kinds = sink_kinds  # a corrected value goes to every sink taking its kind
        ob.begin()
        ob.write_facts(facts)
        # unchanged values were skipped above: re-deliver the current fact to this sink anyway
        ob.redeliver(sink, [f.key for f in facts])
        ob.commit()
    finally:
        ob.close()
    return len(facts)
