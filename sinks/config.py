"""Sink settings (each entry of ``sinks:``). One model per kind; add a kind by adding a model here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class SinkConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str = Field(description="base URL of the shop (or webhook endpoint)")
    timeout_seconds: float = Field(10.0, gt=0)
    max_batch: int | None = Field(None, gt=0, description="cap below the platform's own batch limit")
    max_attempts: int = Field(20, ge=1, description="retryable failures before a fact goes to the DLQ")
    ca_file: str | None = Field(None, description="CA bundle to verify the shop's TLS certificate")
    verify_tls: bool = Field(True, description="turn off only for a lab; production must verify")
    locations: dict[str, str] = Field(
        default_factory=dict, description="shop-side location name -> platform location id"
    )
    price_lists: dict[str, str] = Field(
        default_factory=dict, description="ERP price list -> the shop price field it feeds"
    )
    kinds: list[Literal["stock", "price"]] = Field(default_factory=lambda: ["stock", "price"])


class WebhookSinkConfig(SinkConfigBase):
    kind: Literal["webhook"] = "webhook"
    secret: SecretStr | None = Field(None, description="HMAC-SHA256 key for the X-Erpsync-Signature header")
    batch_size: int = Field(500, gt=0, le=10_000)
    list_url: str | None = Field(
        None, description="GET returning {stock: {sku: {location: qty}}, prices: {sku: {list: {amount, "
        "currency, compare_at}}}} so the reconciler can list the receiver's state"
    )


# Add each new kind to this union; pydantic picks the model by ``kind``.
SinkConfig = WebhookSinkConfig
