"""``erpsync demo`` and ``erpsync emulate``."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click

from erpsync.cli.common import Fail


@click.command()
@click.option("--transactions", "-n", default=2000, show_default=True, help="ERP transactions in the burst")
@click.option("--rate", default=500, show_default=True, help="ERP transactions per second")
@click.option("--skus", default=200, show_default=True)
def demo(transactions: int, rate: int, skus: int) -> None:
    """Run the whole path on a throwaway PostgreSQL and a shop emulator, then print a summary."""
    from erpsync.demo.run import run_demo

    sys.exit(run_demo(transactions=transactions, rate=rate, skus=skus))


@click.command()
@click.argument("platform")
@click.option("--port", default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--skus", default=1000, show_default=True, help="catalogue size (shop platforms)")
@click.option("--secret-env", default=None, help="webhook: env var holding the HMAC secret")
def emulate(platform: str, port: int, host: str, skus: int, secret_env: str | None) -> None:
    """Serve a shop API emulator (webhook, shopify, woocommerce, magento, prestashop) in the foreground."""
    import os

    if platform == "webhook":
        from sinks.emulators.webhook import WebhookEmulator

        emu: Any = WebhookEmulator(secret=os.environ.get(secret_env) if secret_env else None)
    else:
        from sinks.registry_emulators import make_emulator

        try:
            emu = make_emulator(platform, skus=skus)
        except (KeyError, ValueError):
            raise Fail(f"unknown platform {platform!r}", 2) from None
    click.echo(f"{platform} emulator on http://{host}:{port} (Ctrl-C to stop)", err=True)
    with contextlib.suppress(KeyboardInterrupt):
        emu.serve_forever(port, host)


