"""Sink settings (each entry of ``sinks:``). One model per kind; add a kind by adding a model here."""

from __future__ import annotations

import ipaddress
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

# A duration or rate: finite and positive (``.inf``, ``.nan``, 0 and negatives are refused at config load).
Seconds = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]


def check_url(url: str) -> str:
    """An http(s) URL with a host and, if given, a port in 1..65535. The message never echoes the URL
    (it may hold credentials)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL (a scheme and a host)")
    if not parts.hostname:
        raise ValueError("has no host (expected http(s)://host[:port]/path)")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ValueError("port must be a number from 1 to 65535")
    return url.strip()


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_to_remote(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and not is_loopback(parts.hostname or "")


class SinkConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str = Field(description="base URL of the shop (or webhook endpoint)")
    timeout_seconds: Seconds = 10.0
    max_batch: int | None = Field(None, gt=0, description="cap below the platform's own batch limit")
    max_attempts: int = Field(
        20, ge=1, description="retryable failures of one fact while the shop serves others, before the DLQ "
        "(a whole-shop outage never dead-letters: facts wait in the outbox)")
    ca_file: str | None = Field(None, description="CA bundle to verify the shop's TLS certificate")
    verify_tls: bool = Field(True, description="turn off only for a lab; production must verify")
    locations: dict[str, str] = Field(
        default_factory=dict, description="shop-side location name -> platform location id"
    )
    price_lists: dict[str, str] = Field(
        default_factory=dict, description="ERP price list -> the shop price field it feeds"
    )
    kinds: list[Literal["stock", "price"]] = Field(default_factory=lambda: ["stock", "price"])

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        return check_url(v)

    def config_warnings(self) -> list[str]:
        """Dangerous but legitimate settings, as ``field: why`` lines (config validate prints them, run logs
        them)."""
        out = []
        if not self.verify_tls:
            out.append("verify_tls: false: the shop's TLS certificate is not checked, so anyone on the path "
                       "can read and change what is sent (a lab only)")
        return out


class WebhookSinkConfig(SinkConfigBase):
    kind: Literal["webhook"] = "webhook"
    secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key of the webhook-signature header (Standard Webhooks); required "
        "unless unsigned: true")
    unsigned: bool = Field(False, description="send without a signature (the receiver cannot tell a forged "
                           "or replayed push): an explicit opt-in, warned about")
    batch_size: int = Field(500, gt=0, le=10_000)
    list_url: str | None = Field(
        None, description="GET returning {stock: {sku: {location: qty}}, prices: {sku: {list: {amount, "
        "currency, compare_at}}}} so the reconciler can list the receiver's state"
    )
    list_timeout_seconds: Seconds = Field(
        120.0, description="timeout of the list_url GET (one response holding the whole catalogue)"
    )

    @field_validator("list_url")
    @classmethod
    def _check_list_url(cls, v: str | None) -> str | None:
        return None if v is None else check_url(v)

    @field_validator("secret")
    @classmethod
    def _secret_not_empty(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("is empty: set the receiver's key or opt in with unsigned: true")
        return v

    def config_warnings(self) -> list[str]:
        out = super().config_warnings()
        if self.unsigned and self.secret is None:
            out.append("unsigned: true: pushes are not signed, so the receiver cannot tell them from forged "
                       "or replayed ones")
        return out


PriceField = Literal["regular", "sale", "compare_at"]


class _ShopConfig(SinkConfigBase):
    """Shared by the shop platforms: which price fields the platform has, and an optional client-side
    request pacer (hosts and WAFs in front of Woo/Magento/PrestaShop often answer 429 above some rate)."""

    allowed_price_fields: ClassVar[frozenset[str]] = frozenset({"regular", "sale", "compare_at"})
    max_requests_per_second: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="pace requests client-side to stay under the host's rate limit"
    )
    currency: str | None = Field(
        None, description="the shop's currency: price facts in another currency are refused; used by snapshot"
    )
    insecure_http: bool = Field(
        False, description="allow plain http:// to a non-loopback host (the token travels in clear): a lab"
    )

    @model_validator(mode="after")
    def _check_price_fields(self) -> _ShopConfig:
        bad = {k: v for k, v in self.price_lists.items() if v not in self.allowed_price_fields}
        if bad:
            raise ValueError(
                f"price_lists: {getattr(self, 'kind', '?')} supports {sorted(self.allowed_price_fields)}, "
                f"not {sorted(set(bad.values()))}"
            )
        return self

    @model_validator(mode="after")
    def _check_plain_http(self) -> _ShopConfig:
        if plain_http_to_remote(self.url) and not self.insecure_http:
            raise ValueError(
                "url: plain http:// to a non-loopback host would send the shop's token in clear; use "
                "https:// (or, for a lab, opt in with insecure_http: true)")
        return self

    def config_warnings(self) -> list[str]:
        out = super().config_warnings()
        if plain_http_to_remote(self.url):
            out.append("insecure_http: true: the shop's token goes over plain http:// to a non-loopback host")
        return out


class ShopifySinkConfig(_ShopConfig):
    """Shopify Admin GraphQL. ``locations``: name -> ``gid://shopify/Location/N``; ``price_lists``: list ->
    ``regular`` (variant price) or ``compare_at`` (compareAtPrice)."""

    kind: Literal["shopify"] = "shopify"
    allowed_price_fields: ClassVar[frozenset[str]] = frozenset({"regular", "compare_at"})
    access_token: SecretStr = Field(description="Admin API access token (X-Shopify-Access-Token)")
    api_version: str = Field("2025-07", pattern=r"^(\d{4}-\d{2}|unstable)$")
    quantity_name: Literal["available", "on_hand"] = "available"
    reason: str = Field("correction", description="inventorySetQuantities reason")
    reference_document_uri: str | None = Field("erpsync://erp", description="in Shopify's stock history")
    compare_quantity: Literal["ignore", "last_known"] = Field(
        "ignore",
        description="ignore: opt out of compare-and-set where the API version allows it; last_known: send "
        "the quantity last read/written as compareQuantity/changeFromQuantity (forced from 2026-04)",
    )
    pace: bool = Field(True, description="client-side leaky bucket mirroring the server's cost throttle")
    price_products_per_request: int = Field(
        10, ge=1, le=50, description="productVariantsBulkUpdate calls (one product each) aliased per request"
    )
    snapshot_mode: Literal["bulk", "pages"] = "bulk"
    bulk_poll_seconds: Seconds = 1.0


class WooCommerceSinkConfig(_ShopConfig):
    """WooCommerce REST v3. ``locations``: name -> ``stock`` (core stock_quantity) or ``meta:<key>`` (a
    multi-location plugin's meta field); ``price_lists``: list -> ``regular`` or ``sale``."""

    kind: Literal["woocommerce"] = "woocommerce"
    allowed_price_fields: ClassVar[frozenset[str]] = frozenset({"regular", "sale"})
    consumer_key: SecretStr
    consumer_secret: SecretStr
    api_path: str = Field("/wp-json/wc/v3", description="REST base under url")


class MagentoSinkConfig(_ShopConfig):
    """Magento 2 / Adobe Commerce REST. ``locations``: name -> MSI source_code; ``price_lists``: list ->
    ``regular`` (base-prices) or ``sale`` (special-price)."""

    kind: Literal["magento"] = "magento"
    allowed_price_fields: ClassVar[frozenset[str]] = frozenset({"regular", "sale"})
    token: SecretStr = Field(description="integration / admin bearer token")
    store_code: str = Field("all", description="/rest/<store_code>/V1/...")
    store_id: int = Field(0, ge=0, description="store_id of base and special prices (0 = global)")
    max_list_items: int = Field(20, ge=1, le=5000, description="the shop's input-list limit per sync request")
    special_price_from: str = Field("2000-01-01 00:00:00", description="fixed window: re-sends replace")
    special_price_to: str = Field("2099-12-31 23:59:59")


class PrestaShopSinkConfig(_ShopConfig):
    """PrestaShop Webservice. ``locations``: name -> id_shop; ``price_lists``: list -> ``regular``
    (products.price, tax excluded)."""

    kind: Literal["prestashop"] = "prestashop"
    allowed_price_fields: ClassVar[frozenset[str]] = frozenset({"regular"})
    webservice_key: SecretStr
    concurrency: int = Field(8, ge=1, le=64, description="requests in flight (the API has no batch)")


# Add each new kind to this union; pydantic picks the model by ``kind``.
SinkConfig = Annotated[
    WebhookSinkConfig | ShopifySinkConfig | WooCommerceSinkConfig | MagentoSinkConfig | PrestaShopSinkConfig,
    Field(discriminator="kind"),
]
