"""kind → the platform's emulator, for ``erpsync emulate``, the tests and the benchmarks (never the data
path: sinks/registry.py has the sinks)."""

from __future__ import annotations

from typing import Any

from sinks.emulators.base import Emulator, Faults
from sinks.registry import load

_EMULATORS: dict[str, str] = {
    "shopify": "sinks.emulators.shopify:ShopifyEmulator",
    "woocommerce": "sinks.emulators.woocommerce:WooCommerceEmulator",
    "magento": "sinks.emulators.magento:MagentoEmulator",
    "prestashop": "sinks.emulators.prestashop:PrestaShopEmulator",
    "webhook": "sinks.emulators.webhook:WebhookEmulator",
}


def emulator_class(kind: str) -> type[Emulator]:
    return load(_EMULATORS, kind)  # type: ignore[no-any-return]


def make_emulator(
    kind: str,
    skus: int | list[str] = 100,
    locations: list[str] | None = None,
    price_lists: list[str] | None = None,
    faults: Faults | dict[str, Any] | None = None,
    **settings: Any,
) -> Emulator:
    """An emulator with a catalogue of ``skus`` (count or list) stocked at ``locations``. ``settings`` are
    platform knobs, e.g. ``rate_limit`` (Woo/Magento/PrestaShop requests/s) or ``restore_rate``/``bucket``
    (Shopify cost points)."""
    if isinstance(faults, dict):
        faults = Faults(**faults)
    return emulator_class(kind)(
        skus=skus,
        locations=locations,
        price_lists=price_lists,
        faults=faults,  # type: ignore[call-arg]
        **settings,
    )
