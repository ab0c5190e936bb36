"""PrestaShop Webservice emulator (``/api/``), 1.7/8 behaviour.

Resources: ``products`` (GET list with ``filter[reference]=[A|B]``, ``display=[...]``, ``limit=offset,N``,
``sort=[id_ASC]``; PATCH with an XML body ``<prestashop><product><id/><price/></product></prestashop>``) and
``stock_availables`` (GET with ``filter[id_product]=[1|2]``/``filter[id_product_attribute]``/
``filter[id_shop]``; PATCH/PUT by id; POST and DELETE are refused with 405 as PrestaShop does). Reads
answer JSON with ``output_format=JSON`` (an empty list is the bare ``[]`` PrestaShop sends), XML otherwise;
errors are ``<prestashop><errors><error><code/><message/></error></errors></prestashop>``. Auth: the key as
the Basic user name. Every SKU is a simple product (``id_product_attribute = 0``) stocked in every shop
(``locations`` → id_shop 1..n). Optional ``rate_limit`` (requests/s) → 429 + Retry-After.
"""

from __future__ import annotations

import base64
import math
import re
import xml.etree.ElementTree as ET
from decimal import Decimal, InvalidOperation
from typing import Any

from sinks.emulators.base import Emulator, Faults, RateLimit, Request, Response

STOCK_FIELDS = {
    "id",
    "id_product",
    "id_product_attribute",
    "id_shop",
    "id_shop_group",
    "quantity",
    "depends_on_stock",
    "out_of_stock",
    "location",
}
PRODUCT_FIELDS = {"id", "reference", "price", "wholesale_price", "active", "name", "id_shop_default"}


def xml_error(status: int, code: int, message: str) -> Response:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<prestashop xmlns:xlink="http://www.w3.org/1999/xlink">'
        f"<errors><error><code><![CDATA[{code}]]></code><message><![CDATA[{message}]]></message></error>"
        "</errors></prestashop>"
    )
    return Response(status, body, content_type="text/xml;charset=utf-8")


