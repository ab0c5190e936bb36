"""Magento 2 / Adobe Commerce REST emulator (``/rest/<store>/V1``), MSI and the price APIs.

Routes: ``POST /V1/inventory/source-items`` (all or nothing: one invalid item → 400 ``Validation Failed``
with ``errors:[{message, parameters}]``), ``GET /V1/inventory/source-items`` (searchCriteria paging),
``POST /V1/products/base-prices`` and ``/V1/products/special-price`` (valid items apply, failures come
back as ``[{message, parameters}]`` with HTTP 200), ``POST /V1/products/special-price-information``,
``GET /V1/products`` (searchCriteria paging, page size ≤ 300). Input lists longer than
``max_list_items`` (default 20, Magento's sync limit when enabled) → 400. Bearer token. Optional
``rate_limit`` (requests/s) → 429 + Retry-After as a front proxy would answer.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sinks.emulators.base import Emulator, Faults, RateLimit, Request, Response


def _err(status: int, message: str, parameters: Any = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"message": message}
    if parameters is not None:
        body["parameters"] = parameters
    return Response(status, {**body, **extra})


class MagentoEmulator(Emulator):
    platform = "magento"

    def __init__(
        self,
        skus: int | list[str] = 100,
        locations: list[str] | None = None,
        price_lists: list[str] | None = None,
        faults: Faults | None = None,
        *,
        rate_limit: float | None = None,
        token: str = "magento-emulator-token",
        max_list_items: int = 20,
        max_page_size: int = 300,
    ) -> None:
        super().__init__(faults)
        self.sku_list = [f"SKU-{i:06d}" for i in range(skus)] if isinstance(skus, int) else list(skus)
        self.sources = locations or ["default"]
        self.price_lists = price_lists or []
        self.rate_limit, self.token = rate_limit, token
        self.max_list_items, self.max_page_size = max_list_items, max_page_size
        self.reset()

    def reset(self) -> None:
        self.limiter = RateLimit(self.rate_limit)
        self.products = {
            s: {"sku": s, "price": Decimal("0"), "id": i + 1} for i, s in enumerate(self.sku_list)
        }
        self.source_items: dict[tuple[str, str], dict[str, Any]] = {
            (s, src): {"sku": s, "source_code": src, "quantity": 0, "status": 0}
            for s in self.sku_list
            for src in self.sources
        }
        self.special: dict[tuple[str, int], dict[str, Any]] = {}
        self.history: dict[tuple[str, str, str], list[Any]] = {}
        self.stats.update(throttled=0, rejected=0, writes=0, calls=0)

    def state(self) -> dict[str, Any]:
        with self.lock:
            stock: dict[str, dict[str, Any]] = {s: {} for s in self.sku_list}
            for (sku, src), row in self.source_items.items():
                stock[sku][src] = row["quantity"]
            prices = {
                s: {
                    "regular": _fmt(p["price"]),
                    "sale": _fmt(self.special[(s, 0)]["price"]) if (s, 0) in self.special else None,
                }
                for s, p in self.products.items()
            }
            return {"stock": stock, "prices": prices, "writes": self.stats["writes"]}

    def _record(self, kind: str, sku: str, scope: str, value: Any) -> None:
        self.history.setdefault((kind, sku, scope), []).append(value)
        self.stats["writes"] += 1

    # HTTP ------------------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        m = re.fullmatch(r"/rest/[A-Za-z0-9_]+/V1(/.*)", req.path)
        if not m:
            return _err(404, "Request does not match any route.")
        with self.lock:
            wait = self.limiter.take()
            if wait is not None:
                self.stats["throttled"] += 1
                return Response(
                    429, {"message": "Too Many Requests"}, {"Retry-After": str(max(1, math.ceil(wait)))}
                )
            if req.headers.get("authorization") != f"Bearer {self.token}":
                return _err(
                    401,
                    "The consumer isn't authorized to access %resources.",
                    {"resources": "Magento_InventoryApi::source_edit"},
                )
            self.stats["calls"] += 1
            route, method = m.group(1), req.method
            if route == "/inventory/source-items" and method == "POST":
                return self._save_source_items(req)
            if route == "/inventory/source-items" and method == "GET":
                rows = sorted(self.source_items.values(), key=lambda r: (r["sku"], r["source_code"]))
                return self._page(req, rows)
            if route == "/products" and method == "GET":
                return self._page(
                    req,
                    [
                        {"id": p["id"], "sku": p["sku"], "price": float(p["price"])}
                        for p in self.products.values()
                    ],
                )
            if route == "/products/base-prices" and method == "POST":
                return self._prices(req, special=False)
            if route == "/products/special-price" and method == "POST":
                return self._prices(req, special=True)
            if route == "/products/special-price-information" and method == "POST":
                body = req.json()
                skus = body.get("skus") if isinstance(body, dict) else None
                if not isinstance(skus, list):
                    return _err(400, '"%fieldName" is required. Enter and try again.', {"fieldName": "skus"})
                if len(skus) > self.max_list_items:
                    return self._too_many(len(skus))
                return Response(
                    200,
                    [{**v, "price": float(v["price"])} for (s, _), v in self.special.items() if s in skus],
                )
            return _err(404, "Request does not match any route.")

    def _too_many(self, n: int) -> Response:
        self.stats["rejected"] += 1
        return _err(
            400,
            'Maximum items of type "%type" is %max',
            {"type": "array", "max": self.max_list_items},
            received=n,
        )

    def _page(self, req: Request, rows: list[dict[str, Any]]) -> Response:
        try:
            size = int(req.q("searchCriteria[pageSize]", "20") or "20")
            page = int(req.q("searchCriteria[currentPage]", "1") or "1")
        except ValueError:
            return _err(400, "Invalid search criteria")
        if not 1 <= size <= self.max_page_size:
            self.stats["rejected"] += 1
            return _err(
                400, 'Maximum value for "%field" is %max.', {"field": "pageSize", "max": self.max_page_size}
            )
        return Response(
            200,
            {
                "items": rows[(page - 1) * size : page * size],
                "search_criteria": {"page_size": size, "current_page": page},
                "total_count": len(rows),
            },
        )

    def _save_source_items(self, req: Request) -> Response:
        body = req.json()
        items = body.get("sourceItems") if isinstance(body, dict) else None
        if not isinstance(items, list):
            self.stats["rejected"] += 1
            return _err(400, '"%fieldName" is required. Enter and try again.', {"fieldName": "sourceItems"})
        if len(items) > self.max_list_items:
            return self._too_many(len(items))
        errors = []
        for it in items:
            if not isinstance(it, dict) or not all(
                k in it for k in ("sku", "source_code", "quantity", "status")
            ):
                missing = [
                    k
                    for k in ("sku", "source_code", "quantity", "status")
                    if not isinstance(it, dict) or k not in it
                ]
                errors.append({"message": '"%field" can not be empty.', "parameters": {"field": missing[0]}})
            elif it["sku"] not in self.products:
                errors.append(
                    {"message": 'Product with SKU "%sku" does not exist.', "parameters": {"sku": it["sku"]}}
                )
            elif it["source_code"] not in self.sources:
                errors.append(
                    {
                        "message": 'Source with code "%code" does not exist.',
                        "parameters": {"code": it["source_code"], "sku": it["sku"]},
                    }
                )
            elif (
                isinstance(it["quantity"], bool)
                or not isinstance(it["quantity"], int | float)
                or it["status"] not in (0, 1)
            ):
                errors.append(
                    {
                        "message": '"%field" should be numeric.',
                        "parameters": {"field": "quantity", "sku": it["sku"]},
                    }
                )
        if errors:  # MSI validates the whole list before saving any of it
            self.stats["rejected"] += 1
            return _err(400, "Validation Failed", None, errors=errors)
        for it in items:
            row = self.source_items[(it["sku"], it["source_code"])]
            row.update(quantity=it["quantity"], status=it["status"])
            self._record("stock", it["sku"], it["source_code"], it["quantity"])
        return Response(200, [])

    def _prices(self, req: Request, special: bool) -> Response:
        body = req.json()
        items = body.get("prices") if isinstance(body, dict) else None
        if not isinstance(items, list):
            self.stats["rejected"] += 1
            return _err(400, '"%fieldName" is required. Enter and try again.', {"fieldName": "prices"})
        if len(items) > self.max_list_items:
            return self._too_many(len(items))
        failed = []
        for it in items:
            sku = it.get("sku") if isinstance(it, dict) else None
            store = it.get("store_id") if isinstance(it, dict) else None
            row = f"Row ID: SKU = {'%SKU'}, Store ID: {'%storeId'}."
            if sku not in self.products:
                failed.append(
                    {
                        "message": f"Requested product doesn't exist. {row}",
                        "parameters": [str(sku), str(store)],
                    }
                )
                continue
            try:
                price = Decimal(str(it.get("price")))
                if not price.is_finite() or price < 0 or isinstance(it.get("price"), bool | str):
                    raise InvalidOperation
            except InvalidOperation:
                failed.append(
                    {
                        "message": f"Invalid attribute %fieldName = %fieldValue. {row}",
                        "parameters": ["Price", str(it.get("price")), sku, str(store)],
                    }
                )
                continue
            if not isinstance(store, int) or store != 0:
                failed.append(
                    {"message": f"Requested store is not found. {row}", "parameters": [sku, str(store)]}
                )
                continue
            if special:
                bad = [k for k in ("price_from", "price_to") if not _is_datetime(it.get(k))]
                if bad:
                    failed.append(
                        {
                            "message": f"Invalid attribute %fieldName = %fieldValue. {row}",
                            "parameters": [bad[0], str(it.get(bad[0])), sku, str(store)],
                        }
                    )
                    continue
                self.special[(sku, store)] = {
                    "sku": sku,
                    "store_id": store,
                    "price": price,
                    "price_from": it["price_from"],
                    "price_to": it["price_to"],
                }
                self._record("price", sku, "sale", _fmt(price))
            else:
                self.products[sku]["price"] = price
                self._record("price", sku, "regular", _fmt(price))
        return Response(200, failed)


def _is_datetime(v: Any) -> bool:
    try:
        datetime.strptime(v, "%Y-%m-%d %H:%M:%S")
        return True
    except (TypeError, ValueError):
        return False


def _fmt(v: Decimal) -> str:
    return format(v.quantize(Decimal("0.01")), "f")
