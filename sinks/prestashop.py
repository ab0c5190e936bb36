"""PrestaShop Webservice sink.

The API has no batch endpoint, so writes are single ``PATCH`` requests (XML bodies) pipelined through a
thread pool of ``concurrency`` workers. Lookups are batched: SKU → product id via
``products?filter[reference]=[A|B]``, then stock_available ids for all those products in one
``stock_availables?filter[id_product]=[..]&filter[id_product_attribute]=[0]`` read (JSON output), both
cached. ``locations`` maps a shop location to ``id_shop``; the ``regular`` price list writes
``products.price`` (tax excluded).
"""

from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any
from xml.sax.saxutils import escape

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
from sinks.config import PrestaShopSinkConfig

log = logging.getLogger(__name__)
LOOKUP_CHUNK = 50  # references per filter (keeps URLs well under server limits)


class _Permanent(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def presta_message(resp: httpx.Response) -> str:
    """``code: message`` from PrestaShop's XML (or JSON) error body."""
    try:
        if "json" in resp.headers.get("content-type", ""):
            errs = resp.json().get("errors") or []
            return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs) or describe_http_error(
                resp
            )
        root = ET.fromstring(resp.content)
        errs = root.findall("./errors/error")
        text = "; ".join(
            f"{(e.findtext('code') or '').strip()}: {(e.findtext('message') or '').strip()}" for e in errs
        )
        return f"HTTP {resp.status_code} {text}" if text else describe_http_error(resp)
    except (ET.ParseError, ValueError, AttributeError):
        return describe_http_error(resp)


