"""Magento 2 / Adobe Commerce REST sink.

Stock per MSI source: ``POST /V1/inventory/source-items`` (``locations``: name → source_code). Prices:
``POST /V1/products/base-prices`` (``regular``) and ``/V1/products/special-price`` (``sale``, in a fixed
from/to window so a re-send replaces rather than adds). Magento is keyed by SKU, so no id lookup is
needed. Lists respect the sync input limit (``max_list_items``, 20 by default). Source-items saves are all
or nothing: refused items are dead-lettered and the rest re-sent; price calls apply valid items and list
failures ``[{message, parameters}]``, mapped back to facts through the SKU among the parameters.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx

from cdc.facts import Fact, price_fact, stock_fact
from sinks.base import (
    Outcome,
    Permanent,
    PushResult,
    Results,
    RetryLater,
    ShopSink,
    describe_http_error,
    json_answer,
)
from sinks.config import MagentoSinkConfig

log = logging.getLogger(__name__)


def render(err: dict[str, Any]) -> str:
    """Magento's message with its %placeholders filled (list parameters are %1.. or named in order)."""
    msg, params = str(err.get("message", "")), err.get("parameters")
    if isinstance(params, dict):
        for k, v in params.items():
            msg = msg.replace(f"%{k}", str(v))
    elif isinstance(params, list):
        names = re.findall(r"%(\w+)", msg)
        for i, v in enumerate(params):
            msg = msg.replace(f"%{i + 1}", str(v))
            if i < len(names):
                msg = msg.replace(f"%{names[i]}", str(v), 1)
    return msg


def _param_values(err: dict[str, Any]) -> set[str]:
    p = err.get("parameters")
    vals = p.values() if isinstance(p, dict) else p if isinstance(p, list) else []
    return {str(v) for v in vals}


