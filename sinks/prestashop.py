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

from cdc.facts import Fact, price_fact, stock_fact
from sinks.base import (
    Outcome,
    Permanent,
    PushResult,
    Results,
    RetryLater,
    ShopSink,
    describe_http_error,
    failure,
    json_answer,
)
from sinks.config import PrestaShopSinkConfig

log = logging.getLogger(__name__)
LOOKUP_CHUNK = 50  # references per filter (keeps URLs well under server limits)


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


class PrestaShopSink(ShopSink):
    kind = "prestashop"
    platform = "PrestaShop"
    unknown_sku = "no PrestaShop product with this reference"
    max_batch = 100  # facts per push; each is its own request, pipelined

    def __init__(self, config: PrestaShopSinkConfig) -> None:
        limits = httpx.Limits(
            max_connections=config.concurrency, max_keepalive_connections=config.concurrency
        )
        super().__init__(
            config,
            config.url.rstrip("/") + "/api",
            rate=config.max_requests_per_second,
            auth=httpx.BasicAuth(config.webservice_key.get_secret_value(), ""),
            limits=limits,
        )
        self.cfg = config
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix=f"presta-{config.name}")
        self.products: dict[str, tuple[int, float]] = {}  # sku -> (id_product, resolved_at)
        self.stock_ids: dict[tuple[int, str], int] = {}  # (id_product, id_shop) -> stock_available id
        self.stats["lookups"] = 0

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        super().close()

    def refusal(self, resp: httpx.Response) -> Permanent:
        return Permanent(presta_message(resp), status=resp.status_code)

    @staticmethod
    def _rows(resp: httpx.Response, resource: str) -> list[dict[str, Any]]:
        body = json_answer(resp)
        if body == []:  # an empty result is a bare []
            return []
        rows = body.get(resource, []) if isinstance(body, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise RetryLater(f"PrestaShop answered {type(body).__name__} where a {resource!r} object belongs",
                             kind="bad_answer")
        return rows

    # resolution --------------------------------------------------------------------------------------
    def resolve(self, skus: list[str]) -> None:
        found: list[int] = []
        for i in range(0, len(skus), LOOKUP_CHUNK):
            part = skus[i : i + LOOKUP_CHUNK]
            resp = self.call(
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
            resp = self.call(
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

    # push: hooks of Sink.push ---------------------------------------------------------------------------
    def known(self, sku: str) -> bool:
        return sku in self.products

    def write(self, group: None, facts: list[Fact], results: Results, started: float) -> None:
        # no batch endpoint: one request per fact, ``concurrency`` in flight. The ids are read before: the
        # first write that finds one stale forgets it while the SKU's other facts are still to be written
        ids = [self.products[f.sku] for f in facts]
        answers = self.pool.map(lambda f, i: self._write(f, i, started), facts, ids)
        for f, res in zip(facts, answers, strict=True):
            results[f.key] = res

    def _write(self, f: Fact, ids: tuple[int, float], started: float) -> PushResult:
        pid, resolved_at = ids
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
                self.call(
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
                self.call("PATCH", f"/products/{pid}", content=body, headers={"Content-Type": "text/xml"})
        except (RetryLater, Permanent) as e:
            if isinstance(e, Permanent) and e.status == 404:  # a cached id vanished: re-resolve on retry
                return self.stale_or_refused(f, self.products, resolved_at, started, str(e))
            return failure(f.key, e)
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
            rows = self.listing(
                lambda p=params: self._rows(self.call("GET", f"/{resource}", params=p), resource)
            )
            yield from rows
            if len(rows) < size:
                return
            offset += size

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