class PrestaShopEmulator(Emulator):
    platform = "prestashop"

    def __init__(
        self,
        skus: int | list[str] = 100,
        locations: list[str] | None = None,
        price_lists: list[str] | None = None,
        faults: Faults | None = None,
        *,
        rate_limit: float | None = None,
        key: str = "PRESTAEMULATORKEY0000000000000000",
    ) -> None:
        super().__init__(faults)
        self.sku_list = [f"SKU-{i:06d}" for i in range(skus)] if isinstance(skus, int) else list(skus)
        self.shops = {i + 1: name for i, name in enumerate(locations or ["default"])}
        self.price_lists = price_lists or []
        self.rate_limit = rate_limit
        self.auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        self.reset()

    def shop_id(self, name: str) -> str:
        return str(next(k for k, v in self.shops.items() if v == name))

    def reset(self) -> None:
        self.limiter = RateLimit(self.rate_limit)
        self.products = {
            i + 1: {"id": i + 1, "reference": s, "price": "0.000000"} for i, s in enumerate(self.sku_list)
        }
        self.stock: dict[int, dict[str, Any]] = {}
        n = 1
        for pid in self.products:
            for shop in self.shops:
                self.stock[n] = {
                    "id": n,
                    "id_product": pid,
                    "id_product_attribute": 0,
                    "id_shop": shop,
                    "id_shop_group": 0,
                    "quantity": 0,
                    "depends_on_stock": 0,
                    "out_of_stock": 2,
                    "location": "",
                }
                n += 1
        self.history: dict[tuple[str, str, str], list[Any]] = {}
        self.stats.update(throttled=0, rejected=0, writes=0, calls=0)

    def state(self) -> dict[str, Any]:
        with self.lock:
            stock: dict[str, dict[str, Any]] = {p["reference"]: {} for p in self.products.values()}
            for row in self.stock.values():
                stock[self.products[row["id_product"]]["reference"]][self.shops[row["id_shop"]]] = row[
                    "quantity"
                ]
            prices = {
                p["reference"]: {"regular": format(Decimal(p["price"]).quantize(Decimal("0.01")), "f")}
                for p in self.products.values()
            }
            return {"stock": stock, "prices": prices, "writes": self.stats["writes"]}

    def _record(self, kind: str, sku: str, scope: str, value: Any) -> None:
        self.history.setdefault((kind, sku, scope), []).append(value)
        self.stats["writes"] += 1

    # HTTP ------------------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        m = re.fullmatch(r"/api/(\w+)(?:/(\d+))?/?", req.path)
        with self.lock:
            wait = self.limiter.take()
            if wait is not None:
                self.stats["throttled"] += 1
                return Response(
                    429, "Too Many Requests", {"Retry-After": str(max(1, math.ceil(wait)))}, "text/plain"
                )
            if req.headers.get("authorization") != self.auth:
                return xml_error(
                    401,
                    17,
                    "Authentication key is empty"
                    if "authorization" not in req.headers
                    else "Invalid authentication key",
                )
            self.stats["calls"] += 1
            if not m or m.group(1) not in ("products", "stock_availables"):
                return xml_error(
                    400, 18, f'Resource of type "{m.group(1) if m else req.path}" does not exist'
                )
            resource, rid = m.group(1), int(m.group(2)) if m.group(2) else None
            table = self.products if resource == "products" else self.stock
            if req.method in ("GET", "HEAD"):
                return self._get(req, resource, table, rid)
            if req.method in ("PATCH", "PUT") and rid is not None:
                return self._write(req, resource, table, rid)
            if req.method in ("PATCH", "PUT"):
                return xml_error(400, 90, "id is required when modifying a resource")
            return xml_error(405, 100, f"Method {req.method} is not allowed for {resource}")

    def _get(
        self, req: Request, resource: str, table: dict[int, dict[str, Any]], rid: int | None
    ) -> Response:
        json_out = req.q("output_format") == "JSON"
        singular = "product" if resource == "products" else "stock_available"
        if rid is not None:
            row = table.get(rid)
            if row is None:
                return xml_error(404, 87, f"Id {rid} not found for {resource}")
            return (
                Response(200, {singular: row})
                if json_out
                else Response(200, _to_xml(singular, row), content_type="text/xml")
            )
        rows = list(table.values())
        for key, values in req.query.items():
            fm = re.fullmatch(r"filter\[(\w+)\]", key)
            if not fm:
                continue
            fld = fm.group(1)
            allowed = PRODUCT_FIELDS if resource == "products" else STOCK_FIELDS
            if fld not in allowed:
                self.stats["rejected"] += 1
                return xml_error(400, 32, f'This filter does not exist. Did you mean: "{fld}"?')
            vm = re.fullmatch(r"\[(.*)\]", values[0])
            if not vm:
                self.stats["rejected"] += 1
                return xml_error(400, 33, f"The filter value for {fld} must be in brackets: [value]")
            wanted = set(vm.group(1).split("|"))
            rows = [r for r in rows if str(r.get(fld)) in wanted]
        if req.q("sort"):
            sm = re.fullmatch(r"\[(\w+)_(ASC|DESC)\]", req.q("sort") or "")
            if not sm:
                return xml_error(400, 35, "The sort parameter must be [field_ASC] or [field_DESC]")
            rows.sort(key=lambda r: r.get(sm.group(1)) or 0, reverse=sm.group(2) == "DESC")
        if req.q("limit"):
            lm = re.fullmatch(r"(?:(\d+),)?(\d+)", req.q("limit") or "")
            if not lm:
                return xml_error(400, 30, "The limit parameter must be N or offset,N")
            off = int(lm.group(1) or 0)
            rows = rows[off : off + int(lm.group(2))]
        display = req.q("display")
        if display and display != "full":
            dm = re.fullmatch(r"\[([\w,]+)\]", display)
            if not dm:
                return xml_error(400, 31, "The display parameter must be full or [field,field]")
            fields = dm.group(1).split(",")
            rows = [{k: r[k] for k in fields if k in r} for r in rows]
        elif not display:
            rows = [{"id": r["id"]} for r in rows]
        if json_out:
            return Response(200, {resource: rows} if rows else [])  # PrestaShop's empty answer is a bare []
        inner = "".join(_to_xml(singular, r, wrap=False) for r in rows)
        return Response(
            200,
            f'<?xml version="1.0" encoding="UTF-8"?>\n<prestashop><{resource}>{inner}'
            f"</{resource}></prestashop>",
            content_type="text/xml",
        )

    def _write(self, req: Request, resource: str, table: dict[int, dict[str, Any]], rid: int) -> Response:
        singular = "product" if resource == "products" else "stock_available"
        try:
            root = ET.fromstring(req.body or b"")
        except ET.ParseError as e:
            self.stats["rejected"] += 1
            return xml_error(400, 127, f"XML error : {e}")
        node = root.find(singular) if root.tag == "prestashop" else None
        if node is None:
            self.stats["rejected"] += 1
            return xml_error(400, 127, f"XML error : <prestashop><{singular}> expected")
        fields = {c.tag: (c.text or "").strip() for c in node}
        allowed = PRODUCT_FIELDS if resource == "products" else STOCK_FIELDS
        unknown = [k for k in fields if k not in allowed]
        if unknown:
            self.stats["rejected"] += 1
            return xml_error(400, 46, f"Field {unknown[0]} is not a field of {singular}")
        if fields.get("id") != str(rid):
            self.stats["rejected"] += 1
            return xml_error(
                400,
                90,
                "id is required when modifying a resource"
                if "id" not in fields
                else "id does not match the URL",
            )
        row = table.get(rid)
        if row is None:
            return xml_error(404, 87, f"Id {rid} not found for {resource}")
        if req.method == "PUT":
            missing = [
                k
                for k in (
                    ("id_product", "id_product_attribute", "quantity", "depends_on_stock", "out_of_stock")
                    if resource == "stock_availables"
                    else ("price",)
                )
                if k not in fields
            ]
            if missing:
                self.stats["rejected"] += 1
                return xml_error(400, 41, f'parameter "{missing[0]}" required')
        if resource == "stock_availables":
            if "quantity" in fields:
                if not re.fullmatch(r"-?\d+", fields["quantity"]):
                    self.stats["rejected"] += 1
                    return xml_error(
                        400, 85, 'Validation error: "Property StockAvailable->quantity is not valid"'
                    )
                row["quantity"] = int(fields["quantity"])
                self._record(
                    "stock",
                    self.products[row["id_product"]]["reference"],
                    self.shops[row["id_shop"]],
                    row["quantity"],
                )
        else:
            if "price" in fields:
                try:
                    price = Decimal(fields["price"])
                    if not price.is_finite() or price < 0:
                        raise InvalidOperation
                except InvalidOperation:
                    self.stats["rejected"] += 1
                    return xml_error(400, 85, 'Validation error: "Property Product->price is not valid"')
                row["price"] = format(price.quantize(Decimal("0.000001")), "f")
                self._record(
                    "price", row["reference"], "regular", format(price.quantize(Decimal("0.01")), "f")
                )
        return Response(200, _to_xml(singular, row), content_type="text/xml")


def _to_xml(tag: str, row: dict[str, Any], wrap: bool = True) -> str:
    inner = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in row.items())
    body = f"<{tag}>{inner}</{tag}>"
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<prestashop>{body}</prestashop>' if wrap else body