class MagentoSink(ShopSink):
    kind = "magento"
    platform = "Magento"

    def __init__(self, config: MagentoSinkConfig) -> None:
        self.max_batch = config.max_list_items
        super().__init__(
            config,
            f"{config.url.rstrip('/')}/rest/{config.store_code}/V1",
            {"Authorization": f"Bearer {config.token.get_secret_value()}"},
            rate=config.max_requests_per_second,
        )
        self.cfg = config

    def refusal(self, resp: httpx.Response) -> Permanent:
        try:
            body = resp.json()
        except ValueError:
            body = None
        msg = render(body) if isinstance(body, dict) else describe_http_error(resp)
        return Permanent(f"HTTP {resp.status_code}: {msg}", status=resp.status_code, body=body)

    # push: hooks of Sink.push (Magento is keyed by SKU: nothing to resolve) ---------------------------
    def groups(self, facts: list[Fact]) -> Iterator[tuple[str, list[Fact]]]:
        """Stock, then base prices, then special prices, ≤ max_list_items per request."""
        by_group: dict[str, list[Fact]] = {"stock": [], "regular": [], "sale": []}
        for f in facts:
            if f.kind == "stock":
                by_group["stock"].append(f)
            else:
                by_group["regular" if self.cfg.price_lists[f.price_list] == "regular" else "sale"].append(f)
        n = self.cfg.max_list_items
        for group, part in by_group.items():
            for i in range(0, len(part), n):
                yield group, part[i : i + n]

    def write(self, group: str, facts: list[Fact], results: Results, started: float) -> None:
        if group == "stock":
            self._stock(facts, results)
        else:
            self._prices(facts, group == "sale", results)

    def _source(self, f: Fact) -> str:
        return self.cfg.locations.get(f.location, f.location)

    def _stock(self, facts: list[Fact], results: Results) -> None:
        pending = facts
        while pending:
            items = [
                {
                    "sku": f.sku,
                    "source_code": self._source(f),
                    "quantity": f.available,
                    "status": 1 if f.available > 0 else 0,
                }
                for f in pending
            ]
            try:
                # the answer is a JSON list ([]): a text page of something in front tells nothing applied
                json_answer(self.call("POST", "/inventory/source-items", json={"sourceItems": items}))
            except (RetryLater, Permanent) as e:
                culprits = self._culprits(e, pending) if isinstance(e, Permanent) else {}
                if not culprits:  # cannot tell which item: bisect to isolate it
                    self.settle(e, pending, results, resend=lambda part: self._stock(part, results))
                    return
                for i, msg in culprits.items():
                    results[pending[i].key] = PushResult(pending[i].key, Outcome.PERMANENT, msg)
                pending = [f for i, f in enumerate(pending) if i not in culprits]  # all-or-nothing: re-send
                continue
            for f in pending:
                results[f.key] = PushResult(f.key, Outcome.OK)
            return

    def _culprits(self, e: Permanent, pending: list[Fact]) -> dict[int, str]:
        """The items of a refused source-items save that its ``errors`` name (by SKU and source code)."""
        errors = (e.body or {}).get("errors") if isinstance(e.body, dict) else None
        culprits: dict[int, str] = {}
        for err in errors or []:
            vals = _param_values(err)
            for i, f in enumerate(pending):
                code_ok = "code" not in (err.get("parameters") or {}) or self._source(f) in vals
                if f.sku in vals and code_ok:
                    culprits[i] = render(err)
        return culprits

    def _prices(self, facts: list[Fact], special: bool, results: Results) -> None:
        rows = []
        for f in facts:
            row: dict[str, Any] = {"price": float(f.amount), "store_id": self.cfg.store_id, "sku": f.sku}
            if special:
                row.update(price_from=self.cfg.special_price_from, price_to=self.cfg.special_price_to)
            rows.append(row)
        path = "/products/special-price" if special else "/products/base-prices"
        try:
            failed = json_answer(self.call("POST", path, json={"prices": rows})) or []
        except (RetryLater, Permanent) as e:
            self.settle(e, facts, results, resend=lambda part: self._prices(part, special, results))
            return
        bad: dict[str, str] = {}
        for err in failed if isinstance(failed, list) else []:
            vals = _param_values(err)
            for f in facts:
                if f.sku in vals:
                    bad[f.sku] = render(err)
        for f in facts:
            results[f.key] = (
                PushResult(f.key, Outcome.PERMANENT, bad[f.sku])
                if f.sku in bad
                else PushResult(f.key, Outcome.OK)
            )

    # snapshot ----------------------------------------------------------------------------------------
    def _pages(self, path: str) -> Iterator[dict[str, Any]]:
        page, size = 1, 300
        while True:
            params = {"searchCriteria[pageSize]": size, "searchCriteria[currentPage]": page}
            body = self.listing(lambda p=params: self.call("GET", path, params=p).json())
            yield from body["items"]
            if page * size >= int(body["total_count"]):
                return
            page += 1

    def snapshot(self) -> Iterator[Fact]:
        names = {v: k for k, v in self.cfg.locations.items()}
        if "stock" in self.cfg.kinds:
            for row in self._pages("/inventory/source-items"):
                name = names.get(row["source_code"], None if self.cfg.locations else row["source_code"])
                if name is not None:
                    yield stock_fact(row["sku"], name, int(float(row["quantity"])))
        if "price" not in self.cfg.kinds or not self.cfg.price_lists:
            return
        currency = self.cfg.currency or ""
        lists = self.cfg.price_lists
        batch: list[str] = []

        def specials(skus: list[str]) -> Iterator[Fact]:
            body = self.listing(
                lambda: self.call("POST", "/products/special-price-information", json={"skus": skus}).json()
            )
            for row in body:
                if row.get("store_id") == self.cfg.store_id:
                    for plist in (k for k, v in lists.items() if v == "sale"):
                        yield price_fact(row["sku"], plist, Decimal(str(row["price"])), currency)

        for p in self._pages("/products"):
            for plist in (k for k, v in lists.items() if v == "regular"):
                yield price_fact(p["sku"], plist, Decimal(str(p["price"])), currency)
            if "sale" in lists.values():
                batch.append(p["sku"])
                if len(batch) == self.cfg.max_list_items:
                    yield from specials(batch)
                    batch = []
        if batch:
            yield from specials(batch)
