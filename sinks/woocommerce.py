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

from cdc.facts import Fact, FactKey, price_fact, stock_fact
from sinks.base import (
    Outcome,
    Pacer,
    PushResult,
    Sink,
    SinkError,
    describe_http_error,
    http_client,
    newest_per_key,
    send,
)
from sinks.base import RetryLater as _Retry
from sinks.config import WooCommerceSinkConfig

log = logging.getLogger(__name__)
BATCH_LIMIT = 100


class _Permanent(Exception):
    pass


class WooCommerceSink(Sink):
    kind = "woocommerce"
    max_batch = BATCH_LIMIT

    def __init__(self, config: WooCommerceSinkConfig) -> None:
        super().__init__(config)
        self.cfg = config
        self.base = config.url.rstrip("/") + config.api_path
        auth = httpx.BasicAuth(
            config.consumer_key.get_secret_value(), config.consumer_secret.get_secret_value()
        )
        self.client = http_client(config, auth=auth)
        self.pacer = Pacer(config.max_requests_per_second)
        self.ids: dict[str, tuple[int, int, float]] = {}  # sku -> (id, parent_id, resolved_at)
        self.stats = {"calls": 0, "throttled": 0, "lookups": 0}

    def close(self) -> None:
        self.client.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        resp = send(self.client, self.pacer, self.stats, "WooCommerce", method, self.base + path, **kw)
        if resp.status_code >= 400:
            raise _Permanent(_woo_message(resp))
        return resp

    # SKU resolution ------------------------------------------------------------------------------------
    def resolve(self, skus: list[str]) -> None:
        for i in range(0, len(skus), 100):
            part = skus[i : i + 100]
            resp = self._call(
                "GET",
                "/products",
                params={"sku": ",".join(part), "per_page": 100, "_fields": "id,sku,parent_id,type"},
            )
            self.stats["lookups"] += 1
            now = time.monotonic()
            wanted = set(part)
            for p in resp.json():
                if p.get("sku") in wanted:
                    self.ids[p["sku"]] = (int(p["id"]), int(p.get("parent_id") or 0), now)

    # push --------------------------------------------------------------------------------------------
    def push(self, facts: list[Fact]) -> list[PushResult]:
        started = time.monotonic()
        results: dict[FactKey, PushResult] = {}
        todo = []
        for f in newest_per_key(facts).values():
            problem = self.check(f)
            if problem:
                results[f.key] = problem
            else:
                todo.append(f)
        missing = sorted({f.sku for f in todo if f.sku not in self.ids})
        if missing:
            try:
                self.resolve(missing)
            except (_Retry, _Permanent) as e:
                outcome = Outcome.RETRY if isinstance(e, _Retry) else Outcome.PERMANENT
                for f in todo:
                    results[f.key] = PushResult(
                        f.key, outcome, f"SKU lookup failed: {e}", getattr(e, "retry_after", None)
                    )
                todo = []
        by_sku: dict[str, list[Fact]] = {}
        for f in todo:
            if f.sku not in self.ids:
                results[f.key] = PushResult(
                    f.key, Outcome.PERMANENT, f"unknown SKU {f.sku!r}: no WooCommerce product"
                )
            else:
                by_sku.setdefault(f.sku, []).append(f)
        by_parent: dict[int, list[str]] = {}
        for sku in by_sku:
            by_parent.setdefault(self.ids[sku][1], []).append(sku)
        for parent, skus in by_parent.items():
            for i in range(0, len(skus), BATCH_LIMIT):
                self._batch(parent, skus[i : i + BATCH_LIMIT], by_sku, results, started)
        return [results[f.key] for f in facts]

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
        results: dict[FactKey, PushResult],
        started: float,
    ) -> None:
        path = "/products/batch" if parent == 0 else f"/products/{parent}/variations/batch"
        try:
            resp = self._call("POST", path, json={"update": [self._item(s, by_sku[s]) for s in skus]})
            answers = (resp.json() or {}).get("update") or []
        except _Retry as e:
            for s in skus:
                for f in by_sku[s]:
                    results[f.key] = PushResult(f.key, Outcome.RETRY, str(e), e.retry_after, e.throttled)
            return
        except (_Permanent, ValueError) as e:
            if len(skus) > 1:  # refused as a whole: isolate the item it objects to
                half = len(skus) // 2
                self._batch(parent, skus[:half], by_sku, results, started)
                self._batch(parent, skus[half:], by_sku, results, started)
                return
            for f in by_sku[skus[0]]:
                results[f.key] = PushResult(f.key, Outcome.PERMANENT, str(e))
            return
        by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
        for n, s in enumerate(skus):
            pid = self.ids[s][0]
            answer = by_id.get(pid) or (answers[n] if n < len(answers) else None)
            for f in by_sku[s]:
                if answer is None:
                    results[f.key] = PushResult(
                        f.key, Outcome.RETRY, "no result for this item in the batch answer"
                    )
                elif "error" in answer:
                    err = answer["error"] or {}
                    msg = f"{err.get('code')}: {err.get('message')}"
                    if err.get("code") == "woocommerce_rest_product_invalid_id" and self.ids[s][2] < started:
                        self.ids.pop(s, None)  # cached id went away; re-resolve on the retry
                        results[f.key] = PushResult(
                            f.key, Outcome.RETRY, f"stale id cache for {s!r}: {msg}", 0.0
                        )
                    else:
                        results[f.key] = PushResult(f.key, Outcome.PERMANENT, msg)
                else:
                    results[f.key] = PushResult(f.key, Outcome.OK)

    # snapshot ----------------------------------------------------------------------------------------
    def _pages(self, path: str) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            resp = self._retrying(lambda p=page: self._call("GET", path, params={"per_page": 100, "page": p}))
            yield from resp.json()
            if page >= int(resp.headers.get("X-WP-TotalPages") or 1):
                return
            page += 1

    def _retrying(self, call: Any, attempts: int = 5) -> httpx.Response:
        for attempt in range(1, attempts + 1):
            try:
                return call()  # type: ignore[no-any-return]
            except _Retry as e:
                if attempt == attempts:
                    raise SinkError(f"WooCommerce kept failing: {e}") from None
                time.sleep(min(e.retry_after or 0.5 * attempt, 10.0))
            except _Permanent as e:
                raise SinkError(str(e)) from None
        raise AssertionError

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
