"""The chaos run (`bench/chaos.py`): kills, ERP restarts, shop faults and a full outbox disk on PostgreSQL
and MariaDB; the reconciler must find nothing lost and the DLQ must hold only the deliberately bad SKUs.

The CI size (``--quick``, ≈ 3 min for both databases) is part of the default run; the full size (20+ kills,
a 1,000,000-row transaction, a 10,000,000-change soak, a 10-minute shop outage; about an hour per
database) is marked ``slow``: ``pytest -m slow tests/test_chaos.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _chaos(args: list[str], timeout: float) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    summary = r.stdout
    assert r.returncode == 0, summary[-4000:] + r.stderr[-4000:]
    assert "items lost: 0  -> PASS" in summary
    for db in ("postgres", "mysql"):
        assert f"[{db}] items lost: 0" in summary
        assert f"[{db}] reconciler drift: 5 (5 on bad SKUs)" in summary
        assert "(only the bad ones)" in summary
    return summary


@pytest.mark.timeout(600)
def test_chaos_quick_loses_nothing() -> None:
    _chaos(["--quick"], timeout=590)


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_chaos_full_loses_nothing_and_memory_stays_flat() -> None:
    summary = _chaos([], timeout=4 * 3600 - 60)
    for line in summary.splitlines():
        if "max RSS:" in line:
            assert float(line.split("max RSS:")[1].split("MB")[0]) < 300, line
