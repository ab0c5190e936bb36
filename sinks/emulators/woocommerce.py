"""WooCommerce REST v3 emulator (``/wp-json/wc/v3``).

Catalogue: the first half of the SKUs are simple products, the rest variations of variable products (4
each). Stock: the first location is core ``stock_quantity`` (effective only with ``manage_stock``), the
others live in ``meta_data`` keys ``_stock_<location>`` as multi-location plugins keep them.

Routes: ``GET /products`` (``sku=A,B`` exact, covers variations with ``parent_id``; else top-level
products; ``page``/``per_page`` ≤ 100 with X-WP-Total / X-WP-TotalPages), ``GET /products/<id>/variations``,
``POST /products/batch`` and ``/products/<id>/variations/batch`` (≤ 100 items across create/update/delete,
else 413 ``woocommerce_rest_request_entity_too_large``; per-item errors ``{id, error:{code, message,
data}}``). Basic auth with consumer key/secret. Optional ``rate_limit`` (requests/s) answering 429 +
Retry-After, as hosts and WAFs do (core has none).
"""

from __future__ import annotations

import base64
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from sinks.emulators.base import Emulator, Faults, RateLimit, Request, Response

BATCH_LIMIT = 100


def _err(status: int, code: str, message: str, **data: Any) -> Response:
    return Response(status, {"code": code, "message": message, "data": {"status": status, **data}})


