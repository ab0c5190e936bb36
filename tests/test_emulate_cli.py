"""`erpsync emulate <platform>` serves each shop emulator by hand, in the foreground, until killed."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from erpsync.testing import free_port, wait_for


@pytest.mark.parametrize("platform", ["webhook", "shopify", "woocommerce", "magento", "prestashop"])
def test_emulate_serves_the_platform(platform: str) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "erpsync.cli", "emulate", platform, "--port", str(port),
                             "--skus", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/_emulator/stats", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        died = proc.poll() is not None
        assert wait_for(up, timeout=20), proc.stderr.read().decode() if died else "no answer"
    finally:
        proc.terminate()
        proc.wait(10)


def test_emulate_unknown_platform_is_a_usage_error() -> None:
    r = subprocess.run([sys.executable, "-m", "erpsync.cli", "emulate", "ebay"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown platform" in r.stderr