class PrestaShopSink(Sink):
    kind = "prestashop"
    max_batch = 100  # facts per push; each is its own request, pipelined

    def __init__(self, config: PrestaShopSinkConfig) -> None:
        super().__init__(config)
        self.cfg = config
        self.base = config.url.rstrip("/") + "/api"
        limits = httpx.Limits(
            max_connections=config.concurrency, max_keepalive_connections=config.concurrency
        )
        self.client = http_client(
            config, auth=httpx.BasicAuth(config.webservice_key.get_secret_value(), ""), limits=limits
        )
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix=f"presta-{config.name}")
        self.pacer = Pacer(config.max_requests_per_second)
        self.products: dict[str, tuple[int, float]] = {}  # sku -> (id_product, resolved_at)
        self.stock_ids: dict[tuple[int, str], int] = {}  # (id_product, id_shop) -> stock_available id
        self.stats = {"calls": 0, "throttled": 0, "lookups": 0}

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        resp = send(self.client, self.pacer, self.stats, "PrestaShop", method, self.base + path, **kw)
        if resp.status_code >= 400:
            raise _Permanent(presta_message(resp), resp.status_code)
        return resp

    @staticmethod
    def _rows(resp: httpx.Response, resource: str) -> list[dict[str, Any]]:
        body = resp.json()
        return body.get(resource, []) if isinstance(body, dict) else []  # an empty result is a bare []

    # resolution --------------------------------------------------------------------------------------
    def resolve(self, skus: list[str]) -> None:
        found: list[int] = []
        for i in range(0, len(skus), LOOKUP_CHUNK):
            part = skus[i : i + LOOKUP_CHUNK]
            resp = self._call(
                "GET",
                "/products",
                params={
                    "filter[reference]": f"[{'|'.join(part)}]",
                    "display": "[id,reference]",
                    "output_format": "JSON",
                },
            )
            self.stats["lookups"] += 1
            now, wanted = time.monotonic(), set(part)
            for row in self._rows(resp, "products"):
                if row.get("reference") in wanted:
                    self.products[row["reference"]] = (int(row["id"]), now)
                    found.append(int(row["id"]))
        if "stock" in self.cfg.kinds:
            self._resolve_stock(found)

    def _resolve_stock(self, product_ids: list[int]) -> None:
        for i in range(0, len(product_ids), LOOKUP_CHUNK):
            part = product_ids[i : i + LOOKUP_CHUNK]
            resp = self._call(
                "GET",
                "/stock_availables",
                params={
                    "filter[id_product]": f"[{'|'.join(map(str, part))}]",
                    "filter[id_product_attribute]": "[0]",
                    "display": "[id,id_product,id_shop]",
                    "output_format": "JSON",
                },
            )
            self.stats["lookups"] += 1
            for row in self._rows(resp, "stock_availables"):
                self.stock_ids[(int(row["id_product"]), str(row["id_shop"]))] = int(row["id"])

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
        missing = sorted({f.sku for f in todo if f.sku not in self.products})
        try:
            if missing:
                self.resolve(missing)
        except (_Retry, _Permanent) as e:
            outcome = Outcome.RETRY if isinstance(e, _Retry) else Outcome.PERMANENT
            for f in todo:
                results[f.key] = PushResult(
                    f.key, outcome, f"SKU lookup failed: {e}", getattr(e, "retry_after", None)
                )
            todo = []
        jobs = []
        for f in todo:
            if f.sku not in self.products:
                results[f.key] = PushResult(
                    f.key,
                    Outcome.PERMANENT,
                    f"unknown SKU {f.sku!r}: no PrestaShop product with this reference",
                )
            else:
                jobs.append(f)
        for f, res in zip(jobs, self.pool.map(lambda f: self._write(f, started), jobs), strict=True):
            results[f.key] = res
        return [results[f.key] for f in facts]

    def _write(self, f: Fact, started: float) -> PushResult:
        pid, resolved_at = self.products[f.sku]
        try:
            if f.kind == "stock":
                shop = self.cfg.locations.get(f.location, f.location)
                sid = self.stock_ids.get((pid, shop))
                if sid is None:
                    return PushResult(
                        f.key,
                        Outcome.PERMANENT,
                        f"SKU {f.sku!r} has no stock_available in shop {shop} (not sold there?)",
                    )
                body = (
                    f"<prestashop><stock_available><id>{sid}</id><quantity>{f.available}</quantity>"
                    "</stock_available></prestashop>"
                )
                self._call(
                    "PATCH",
                    f"/stock_availables/{sid}",
                    params={"id_shop": shop},
                    content=body,
                    headers={"Content-Type": "text/xml"},
                )
            else:
                body = (
                    f"<prestashop><product><id>{pid}</id><price>{escape(format(f.amount, 'f'))}</price>"
                    "</product></prestashop>"
                )
                self._call("PATCH", f"/products/{pid}", content=body, headers={"Content-Type": "text/xml"})
        except _Retry as e:
            return PushResult(f.key, Outcome.RETRY, str(e), e.retry_after, e.throttled)
        except _Permanent as e:
            if (
                e.status == 404 and resolved_at < started
            ):  # cached id vanished: forget it, re-resolve on retry
                self.products.pop(f.sku, None)
                return PushResult(f.key, Outcome.RETRY, f"stale id cache for {f.sku!r}: {e}", 0.0)
            return PushResult(f.key, Outcome.PERMANENT, str(e))
        return PushResult(f.key, Outcome.OK)

    # snapshot ----------------------------------------------------------------------------------------
    def _list(self, resource: str, display: str) -> Iterator[dict[str, Any]]:
        offset, size = 0, 500
        while True:
            params = {
                "display": display,
                "output_format": "JSON",
                "limit": f"{offset},{size}",
                "sort": "[id_ASC]",
            }
            rows = self._retrying(
                lambda p=params: self._rows(self._call("GET", f"/{resource}", params=p), resource)
            )
            yield from rows
            if len(rows) < size:
                return
            offset += size

    def _retrying(self, call: Any, attempts: int = 5) -> Any:
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except _Retry as e:
                if attempt == attempts:
                    raise SinkError(f"PrestaShop kept failing: {e}") from None
                time.sleep(min(e.retry_after or 0.5 * attempt, 10.0))
            except _Permanent as e:
                raise SinkError(str(e)) from None
        raise AssertionError

    def snapshot(self) -> Iterator[Fact]:
        refs = {int(p["id"]): p for p in self._list("products", "[id,reference,price]") if p.get("reference")}
        if "stock" in self.cfg.kinds:
            shops = {v: k for k, v in self.cfg.locations.items()}
            for row in self._list(
                "stock_availables", "[id,id_product,id_product_attribute,id_shop,quantity]"
            ):
                p = refs.get(int(row["id_product"]))
                name = shops.get(str(row["id_shop"]), None if self.cfg.locations else str(row["id_shop"]))
                if p and int(row["id_product_attribute"]) == 0 and name is not None:
                    yield stock_fact(p["reference"], name, int(row["quantity"]))
        if "price" in self.cfg.kinds:
            for p in refs.values():
                for plist in self.cfg.price_lists:
                    yield price_fact(p["reference"], plist, Decimal(str(p["price"])), self.cfg.currency or "")
