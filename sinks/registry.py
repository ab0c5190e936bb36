"""kind → Sink class. Imports are lazy so a CLI run loads only the platform it uses. The emulators have
their own table (sinks/registry_emulators.py), so making a sink never imports one."""

from __future__ import annotations

import importlib
from typing import Any

from sinks.base import Sink
from sinks.config import SinkConfigBase

_SINKS: dict[str, str] = {
    "shopify": "sinks.shopify:ShopifySink",
    "woocommerce": "sinks.woocommerce:WooCommerceSink",
    "magento": "sinks.magento:MagentoSink",
    "prestashop": "sinks.prestashop:PrestaShopSink",
    "webhook": "sinks.webhook:WebhookSink",
}
KINDS = tuple(_SINKS)


def load(table: dict[str, str], kind: str) -> Any:
    """The class registered for ``kind`` in ``table`` ("module:name" values), imported now."""
    try:
        module, name = table[kind].split(":")
    except KeyError:
        raise ValueError(f"unknown sink kind {kind!r}; known: {', '.join(table)}") from None
    return getattr(importlib.import_module(module), name)


def sink_class(kind: str) -> type[Sink]:
    return load(_SINKS, kind)  # type: ignore[no-any-return]


def make_sink(config: SinkConfigBase) -> Sink:
    return sink_class(config.kind)(config)  # type: ignore[attr-defined,call-arg]
