"""WooCommerce REST v3 sink.

One update item per SKU (stock and prices of a SKU travel together) in ``POST /products/batch`` or, for
variations, ``POST /products/<parent>/variations/batch`` (≤ 100 items per call). SKU → id (and
``parent_id``) via ``GET /products?sku=A,B,C`` (exact, covers variations), cached. ``locations`` maps a
shop location to ``stock`` (core ``stock_quantity``, sent with ``manage_stock: true``) or ``meta:<key>``
(the meta field a multi-location plugin reads). Prices go as strings (``regular_price`` / ``sale_price``).
"""

from __future__ import annotations

import logging
import time
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
from sinks.config import WooCommerceSinkConfig

log = logging.getLogger(__name__)
BATCH_LIMIT = 100


class WooCommerceSink(ShopSink):
    kind = "woocommerce"
    platform = "WooCommerce"
    unknown_sku = "no WooCommerce product"
    max_batch = BATCH_LIMIT

    def __init__(self, config: WooCommerceSinkConfig) -> None:
        auth = httpx.BasicAuth(
            config.consumer_key.get_secret_value(), config.consumer_secret.get_secret_value()
        )
        api = config.url.rstrip("/") + config.api_path
        super().__init__(config, api, rate=config.max_requests_per_second, auth=auth)
        self.cfg = config
        self.ids: dict[str, tuple[int, int, float]] = {}  # sku -> (id, parent_id, resolved_at)
        self.stats["lookups"] = 0

    def refusal(self, resp: httpx.Response) -> Permanent:
        return Permanent(_woo_message(resp), status=resp.status_code)

    # SKU resolution ------------------------------------------------------------------------------------
    def known(self, sku: str) -> bool:
        return sku in self.ids

    def resolve(self, skus: list[str]) -> None:
        for i in range(0, len(skus), 100):
            part = skus[i : i + 100]
            resp = self.call(
                "GET",
                "/products",
                params={"sku": ",".join(part), "per_page": 100, "_fields": "id,sku,parent_id,type"},
            )
            self.stats["lookups"] += 1
            now = time.monotonic()
            wanted = set(part)
            for p in json_answer(resp):
                if p.get("sku") in wanted:
                    self.ids[p["sku"]] = (int(p["id"]), int(p.get("parent_id") or 0), now)

    # push: hooks of Sink.push ---------------------------------------------------------------------------
    def groups(self, facts: list[Fact]) -> Iterator[tuple[int, list[Fact]]]:
        """One batch endpoint per parent (0: simple products), ≤ BATCH_LIMIT SKUs (items) per call."""
        by_parent: dict[int, dict[str, list[Fact]]] = {}
        for f in facts:
            by_parent.setdefault(self.ids[f.sku][1], {}).setdefault(f.sku, []).append(f)
        for parent, by_sku in by_parent.items():
            skus = list(by_sku)
            for i in range(0, len(skus), BATCH_LIMIT):
                yield parent, [f for s in skus[i : i + BATCH_LIMIT] for f in by_sku[s]]

    def write(self, group: int, facts: list[Fact], results: Results, started: float) -> None:
        by_sku: dict[str, list[Fact]] = {}
        for f in facts:
            by_sku.setdefault(f.sku, []).append(f)
        self._batch(group, list(by_sku), by_sku, results, started)

    def check(self, f: Fact) -> PushResult | None:
        # a location must map to the product's own stock or to a stock meta field (per-location plugins)
        if f.kind == "stock" and f.kind in self.cfg.kinds and self.cfg.locations:
            target = self.cfg.locations.get(f.location)
            if target is not None and not (target == "stock" or target.startswith("meta:")):
                return PushResult(
                    f.key, Outcome.PERMANENT, f"location {f.location!r} is not mapped for this sink"
                )
        return super().check(f)

    def _item(self, sku: str, facts: list[Fact]) -> dict[str, Any]:
        item: dict[str, Any] = {"id": self.ids[sku][0]}
        for f in facts:
            if f.kind == "stock":
                target = self.cfg.locations.get(f.location, "stock") if self.cfg.locations else "stock"
                if target == "stock":
                    item["manage_stock"] = True  # stock_quantity is ignored without it
                    item["stock_quantity"] = f.available
                else:
                    item.setdefault("meta_data", []).append({"key": target[5:], "value": str(f.available)})
            else:
                field = "regular_price" if self.cfg.price_lists[f.price_list] == "regular" else "sale_price"
                item[field] = format(f.amount, "f")
        return item

    def _batch(
        self,
        parent: int,
        skus: list[str],
        by_sku: dict[str, list[Fact]],
        results: Results,
        started: float,
    ) -> None:
        path = "/products/batch" if parent == 0 else f"/products/{parent}/variations/batch"
        try:
            resp = self.call("POST", path, json={"update": [self._item(s, by_sku[s]) for s in skus]})
            answers = (json_answer(resp) or {}).get("update") or []
        except (RetryLater, Permanent) as e:
            # refused as a whole: bisect the SKUs to isolate the item it objects to
            self.settle(
                e,
                [f for s in skus for f in by_sku[s]],
                results,
                units=skus,
                resend=lambda part: self._batch(parent, part, by_sku, results, started),
            )
            return
        by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
        for n, s in enumerate(skus):
            pid, _parent, resolved_at = self.ids[s]
            answer = by_id.get(pid) or (answers[n] if n < len(answers) else None)
            for f in by_sku[s]:
                if answer is None:
                    results[f.key] = PushResult(
                        f.key, Outcome.RETRY, "no result for this item in the batch answer"
                    )
                elif "error" in answer:
                    err = answer["error"] or {}
                    msg = f"{err.get('code')}: {err.get('message')}"
                    if err.get("code") == "woocommerce_rest_product_invalid_id":
                        # a cached id that went away is forgotten: re-resolved on the retry
                        results[f.key] = self.stale_or_refused(f, self.ids, resolved_at, started, msg)
                    else:
                        results[f.key] = PushResult(f.key, Outcome.PERMANENT, msg)
                else:
                    results[f.key] = PushResult(f.key, Outcome.OK)

    # snapshot ----------------------------------------------------------------------------------------
    def _pages(self, path: str) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            # the page is parsed inside the retry loop: an unreadable page ends the snapshot as a SinkError
            rows, pages = self.listing(lambda p=page: self._page(path, p))
            yield from rows
            if page >= pages:
                return
            page += 1

    def _page(self, path: str, page: int) -> tuple[list[dict[str, Any]], int]:
        resp = self.call("GET", path, params={"per_page": 100, "page": page})
        rows = json_answer(resp)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise RetryLater(f"{self.platform} listing page {page} is not a list of objects",
                             kind="bad_answer")
        return rows, int(resp.headers.get("X-WP-TotalPages") or 1)

    def snapshot(self) -> Iterator[Fact]:
        for p in self._pages("/products"):
            if p.get("type") == "variable":
                for v in self._pages(f"/products/{p['id']}/variations"):
                    yield from self._facts_of(v)
            else:
                yield from self._facts_of(p)

    def _facts_of(self, p: dict[str, Any]) -> Iterator[Fact]:
        sku = p.get("sku")
        if not sku:
            return
        if "stock" in self.cfg.kinds:
            meta = {m.get("key"): m.get("value") for m in p.get("meta_data") or []}
            for name, target in (self.cfg.locations or {"default": "stock"}).items():
                raw = (
                    p.get("stock_quantity")
                    if target == "stock" and p.get("manage_stock")
                    else meta.get(target[5:])
                    if target.startswith("meta:")
                    else None
                )
                if raw is not None and str(raw).lstrip("-").isdigit():
                    yield stock_fact(sku, name, int(raw))
        if "price" in self.cfg.kinds:
            for plist, field in self.cfg.price_lists.items():
                raw = p.get("regular_price" if field == "regular" else "sale_price")
                if raw:
                    yield price_fact(sku, plist, Decimal(raw), self.cfg.currency or "")


def _woo_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        return f"HTTP {resp.status_code} {body.get('code')}: {body.get('message')}"
    except (ValueError, AttributeError):
        return describe_http_error(resp)