class WooCommerceEmulator(Emulator):
    platform = "woocommerce"

    def __init__(
        self,
        skus: int | list[str] = 100,
        locations: list[str] | None = None,
        price_lists: list[str] | None = None,
        faults: Faults | None = None,
        *,
        rate_limit: float | None = None,
        consumer_key: str = "ck_emulator",
        consumer_secret: str = "cs_emulator",
        variations_per_product: int = 4,
    ) -> None:
        super().__init__(faults)
        self.sku_list = [f"SKU-{i:06d}" for i in range(skus)] if isinstance(skus, int) else list(skus)
        self.location_names = locations or ["main"]
        self.price_lists = price_lists or []
        self.rate_limit = rate_limit
        self.auth = "Basic " + base64.b64encode(f"{consumer_key}:{consumer_secret}".encode()).decode()
        self.per_parent = variations_per_product
        self.reset()

    def meta_key(self, location: str) -> str:
        """How the sink's ``locations`` should map this location (``stock`` or ``meta:<key>``)."""
        return "stock" if location == self.location_names[0] else f"meta:_stock_{location}"

    def reset(self) -> None:
        self.limiter = RateLimit(self.rate_limit)
        self.products: dict[int, dict[str, Any]] = {}
        half = (len(self.sku_list) + 1) // 2
        next_id = 10
        for sku in self.sku_list[:half]:
            self.products[next_id] = self._blank(next_id, sku, "simple", 0)
            next_id += 1
        parent = 0
        for n, sku in enumerate(self.sku_list[half:]):
            if n % self.per_parent == 0:
                parent = next_id
                self.products[parent] = self._blank(parent, "", "variable", 0)
                next_id += 1
            self.products[next_id] = self._blank(next_id, sku, "variation", parent)
            next_id += 1
        self.by_sku = {p["sku"]: pid for pid, p in self.products.items() if p["sku"]}
        self.history: dict[tuple[str, str, str], list[Any]] = {}
        self.stats.update(throttled=0, rejected=0, writes=0, calls=0)

    @staticmethod
    def _blank(pid: int, sku: str, typ: str, parent: int) -> dict[str, Any]:
        return {
            "id": pid,
            "sku": sku,
            "type": typ,
            "parent_id": parent,
            "regular_price": "",
            "sale_price": "",
            "price": "",
            "manage_stock": False,
            "stock_quantity": None,
            "stock_status": "instock",
            "meta_data": [],
        }

    def state(self) -> dict[str, Any]:
        with self.lock:
            stock: dict[str, dict[str, Any]] = {}
            prices: dict[str, dict[str, Any]] = {}
            for p in self.products.values():
                if not p["sku"]:
                    continue
                meta = {m["key"]: m["value"] for m in p["meta_data"]}
                stock[p["sku"]] = {
                    loc: (p["stock_quantity"] if p["manage_stock"] else None)
                    if i == 0
                    else _int_or_none(meta.get(f"_stock_{loc}"))
                    for i, loc in enumerate(self.location_names)
                }
                prices[p["sku"]] = {"regular": p["regular_price"] or None, "sale": p["sale_price"] or None}
            return {"stock": stock, "prices": prices, "writes": self.stats["writes"]}

    # HTTP ------------------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        m = re.fullmatch(r"/wp-json/wc/v3(/.*)", req.path)
        if not m:
            return _err(404, "rest_no_route", "No route was found matching the URL and request method.")
        with self.lock:
            wait = self.limiter.take()
            if wait is not None:
                self.stats["throttled"] += 1
                return Response(
                    429,
                    {"code": "too_many_requests", "message": "Too Many Requests"},
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
            if req.headers.get("authorization") != self.auth:
                return _err(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
            self.stats["calls"] += 1
            route = m.group(1)
            if route == "/products" and req.method == "GET":
                return self._list(req, None)
            if (v := re.fullmatch(r"/products/(\d+)/variations", route)) and req.method == "GET":
                return self._list(req, int(v.group(1)))
            if route == "/products/batch" and req.method in ("POST", "PUT", "PATCH"):
                return self._batch(req, None)
            if (v := re.fullmatch(r"/products/(\d+)/variations/batch", route)) and req.method in (
                "POST",
                "PUT",
                "PATCH",
            ):
                return self._batch(req, int(v.group(1)))
            return _err(404, "rest_no_route", "No route was found matching the URL and request method.")

    def _list(self, req: Request, parent: int | None) -> Response:
        try:
            per_page = int(req.q("per_page", "10") or "10")
            page = int(req.q("page", "1") or "1")
        except ValueError:
            return _err(
                400, "rest_invalid_param", "Invalid parameter(s): per_page", params={"per_page": "not int"}
            )
        if not 1 <= per_page <= 100:
            self.stats["rejected"] += 1
            return _err(
                400,
                "rest_invalid_param",
                "Invalid parameter(s): per_page",
                params={"per_page": "per_page must be between 1 (inclusive) and 100 (inclusive)"},
            )
        if page < 1:
            return _err(400, "rest_invalid_param", "Invalid parameter(s): page", params={"page": "page < 1"})
        if parent is not None:
            if self.products.get(parent, {}).get("type") != "variable":
                return _err(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
            rows = [p for p in self.products.values() if p["parent_id"] == parent]
        elif req.q("sku") is not None:
            wanted = [s.strip() for s in (req.q("sku") or "").split(",") if s.strip()]
            rows = [self.products[self.by_sku[s]] for s in dict.fromkeys(wanted) if s in self.by_sku]
        else:
            rows = [p for p in self.products.values() if p["type"] != "variation"]
        total = len(rows)
        body = [self._view(p) for p in rows[(page - 1) * per_page : page * per_page]]
        fields = req.q("_fields")
        if fields:
            keep = set(fields.split(","))
            body = [{k: v for k, v in p.items() if k in keep} for p in body]
        return Response(
            200, body, {"X-WP-Total": str(total), "X-WP-TotalPages": str(math.ceil(total / per_page))}
        )

    @staticmethod
    def _view(p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "meta_data": [dict(m) for m in p["meta_data"]]}

    def _batch(self, req: Request, parent: int | None) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            return _err(400, "rest_invalid_json", "Invalid JSON body passed.")
        lists = {k: body.get(k) or [] for k in ("create", "update", "delete")}
        if any(not isinstance(v, list) for v in lists.values()):
            self.stats["rejected"] += 1
            return _err(
                400, "rest_invalid_param", "Invalid parameter(s): update", params={"update": "not array"}
            )
        n = sum(len(v) for v in lists.values())
        if n > BATCH_LIMIT:
            self.stats["rejected"] += 1
            return _err(
                413,
                "woocommerce_rest_request_entity_too_large",
                f"Unable to accept more than {BATCH_LIMIT} items for this request.",
            )
        if parent is not None and self.products.get(parent, {}).get("type") != "variable":
            return _err(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
        out: dict[str, list[Any]] = {}
        if lists["create"]:
            out["create"] = [
                {
                    "id": 0,
                    "error": {
                        "code": "woocommerce_rest_cannot_create",
                        "message": "Creating is not emulated.",
                        "data": {"status": 400},
                    },
                }
                for _ in lists["create"]
            ]
        if lists["update"]:
            out["update"] = [self._update(item, parent) for item in lists["update"]]
        if lists["delete"]:
            out["delete"] = [
                {
                    "id": d,
                    "error": {
                        "code": "woocommerce_rest_cannot_delete",
                        "message": "Deleting is not emulated.",
                        "data": {"status": 400},
                    },
                }
                for d in lists["delete"]
            ]
        return Response(200, out)

    def _update(self, item: Any, parent: int | None) -> dict[str, Any]:
        def fail(code: str, message: str, status: int = 400) -> dict[str, Any]:
            return {
                "id": item.get("id", 0) if isinstance(item, dict) else 0,
                "error": {"code": code, "message": message, "data": {"status": status}},
            }

        if not isinstance(item, dict) or not isinstance(item.get("id"), int):
            return fail("woocommerce_rest_product_invalid_id", "Invalid ID.")
        p = self.products.get(item["id"])
        want_type = ("variation",) if parent is not None else ("simple", "variable")
        if p is None or p["type"] not in want_type or (parent is not None and p["parent_id"] != parent):
            return fail("woocommerce_rest_product_invalid_id", "Invalid ID.")
        for k in ("regular_price", "sale_price"):
            if k in item and not isinstance(item[k], str):
                return fail("rest_invalid_param", f"{k} is not of type string.")
            if item.get(k):
                try:
                    if Decimal(item[k]) < 0 or not Decimal(item[k]).is_finite():
                        raise InvalidOperation
                except InvalidOperation:
                    return fail("rest_invalid_param", f"{k} is not a valid price.")
        if "stock_quantity" in item and not (
            isinstance(item["stock_quantity"], int) and not isinstance(item["stock_quantity"], bool)
        ):
            return fail("rest_invalid_param", "stock_quantity is not of type integer.")
        if "manage_stock" in item and not isinstance(item["manage_stock"], bool):
            return fail("rest_invalid_param", "manage_stock is not of type boolean.")
        meta = item.get("meta_data", [])
        if not isinstance(meta, list) or any(not isinstance(m, dict) or "key" not in m for m in meta):
            return fail("rest_invalid_param", "meta_data is not of type array of objects.")
        sku = p["sku"]
        if "manage_stock" in item:
            p["manage_stock"] = item["manage_stock"]
        if "stock_quantity" in item and p["manage_stock"]:
            p["stock_quantity"] = item["stock_quantity"]
            p["stock_status"] = "instock" if item["stock_quantity"] > 0 else "outofstock"
            self._record("stock", sku, self.location_names[0], item["stock_quantity"])
        for m in meta:
            existing = next((x for x in p["meta_data"] if x["key"] == m["key"]), None)
            if existing:
                existing["value"] = m.get("value")
            else:
                p["meta_data"].append(
                    {"id": len(p["meta_data"]) + 1, "key": m["key"], "value": m.get("value")}
                )
            if m["key"].startswith("_stock_"):
                self._record("stock", sku, m["key"].removeprefix("_stock_"), _int_or_none(m.get("value")))
        for k, fname in (("regular_price", "regular"), ("sale_price", "sale")):
            if k in item:
                p[k] = item[k]
                self._record("price", sku, fname, item[k] or None)
        p["price"] = p["sale_price"] or p["regular_price"]
        return self._view(p)

    def _record(self, kind: str, sku: str, scope: str, value: Any) -> None:
        self.history.setdefault((kind, sku, scope), []).append(value)
        self.stats["writes"] += 1


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None
