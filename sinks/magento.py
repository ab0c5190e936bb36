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
from sinks.config import MagentoSinkConfig

log = logging.getLogger(__name__)


class _Refused(Exception):
    def __init__(self, message: str, body: Any) -> None:
        super().__init__(message)
        self.body = body


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


class MagentoSink(Sink):
    kind = "magento"

    def __init__(self, config: MagentoSinkConfig) -> None:
        self.max_batch = config.max_list_items
        super().__init__(config)
        self.cfg = config
        self.base = f"{config.url.rstrip('/')}/rest/{config.store_code}/V1"
        self.client = http_client(config, {"Authorization": f"Bearer {config.token.get_secret_value()}"})
        self.pacer = Pacer(config.max_requests_per_second)
        self.stats = {"calls": 0, "throttled": 0}

    def close(self) -> None:
        self.client.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        resp = send(self.client, self.pacer, self.stats, "Magento", method, self.base + path, **kw)
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = None
            msg = render(body) if isinstance(body, dict) else describe_http_error(resp)
            raise _Refused(f"HTTP {resp.status_code}: {msg}", body)
        return resp

    # push --------------------------------------------------------------------------------------------
    def push(self, facts: list[Fact]) -> list[PushResult]:
        results: dict[FactKey, PushResult] = {}
        stock, regular, sale = [], [], []
        for f in newest_per_key(facts).values():
            problem = self.check(f)
            if problem:
                results[f.key] = problem
            elif f.kind == "stock":
                stock.append(f)
            elif self.cfg.price_lists[f.price_list] == "regular":
                regular.append(f)
            else:
                sale.append(f)
        n = self.cfg.max_list_items
        for i in range(0, len(stock), n):
            self._stock(stock[i : i + n], results)
        for group, special in ((regular, False), (sale, True)):
            for i in range(0, len(group), n):
                self._prices(group[i : i + n], special, results)
        return [results[f.key] for f in facts]

    def _source(self, f: Fact) -> str:
        return self.cfg.locations.get(f.location, f.location)

    def _stock(self, facts: list[Fact], results: dict[FactKey, PushResult]) -> None:
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
                self._call("POST", "/inventory/source-items", json={"sourceItems": items})
            except _Retry as e:
                for f in pending:
                    results[f.key] = PushResult(f.key, Outcome.RETRY, str(e), e.retry_after, e.throttled)
                return
            except _Refused as e:
                errors = (e.body or {}).get("errors") if isinstance(e.body, dict) else None
                culprits: dict[int, str] = {}
                for err in errors or []:
                    vals = _param_values(err)
                    for i, f in enumerate(pending):
                        code_ok = "code" not in (err.get("parameters") or {}) or self._source(f) in vals
                        if f.sku in vals and code_ok:
                            culprits[i] = render(err)
                if not culprits:
                    if len(pending) == 1:
                        results[pending[0].key] = PushResult(pending[0].key, Outcome.PERMANENT, str(e))
                        return
                    half = len(pending) // 2  # cannot tell which item: bisect to isolate it
                    self._stock(pending[:half], results)
                    self._stock(pending[half:], results)
                    return
                for i, msg in culprits.items():
                    results[pending[i].key] = PushResult(pending[i].key, Outcome.PERMANENT, msg)
                pending = [f for i, f in enumerate(pending) if i not in culprits]  # all-or-nothing: re-send
                continue
            for f in pending:
                results[f.key] = PushResult(f.key, Outcome.OK)
            return

    def _prices(self, facts: list[Fact], special: bool, results: dict[FactKey, PushResult]) -> None:
        rows = []
        for f in facts:
            row: dict[str, Any] = {"price": float(f.amount), "store_id": self.cfg.store_id, "sku": f.sku}
            if special:
                row.update(price_from=self.cfg.special_price_from, price_to=self.cfg.special_price_to)
            rows.append(row)
        path = "/products/special-price" if special else "/products/base-prices"
        try:
            failed = self._call("POST", path, json={"prices": rows}).json() or []
        except _Retry as e:
            for f in facts:
                results[f.key] = PushResult(f.key, Outcome.RETRY, str(e), e.retry_after, e.throttled)
            return
        except (_Refused, ValueError) as e:
            if len(facts) > 1:
                half = len(facts) // 2
                self._prices(facts[:half], special, results)
                self._prices(facts[half:], special, results)
            else:
                results[facts[0].key] = PushResult(facts[0].key, Outcome.PERMANENT, str(e))
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
    def _retrying(self, method: str, path: str, attempts: int = 5, **kw: Any) -> Any:
        for attempt in range(1, attempts + 1):
            try:
                return self._call(method, path, **kw).json()
            except _Retry as e:
                if attempt == attempts:
                    raise SinkError(f"Magento kept failing: {e}") from None
                time.sleep(min(e.retry_after or 0.5 * attempt, 10.0))
            except _Refused as e:
                raise SinkError(str(e)) from None
        raise AssertionError

    def _pages(self, path: str) -> Iterator[dict[str, Any]]:
        page, size = 1, 300
        while True:
            body = self._retrying(
                "GET", path, params={"searchCriteria[pageSize]": size, "searchCriteria[currentPage]": page}
            )
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
            body = self._retrying("POST", "/products/special-price-information", json={"skus": skus})
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
