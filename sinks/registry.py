"""kind → (Sink class, Emulator class). Imports are lazy so a CLI run loads only the platform it uses."""

from __future__ import annotations

import importlib
from typing import Any

from sinks.base import Sink
from sinks.config import SinkConfigBase
from sinks.emulators.base import Emulator, Faults

_KINDS: dict[str, tuple[str, str]] = {
    "shopify": ("sinks.shopify:ShopifySink", "sinks.emulators.shopify:ShopifyEmulator"),
    "woocommerce": ("sinks.woocommerce:WooCommerceSink", "sinks.emulators.woocommerce:WooCommerceEmulator"),
    "magento": ("sinks.magento:MagentoSink", "sinks.emulators.magento:MagentoEmulator"),
    "prestashop": ("sinks.prestashop:PrestaShopSink", "sinks.emulators.prestashop:PrestaShopEmulator"),
    "webhook": ("sinks.webhook:WebhookSink", "sinks.emulators.webhook:WebhookEmulator"),
}
KINDS = tuple(_KINDS)


def _load(ref: str, kind: str) -> Any:
    module, name = ref.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(
            f"sink kind {kind!r} is registered but {module}.{name} is not available: {e}"
        ) from e


def _entry(kind: str) -> tuple[str, str]:
    try:
        return _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown sink kind {kind!r}; known: {', '.join(KINDS)}") from None


def sink_class(kind: str) -> type[Sink]:
    return _load(_entry(kind)[0], kind)  # type: ignore[no-any-return]


def emulator_class(kind: str) -> type[Emulator]:
    return _load(_entry(kind)[1], kind)  # type: ignore[no-any-return]


def make_sink(config: SinkConfigBase) -> Sink:
    return sink_class(config.kind)(config)  # type: ignore[attr-defined,call-arg]


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
