"""Facts: the only thing sinks see. A fact is a value to *set* in the shop, never a delta to add."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

FactKind = Literal["stock", "price"]


@dataclass(frozen=True, slots=True)
class FactKey:
    """(kind, sku, scope) where scope is the shop location (stock) or the price list (price)."""

    kind: str
    sku: str
    scope: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.sku}@{self.scope}"


@dataclass(frozen=True, slots=True)
class Fact:
    """One value to set in a shop.

    stock: ``value = {"available": int}``; price: ``value = {"amount": Decimal, "currency": str,
    "compare_at": Decimal | None}``. ``version`` grows with every change of any fact (the outbox assigns
    it) so that an older value can always be told from a newer one. ``commit_ts`` is the ERP commit time
    (epoch seconds) of the change that produced the value, for end-to-end latency; ``position`` is its
    source position.
    """

    key: FactKey
    value: dict[str, Any]
    version: int = 0
    position: str = ""
    commit_ts: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.key.kind

    @property
    def sku(self) -> str:
        return self.key.sku

    @property
    def location(self) -> str:
        return self.key.scope

    @property
    def price_list(self) -> str:
        return self.key.scope

    @property
    def available(self) -> int:
        return int(self.value["available"])

    @property
    def amount(self) -> Decimal:
        return Decimal(str(self.value["amount"]))

    def to_json(self) -> dict[str, Any]:
        """Wire form (webhook bodies, NATS messages). Decimals travel as strings, never floats."""
        body: dict[str, Any] = {"kind": self.kind, "sku": self.sku}
        body["location" if self.kind == "stock" else "price_list"] = self.key.scope
        body.update({k: (str(v) if isinstance(v, Decimal) else v) for k, v in self.value.items()})
        body.update({"version": self.version, "position": self.position, "erp_commit_ts": self.commit_ts})
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Fact:
        """The inverse of ``to_json`` (a NATS message's body). Raises KeyError / ValueError / TypeError on a
        body that is not a fact."""
        kind = body["kind"]
        scope = body["location"] if kind == "stock" else body["price_list"]
        value = {k: v for k, v in body.items() if k not in _WIRE_META}
        if kind == "price":
            for k in ("amount", "compare_at"):
                if value.get(k) is not None:
                    value[k] = Decimal(value[k])
        return cls(FactKey(kind, body["sku"], scope), value, int(body["version"]), body.get("position") or "",
                   float(body.get("erp_commit_ts") or 0.0))


_WIRE_META = {"kind", "sku", "location", "price_list", "version", "position", "erp_commit_ts"}


def stock_fact(sku: str, location: str, available: int, **kw: Any) -> Fact:
    return Fact(FactKey("stock", sku, location), {"available": int(available)}, **kw)


def price_fact(
    sku: str, price_list: str, amount: Decimal, currency: str, compare_at: Decimal | None = None, **kw: Any
) -> Fact:
    return Fact(
        FactKey("price", sku, price_list),
        {"amount": amount, "currency": currency, "compare_at": compare_at},
        **kw,
    )


def encode_value(value: dict[str, Any]) -> str:
    """Canonical JSON for storage: Decimals as strings, sorted keys (so equal values compare equal)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def decode_value(kind: str, text: str) -> dict[str, Any]:
    value = json.loads(text)
    if kind == "price":
        for k in ("amount", "compare_at"):
            if value.get(k) is not None:
                value[k] = Decimal(value[k])
    return value
