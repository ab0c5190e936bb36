"""The chaos run in CI size (`bench/chaos.py --quick`): kills, ERP restarts, shop faults and a full outbox
disk on PostgreSQL and MariaDB; the reconciler must find nothing lost. Slow: run with ``-m slow``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chaos_quick_loses_nothing() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), "--quick"], cwd=ROOT,
                       capture_output=True, text=True, timeout=590)
    summary = r.stdout
    assert r.returncode == 0, summary[-4000:] + r.stderr[-4000:]
    assert "items lost: 0  -> PASS" in summary
    for db in ("postgres", "mysql"):
        assert f"[{db}] items lost: 0" in summary
