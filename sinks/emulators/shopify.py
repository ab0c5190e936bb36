"""Shopify Admin GraphQL emulator.

A small GraphQL front end (real tokenizer/parser, schema check of every selected field and argument,
variable declaration/type checks, input-object coercion with Shopify's INVALID_VARIABLE errors) over an
in-memory catalogue of products, variants, inventory items, locations and levels. Supported root fields:
``productVariants`` (search ``sku:A OR sku:B``, cursor pagination), ``currentBulkOperation``,
``bulkOperation``, and mutations ``inventorySetQuantities``, ``productVariantsBulkUpdate``,
``bulkOperationRunQuery`` (JSONL result with ``__parentId``). Several mutation fields may be aliased in
one document, as GraphQL allows.

Throttling: a leaky bucket of cost points (``bucket`` size, ``restore_rate``/s). Cost model (documented
emulator choice, close to Shopify's published rules): scalar 0, object 1, connection ``2 + first × node``,
each mutation field ``mutation_cost + item_cost × input items``; requested = actual (no refund). A
request whose cost exceeds the available points answers HTTP 200 with ``THROTTLED``; above
``max_query_cost`` it answers ``MAX_COST_EXCEEDED``. Every answer carries ``extensions.cost``.

Version behaviour (from the URL): before 2026-01 ``compareQuantity``/``ignoreCompareQuantity`` (one of
them required); 2026-01 ``changeFromQuantity`` (null opts out); from 2026-04 ``changeFromQuantity``
required and the ``@idempotent(key:)`` directive required on inventory mutations.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from sinks.emulators.base import Emulator, Faults, Request, Response

# --- GraphQL parsing ------------------------------------------------------------------------------

_TOKEN = re.compile(
    r'(?P<ws>[\s,]+|#[^\n]*)|(?P<str>"(?:[^"\\]|\\.)*")|(?P<punct>\.\.\.|[{}()\[\]:!$@=])'
    r"|(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<name>[_A-Za-z][_0-9A-Za-z]*)"
)


class GraphQLError(Exception):
    def __init__(self, message: str, code: str, **ext: Any) -> None:
        super().__init__(message)
        self.error = {"message": message, "extensions": {"code": code, **ext}}


@dataclass
class Var:
    name: str


@dataclass
class Enum:
    name: str


@dataclass
class Sel:
    name: str
    alias: str
    args: dict[str, Any]
    directives: dict[str, dict[str, Any]]
    children: list[Sel] | None


@dataclass
class Operation:
    kind: str  # query | mutation
    var_types: dict[str, str]
    directives: dict[str, dict[str, Any]]
    selections: list[Sel]


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise GraphQLError(f'Parse error on "{text[pos]}" at [{pos}]', "parseError")
            pos = m.end()
            if m.lastgroup != "ws":
                self.toks.append((m.lastgroup or "", m.group()))
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i] if self.i < len(self.toks) else ("eof", "")

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        k, v = self.peek()
        if (value is not None and v != value) or (kind is not None and k != kind) or k == "eof":
            raise GraphQLError(f'Parse error on "{v or "end of input"}" ({k.upper()})', "parseError")
        self.i += 1
        return v

    def document(self) -> Operation:
        kind = "query"
        if self.peek()[1] in ("query", "mutation"):
            kind = self.take()
            if self.peek()[0] == "name":
                self.take()
        var_types: dict[str, str] = {}
        if self.peek()[1] == "(":
            self.take("(")
            while self.peek()[1] != ")":
                self.take("$")
                name = self.take(kind="name")
                self.take(":")
                var_types[name] = self.type_ref()
                if self.peek()[1] == "=":
                    self.take("=")
                    self.value()
            self.take(")")
        directives = self.directives()
        sels = self.selection_set()
        if self.peek()[0] != "eof":
            raise GraphQLError("Only one operation per document is supported", "parseError")
        return Operation(kind, var_types, directives, sels)

    def type_ref(self) -> str:
        if self.peek()[1] == "[":
            self.take("[")
            inner = self.type_ref()
            self.take("]")
            t = f"[{inner}]"
        else:
            t = self.take(kind="name")
        if self.peek()[1] == "!":
            self.take("!")
            t += "!"
        return t

    def directives(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        while self.peek()[1] == "@":
            self.take("@")
            name = self.take(kind="name")  # before arguments(): Python evaluates the right side first
            out[name] = self.arguments()
        return out

    def arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.peek()[1] == "(":
            self.take("(")
            while self.peek()[1] != ")":
                name = self.take(kind="name")
                self.take(":")
                args[name] = self.value()
            self.take(")")
        return args

    def selection_set(self) -> list[Sel]:
        self.take("{")
        sels: list[Sel] = []
        while self.peek()[1] != "}":
            name = self.take(kind="name")
            alias = name
            if self.peek()[1] == ":":
                self.take(":")
                name = self.take(kind="name")
            args = self.arguments()
            dirs = self.directives()
            children = self.selection_set() if self.peek()[1] == "{" else None
            sels.append(Sel(name, alias, args, dirs, children))
        self.take("}")
        if not sels:
            raise GraphQLError("Selection set must not be empty", "parseError")
        return sels

    def value(self) -> Any:
        k, v = self.peek()
        if v == "$":
            self.take("$")
            return Var(self.take(kind="name"))
        if v == "[":
            self.take("[")
            items = []
            while self.peek()[1] != "]":
                items.append(self.value())
            self.take("]")
            return items
        if v == "{":
            self.take("{")
            obj = {}
            while self.peek()[1] != "}":
                key = self.take(kind="name")
                self.take(":")
                obj[key] = self.value()
            self.take("}")
            return obj
        self.take()
        if k == "str":
            return json.loads(v)
        if k == "num":
            return float(v) if any(c in v for c in ".eE") else int(v)
        if k == "name":
            return {"true": True, "false": False, "null": None}.get(v, Enum(v))
        raise GraphQLError(f'Parse error on "{v}"', "parseError")


# --- schema ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class F:
    type: str | None = None  # object type name; None = scalar
    args: dict[str, str] = field(default_factory=dict)
    connection: bool = False


SCHEMA: dict[str, dict[str, F]] = {
    "QueryRoot": {
        "productVariants": F(
            "ProductVariantConnection", {"first": "Int", "after": "String", "query": "String"}, True
        ),
        "currentBulkOperation": F("BulkOperation", {"type": "BulkOperationType"}),
        "bulkOperation": F("BulkOperation", {"id": "ID!"}),
    },
    "Mutation": {
        "inventorySetQuantities": F(
            "InventorySetQuantitiesPayload", {"input": "InventorySetQuantitiesInput!"}
        ),
        "productVariantsBulkUpdate": F(
            "ProductVariantsBulkUpdatePayload",
            {
                "productId": "ID!",
                "variants": "[ProductVariantsBulkInput!]!",
                "allowPartialUpdates": "Boolean",
            },
        ),
        "bulkOperationRunQuery": F(
            "BulkOperationRunQueryPayload", {"query": "String!", "groupObjects": "Boolean"}
        ),
    },
    "ProductVariantConnection": {
        "nodes": F("ProductVariant"),
        "edges": F("ProductVariantEdge"),
        "pageInfo": F("PageInfo"),
    },
    "ProductVariantEdge": {"node": F("ProductVariant"), "cursor": F()},
    "PageInfo": {"hasNextPage": F(), "endCursor": F(), "hasPreviousPage": F(), "startCursor": F()},
    "ProductVariant": {
        "id": F(),
        "sku": F(),
        "title": F(),
        "price": F(),
        "compareAtPrice": F(),
        "product": F("Product"),
        "inventoryItem": F("InventoryItem"),
    },
    "Product": {"id": F(), "title": F()},
    "InventoryItem": {
        "id": F(),
        "sku": F(),
        "tracked": F(),
        "inventoryLevels": F("InventoryLevelConnection", {"first": "Int", "after": "String"}, True),
    },
    "InventoryLevelConnection": {
        "nodes": F("InventoryLevel"),
        "edges": F("InventoryLevelEdge"),
        "pageInfo": F("PageInfo"),
    },
    "InventoryLevelEdge": {"node": F("InventoryLevel"), "cursor": F()},
    "InventoryLevel": {
        "id": F(),
        "location": F("Location"),
        "quantities": F("InventoryQuantity", {"names": "[String!]!"}),
    },
    "Location": {"id": F(), "name": F()},
    "InventoryQuantity": {"name": F(), "quantity": F()},
    "InventorySetQuantitiesPayload": {
        "inventoryAdjustmentGroup": F("InventoryAdjustmentGroup"),
        "userErrors": F("InventorySetQuantitiesUserError"),
    },
    "InventoryAdjustmentGroup": {"id": F(), "reason": F(), "createdAt": F(), "referenceDocumentUri": F()},
    "InventorySetQuantitiesUserError": {"code": F(), "field": F(), "message": F()},
    "ProductVariantsBulkUpdatePayload": {
        "product": F("Product"),
        "productVariants": F("ProductVariant"),
        "userErrors": F("ProductVariantsBulkUpdateUserError"),
    },
    "ProductVariantsBulkUpdateUserError": {"code": F(), "field": F(), "message": F()},
    "BulkOperationRunQueryPayload": {
        "bulkOperation": F("BulkOperation"),
        "userErrors": F("BulkOperationUserError"),
    },
    "BulkOperationUserError": {"code": F(), "field": F(), "message": F()},
    "BulkOperation": {
        "id": F(),
        "status": F(),
        "errorCode": F(),
        "objectCount": F(),
        "url": F(),
        "createdAt": F(),
        "completedAt": F(),
        "query": F(),
        "type": F(),
    },
}
SCALARS = {"ID", "String", "Int", "Boolean", "Money", "Decimal", "BulkOperationType"}


def input_types(version: str) -> dict[str, dict[str, str]]:
    """Input objects as the given API version defines them."""
    new = version == "unstable" or version >= "2026-01"
    qty = {"inventoryItemId": "ID!", "locationId": "ID!", "quantity": "Int!"}
    top = {
        "name": "String!",
        "reason": "String!",
        "referenceDocumentUri": "String",
        "quantities": "[InventoryQuantityInput!]!",
    }
    if new:
        qty["changeFromQuantity"] = "Int"
    else:
        qty["compareQuantity"] = "Int"
        top["ignoreCompareQuantity"] = "Boolean"
    return {
        "InventorySetQuantitiesInput": top,
        "InventoryQuantityInput": qty,
        "ProductVariantsBulkInput": {
            "id": "ID",
            "price": "Money",
            "compareAtPrice": "Money",
            "barcode": "String",
            "taxable": "Boolean",
        },
    }


def coerce(value: Any, typ: str, inputs: dict[str, dict[str, str]], path: str) -> list[str]:
    """Problems with ``value`` as GraphQL input type ``typ`` (Shopify-style "path (explanation)")."""
    if typ.endswith("!"):
        if value is None:
            return [f"{path} (Expected value to not be null)"]
        typ = typ[:-1]
    if value is None:
        return []
    if typ.startswith("["):
        inner = typ[1:-1]
        items = value if isinstance(value, list) else [value]
        return [p for i, v in enumerate(items) for p in coerce(v, inner, inputs, f"{path}.{i}".lstrip("."))]
    if typ in inputs:
        if not isinstance(value, dict):
            return [f"{path} (Expected value to be an object)"]
        probs = [
            f"{path}.{k} (Field is not defined on {typ})".lstrip(".") for k in value if k not in inputs[typ]
        ]
        for k, t in inputs[typ].items():
            if t.endswith("!") and k not in value:
                probs.append(f"{path}.{k} (Expected value to not be null)".lstrip("."))
            elif k in value:
                probs += coerce(value[k], t, inputs, f"{path}.{k}".lstrip("."))
        return probs
    ok = {
        "Int": isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31,
        "Boolean": isinstance(value, bool),
        "ID": isinstance(value, str | int) and not isinstance(value, bool),
        "String": isinstance(value, str),
        "BulkOperationType": value in ("QUERY", "MUTATION") or isinstance(value, Enum),
    }.get(typ)
    if typ in ("Money", "Decimal"):
        try:
            ok = not isinstance(value, bool) and Decimal(str(value)).is_finite()
        except InvalidOperation:
            ok = False
    if not ok:
        return [f"{path} (Could not coerce value {json.dumps(value, default=str)} to {typ})".lstrip()]
    return []


# --- the emulator ---------------------------------------------------------------------------------

GID = "gid://shopify/{}/{}"


def gid_num(gid: Any, kind: str) -> int | None:
    if isinstance(gid, str) and gid.startswith(f"gid://shopify/{kind}/"):
        tail = gid.rsplit("/", 1)[1]
        return int(tail) if tail.isdigit() else None
    return None


class ShopifyEmulator(Emulator):
    platform = "shopify"

    def __init__(
        self,
        skus: int | list[str] = 100,
        locations: list[str] | None = None,
        price_lists: list[str] | None = None,
        faults: Faults | None = None,
        *,
        bucket: float = 2000.0,
        restore_rate: float = 100.0,
        mutation_cost: int = 10,
        item_cost: float = 1.0,
        max_query_cost: int = 1000,
        variants_per_product: int = 4,
        access_token: str = "shpat_emulator",
        max_input_items: int = 250,
    ) -> None:
        super().__init__(faults)
        self.sku_list = [f"SKU-{i:06d}" for i in range(skus)] if isinstance(skus, int) else list(skus)
        self.location_names = locations or ["main"]
        self.price_lists = price_lists or []
        self.bucket_size, self.restore_rate = bucket, restore_rate
        self.mutation_cost, self.item_cost, self.max_query_cost = mutation_cost, item_cost, max_query_cost
        self.variants_per_product = max(1, variants_per_product)
        self.access_token = access_token
        self.max_input_items = max_input_items
        self.bulk_delay = 0.05  # seconds a bulk operation stays RUNNING
        self.reset()

    # catalogue -----------------------------------------------------------------------------------
    def reset(self) -> None:
        self.locations = {i + 1: name for i, name in enumerate(self.location_names)}
        self.variants: dict[int, dict[str, Any]] = {}
        self.by_sku: dict[str, int] = {}
        self.levels: dict[tuple[int, int], dict[str, int]] = {}
        for n, sku in enumerate(self.sku_list):
            vid = 1000 + n
            self.variants[vid] = {
                "sku": sku,
                "product": 100 + n // self.variants_per_product,
                "item": 5000 + n,
                "price": Decimal("0.00"),
                "compareAtPrice": None,
            }
            self.by_sku[sku] = vid
            for loc in self.locations:
                self.levels[(5000 + n, loc)] = {"available": 0, "on_hand": 0}
        self.item_to_variant = {v["item"]: vid for vid, v in self.variants.items()}
        self.history: dict[tuple[str, str, str], list[Any]] = {}
        self.bulk_ops: dict[int, dict[str, Any]] = {}
        self.bulk_results: dict[int, bytes] = {}
        self.idempotency: dict[str, dict[str, Any]] = {}
        self._available = self.bucket_size
        self._refilled = time.monotonic()
        self.stats.update(throttled=0, rejected=0, writes=0, calls=0)
        self.op_counts: dict[str, int] = {}

    def location_gid(self, name: str) -> str:
        return GID.format("Location", next(k for k, v in self.locations.items() if v == name))

    def state(self) -> dict[str, Any]:
        with self.lock:
            stock = {
                v["sku"]: {
                    self.locations[loc]: self.levels[(v["item"], loc)]["available"] for loc in self.locations
                }
                for v in self.variants.values()
            }
            prices = {
                v["sku"]: {"regular": _money(v["price"]), "compare_at": _money(v["compareAtPrice"])}
                for v in self.variants.values()
            }
            return {
                "stock": stock,
                "prices": prices,
                "locations": {GID.format("Location", k): n for k, n in self.locations.items()},
                "writes": self.stats["writes"],
            }

    def _record(self, kind: str, sku: str, scope: str, value: Any) -> None:
        self.history.setdefault((kind, sku, scope), []).append(value)
        self.stats["writes"] += 1

    # throttle ------------------------------------------------------------------------------------
    def _throttle_status(self) -> dict[str, Any]:
        return {
            "maximumAvailable": self.bucket_size,
            "currentlyAvailable": round(self._available, 1),
            "restoreRate": self.restore_rate,
        }

    def _refill(self) -> None:
        now = time.monotonic()
        self._available = min(self.bucket_size, self._available + (now - self._refilled) * self.restore_rate)
        self._refilled = now

    # HTTP ----------------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        m = re.fullmatch(r"/admin/api/([^/]+)/graphql\.json", req.path)
        if req.path.startswith("/_bulk/"):
            op = int(req.path.removeprefix("/_bulk/").removesuffix(".jsonl"))
            data = self.bulk_results.get(op)
            return (
                Response(200, data, content_type="application/jsonl")
                if data is not None
                else Response(404, "")
            )
        if not m:
            return Response(404, {"errors": "Not Found"})
        version = m.group(1)
        if not re.fullmatch(r"\d{4}-(01|04|07|10)|unstable", version):
            return Response(404, {"errors": "Not Found"})
        if req.headers.get("x-shopify-access-token") != self.access_token:
            return Response(
                401,
                {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"},
            )
        if req.method != "POST":
            return Response(405, {"errors": "Method Not Allowed"})
        try:
            body = req.json()
        except json.JSONDecodeError:
            return Response(400, {"errors": {"query": "Required parameter missing or invalid"}})
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return Response(400, {"errors": {"query": "Required parameter missing or invalid"}})
        variables = body.get("variables") or {}
        with self.lock:
            self.stats["calls"] += 1
            return self._graphql(version, body["query"], variables, req)

    def _graphql(self, version: str, query: str, variables: dict[str, Any], req: Request) -> Response:
        self._refill()
        try:
            op = _Parser(query).document()
            cost = self._validate(op, variables, version)
        except GraphQLError as e:
            self.stats["rejected"] += 1
            return Response(200, {"errors": [e.error], "extensions": {"cost": self._cost_ext(None, None)}})
        if cost > self.max_query_cost:
            self.stats["rejected"] += 1
            err = GraphQLError(
                f"Query cost is {cost}, which exceeds the single query max cost limit "
                f"({self.max_query_cost}).",
                "MAX_COST_EXCEEDED",
                cost=cost,
                maxCost=self.max_query_cost,
            )
            return Response(200, {"errors": [err.error], "extensions": {"cost": self._cost_ext(cost, None)}})
        if cost > self._available:
            self.stats["throttled"] += 1
            err = GraphQLError("Throttled", "THROTTLED")
            err.error["extensions"]["documentation"] = "https://shopify.dev/api/usage/rate-limits"
            return Response(200, {"errors": [err.error], "extensions": {"cost": self._cost_ext(cost, None)}})
        self._available -= cost
        inv = [s for s in op.selections if s.name == "inventorySetQuantities"]
        if op.kind == "mutation" and version >= "2026-04" and inv:
            key = (inv[0].directives.get("idempotent") or op.directives.get("idempotent") or {}).get("key")
            key = variables.get(key.name) if isinstance(key, Var) else key
            if not isinstance(key, str) or not key:
                err = GraphQLError("The @idempotent directive is required for this mutation.", "BAD_REQUEST")
                return Response(
                    200, {"errors": [err.error], "extensions": {"cost": self._cost_ext(cost, cost)}}
                )
            if key in self.idempotency:
                return Response(200, self.idempotency[key])
        else:
            key = None
        data: dict[str, Any] = {}
        for sel in op.selections:
            args = _resolve_args(sel.args, variables)
            self.op_counts[sel.name] = self.op_counts.get(sel.name, 0) + 1
            data[sel.alias] = self._execute(sel, args, version, req)
        body = {"data": data, "extensions": {"cost": self._cost_ext(cost, cost)}}
        if key:
            self.idempotency[key] = body
        return Response(200, body)

    def _cost_ext(self, requested: int | None, actual: int | None) -> dict[str, Any]:
        return {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": self._throttle_status(),
        }

    # validation and cost -------------------------------------------------------------------------
    def _validate(self, op: Operation, variables: dict[str, Any], version: str) -> int:
        inputs = input_types(version)
        root = "Mutation" if op.kind == "mutation" else "QueryRoot"
        for name, typ in op.var_types.items():
            base = typ.strip("[]!")
            if base not in SCALARS and base not in inputs:
                raise GraphQLError(
                    f"{base} isn't a defined input type (on ${name})",
                    "variableRequiresValidType",
                    typeName=base,
                    variableName=name,
                )
            probs = coerce(variables.get(name), typ, inputs, "")
            if probs:
                raise GraphQLError(
                    f"Variable ${name} of type {typ} was provided invalid value"
                    + (f" for {probs[0]}" if not probs[0].startswith("(") else ""),
                    "INVALID_VARIABLE",
                    value=variables.get(name),
                    problems=[
                        {
                            "path": p.split(" (")[0].split(".") if p.split(" (")[0] else [],
                            "explanation": p.split(" (", 1)[1].rstrip(")"),
                        }
                        for p in probs
                    ],
                )
        return sum(self._check_sel(s, root, op, variables, inputs, top=True) for s in op.selections)

    def _check_sel(
        self,
        sel: Sel,
        parent: str,
        op: Operation,
        variables: dict[str, Any],
        inputs: dict[str, dict[str, str]],
        top: bool = False,
    ) -> int:
        fields = SCHEMA[parent]
        f = fields.get(sel.name)
        if f is None:
            raise GraphQLError(
                f"Field '{sel.name}' doesn't exist on type '{parent}'",
                "undefinedField",
                typeName=parent,
                fieldName=sel.name,
            )
        self._check_args(sel, f, op, variables, inputs)
        missing = [a for a, t in f.args.items() if t.endswith("!") and a not in sel.args]
        if missing:
            raise GraphQLError(
                f"Field '{sel.name}' is missing required arguments: {', '.join(missing)}",
                "missingRequiredArguments",
                arguments=", ".join(missing),
            )
        if f.type is None:
            if sel.children:
                raise GraphQLError(
                    f"Selections can't be made on scalars (field '{sel.name}')", "selectionMismatch"
                )
            return 0
        if not sel.children:
            raise GraphQLError(
                f"Field must have selections (field '{sel.name}' returns {f.type} but has no selections.)",
                "selectionMismatch",
            )
        inner = sum(self._check_sel(c, f.type, op, variables, inputs) for c in sel.children)
        if parent == "Mutation":
            args = _resolve_args(sel.args, variables)
            items = (
                args.get("input", {}).get("quantities")
                if sel.name == "inventorySetQuantities"
                else args.get("variants")
            )
            n = len(items) if isinstance(items, list) else 0
            if n > self.max_input_items:
                raise GraphQLError(
                    f"The input array size of {n} is greater than the maximum allowed of "
                    f"{self.max_input_items}.",
                    "MAX_INPUT_SIZE_EXCEEDED",
                    path=[sel.alias],
                )
            return int(self.mutation_cost + self.item_cost * n)
        if f.connection:
            first = _resolve_args(sel.args, variables).get("first")
            if not top or sel.name != "productVariants" or first is not None or parent != "QueryRoot":
                if not isinstance(first, int):
                    raise GraphQLError("you must provide one of first or last", "BAD_REQUEST")
                if first > 250:
                    raise GraphQLError(f"Page size {first} exceeds the maximum of 250", "BAD_REQUEST")
            node_cost = max((self._node_cost(c, f.type, variables) for c in sel.children), default=0)
            return 2 + (first or 0) * node_cost
        return 1 + inner

    def _check_args(self, sel: Sel, f: F, op: Operation, variables: dict[str, Any],
                    inputs: dict[str, dict[str, str]]) -> None:
        """Each argument of a selection: accepted by the field, its variable declared with the type the
        argument takes, its literal coercible — with Shopify's error codes for each."""
        for arg, val in sel.args.items():
            if arg not in f.args:
                raise GraphQLError(
                    f"Field '{sel.name}' doesn't accept argument '{arg}'",
                    "argumentNotAccepted",
                    name=sel.name,
                    typeName="Field",
                    argumentName=arg,
                )
            if isinstance(val, Var):
                if val.name not in op.var_types:
                    raise GraphQLError(
                        f"Variable ${val.name} is used by anonymous {op.kind} but not declared",
                        "variableNotDefined",
                        variableName=val.name,
                    )
                declared, want = op.var_types[val.name], f.args[arg]
                if declared.rstrip("!") != want.rstrip("!") or (
                    want.endswith("!") and not declared.endswith("!")
                ):
                    raise GraphQLError(
                        f"Type mismatch on variable ${val.name} and argument {arg} ({declared} / {want})",
                        "variableMismatch",
                    )
            else:
                probs = coerce(_resolve_args({arg: val}, variables)[arg], f.args[arg], inputs, "")
                if probs:
                    raise GraphQLError(
                        f"Argument '{arg}' on Field '{sel.name}' has an invalid value "
                        f"({json.dumps(val, default=str)}). Expected type '{f.args[arg]}'.",
                        "argumentLiteralsIncompatible",
                    )

    def _node_cost(self, sel: Sel, conn_type: str, variables: dict[str, Any]) -> int:
        if sel.name == "pageInfo" or not sel.children:
            return 0
        node_type = SCHEMA[conn_type][sel.name].type or ""
        if sel.name == "edges":
            node = next((c for c in sel.children if c.name == "node"), None)
            return (
                self._node_cost_obj(
                    node.children or [],
                    "ProductVariant" if "Variant" in node_type else "InventoryLevel",
                    variables,
                )
                if node
                else 0
            )
        return self._node_cost_obj(sel.children, node_type, variables)

    def _node_cost_obj(self, children: list[Sel], typ: str, variables: dict[str, Any]) -> int:
        cost = 1
        for c in children:
            f = SCHEMA[typ][c.name]
            if f.type is None or not c.children:
                continue
            if f.connection:
                first = _resolve_args(c.args, variables).get("first") or 0
                cost += 2 + first * max(
                    (self._node_cost(x, f.type, variables) for x in c.children), default=0
                )
            else:
                cost += self._node_cost_obj(c.children, f.type, variables)
        return cost

    # execution -----------------------------------------------------------------------------------
    def _execute(self, sel: Sel, args: dict[str, Any], version: str, req: Request) -> Any:
        if sel.name == "productVariants":
            return self._variants_connection(sel, args)
        if sel.name == "inventorySetQuantities":
            return _project(self._set_quantities(args["input"], version), sel.children or [])
        if sel.name == "productVariantsBulkUpdate":
            return _project(self._bulk_update(args), sel.children or [])
        if sel.name == "bulkOperationRunQuery":
            return _project(self._run_bulk(args, req), sel.children or [])
        if sel.name == "currentBulkOperation":
            op = self.bulk_ops[max(self.bulk_ops)] if self.bulk_ops else None
            return _project(self._bulk_view(op), sel.children or []) if op else None
        if sel.name == "bulkOperation":
            op = self.bulk_ops.get(gid_num(args["id"], "BulkOperation") or -1)
            return _project(self._bulk_view(op), sel.children or []) if op else None
        raise AssertionError(sel.name)

    def _variant_view(self, vid: int) -> dict[str, Any]:
        v = self.variants[vid]
        levels = [
            {
                "id": GID.format("InventoryLevel", f"{v['item']}?inventory_item_id={loc}"),
                "location": {"id": GID.format("Location", loc), "name": name},
                "quantities": [{"name": k, "quantity": q} for k, q in self.levels[(v["item"], loc)].items()],
            }
            for loc, name in self.locations.items()
        ]
        return {
            "id": GID.format("ProductVariant", vid),
            "sku": v["sku"],
            "title": v["sku"],
            "price": _money(v["price"]),
            "compareAtPrice": _money(v["compareAtPrice"]),
            "product": {"id": GID.format("Product", v["product"]), "title": f"Product {v['product']}"},
            "inventoryItem": {
                "id": GID.format("InventoryItem", v["item"]),
                "sku": v["sku"],
                "tracked": True,
                "inventoryLevels": levels,
            },
        }

    def _variants_connection(self, sel: Sel, args: dict[str, Any]) -> dict[str, Any]:
        ids = sorted(self.variants)
        q = args.get("query")
        if q:
            wanted = set()
            for term in re.split(r"\s+OR\s+", q.strip()):
                m = re.fullmatch(r'sku:(?:"((?:[^"\\]|\\.)*)"|(\S+))', term.strip())
                if not m:
                    continue  # Shopify ignores search terms it cannot use; so do we
                wanted.add(m.group(1).replace('\\"', '"') if m.group(1) is not None else m.group(2))
            ids = [self.by_sku[s] for s in sorted(wanted) if s in self.by_sku]
        return _connection(ids, args, sel.children or [], self._variant_view)

    def _set_quantities(self, inp: dict[str, Any], version: str) -> dict[str, Any]:
        errors: list[dict[str, Any]] = []
        if inp["name"] not in ("available", "on_hand"):
            errors.append(_user_error("INVALID_NAME", ["input", "name"],
                                      "The quantity name must be either 'available' or 'on_hand'."))
        rows = []
        for i, q in enumerate(inp["quantities"]):
            item, loc = gid_num(q["inventoryItemId"], "InventoryItem"), gid_num(q["locationId"], "Location")
            error = self._quantity_error(inp, q, ["input", "quantities", str(i)], item, loc, version)
            if error is not None:
                errors.append(error)
                continue
            rows.append((item, loc, q["quantity"]))
        if errors:  # all or nothing, as Shopify applies the adjustment group atomically
            return {"inventoryAdjustmentGroup": None, "userErrors": errors}
        for item, loc, qty in rows:
            level = self.levels[(item, loc)]
            delta = qty - level[inp["name"]]
            level[inp["name"]] = qty
            other = "on_hand" if inp["name"] == "available" else "available"
            level[other] += delta
            sku = self.variants[self.item_to_variant[item]]["sku"]
            self._record("stock", sku, self.locations[loc], level["available"])
        return {
            "inventoryAdjustmentGroup": {
                "id": GID.format("InventoryAdjustmentGroup", uuid.uuid4().int % 10**9),
                "reason": inp["reason"],
                "createdAt": _now(),
                "referenceDocumentUri": inp.get("referenceDocumentUri"),
            },
            "userErrors": [],
        }

    def _quantity_error(self, inp: dict[str, Any], q: dict[str, Any], path: list[str], item: Any, loc: Any,
                        version: str) -> dict[str, Any] | None:
        """The userError one quantity of inventorySetQuantities earns, or None when it may be set."""
        if item not in self.item_to_variant:
            return _user_error("INVALID_INVENTORY_ITEM", [*path, "inventoryItemId"],
                               "The specified inventory item could not be found.")
        if loc not in self.locations:
            return _user_error("INVALID_LOCATION", [*path, "locationId"],
                               "The specified location could not be found.")
        if q["quantity"] < -1_000_000_000 or q["quantity"] > 1_000_000_000:
            return _user_error("INVALID_QUANTITY_TOO_HIGH", [*path, "quantity"],
                               "The quantity can't be higher than 1,000,000,000.")
        current = self.levels[(item, loc)][inp["name"]]
        if version < "2026-01":
            if "compareQuantity" not in q and not inp.get("ignoreCompareQuantity"):
                return _user_error("COMPARE_QUANTITY_REQUIRED", [*path, "compareQuantity"],
                                   "The compareQuantity argument must be given to each quantity or "
                                   "ignored using ignoreCompareQuantity.")
            if not inp.get("ignoreCompareQuantity") and q.get("compareQuantity") != current:
                return _user_error("COMPARE_QUANTITY_STALE", [*path, "compareQuantity"],
                                   "The compareQuantity value does not match the current quantity.")
            return None
        if version >= "2026-04" and "changeFromQuantity" not in q:
            return _user_error("CHANGE_FROM_QUANTITY_REQUIRED", [*path, "changeFromQuantity"],
                               "changeFromQuantity is required.")
        if q.get("changeFromQuantity") is not None and q["changeFromQuantity"] != current:
            return _user_error("CHANGE_FROM_QUANTITY_STALE", [*path, "changeFromQuantity"],
                               "The changeFromQuantity value does not match the current quantity.")
        return None

    def _bulk_update(self, args: dict[str, Any]) -> dict[str, Any]:
        pid = gid_num(args["productId"], "Product")
        if pid is None or not any(v["product"] == pid for v in self.variants.values()):
            return {
                "product": None,
                "productVariants": None,
                "userErrors": [
                    {
                        "code": "PRODUCT_DOES_NOT_EXIST",
                        "field": ["productId"],
                        "message": "Product does not exist",
                    }
                ],
            }
        errors, good = [], []
        for i, v in enumerate(args["variants"]):
            vid = gid_num(v.get("id"), "ProductVariant")
            path = ["variants", str(i)]
            if vid not in self.variants or self.variants[vid]["product"] != pid:
                errors.append(
                    {
                        "code": "PRODUCT_VARIANT_DOES_NOT_EXIST",
                        "field": [*path, "id"],
                        "message": "Product variant does not exist",
                    }
                )
                continue
            bad = [k for k in ("price", "compareAtPrice") if v.get(k) is not None and Decimal(str(v[k])) < 0]
            if bad:
                errors.append(
                    {
                        "code": "GREATER_THAN_OR_EQUAL_TO",
                        "field": [*path, bad[0]],
                        "message": f"{'Price' if bad[0] == 'price' else 'Compare at price'} must be "
                        "greater than or equal to 0",
                    }
                )
                continue
            good.append((vid, v))
        if errors and not args.get("allowPartialUpdates"):
            return {"product": None, "productVariants": None, "userErrors": errors}
        for vid, v in good:
            var = self.variants[vid]
            for k, field_name in (("price", "regular"), ("compareAtPrice", "compare_at")):
                if k in v:
                    var[k] = None if v[k] is None else Decimal(str(v[k])).quantize(Decimal("0.01"))
                    self._record("price", var["sku"], field_name, _money(var[k]))
        return {
            "product": {"id": args["productId"], "title": f"Product {pid}"},
            "productVariants": [self._variant_view(vid) for vid, _ in good],
            "userErrors": errors,
        }

    # bulk operations -----------------------------------------------------------------------------
    def _run_bulk(self, args: dict[str, Any], req: Request) -> dict[str, Any]:
        running = [o for o in self.bulk_ops.values() if o["status"] in ("CREATED", "RUNNING")]
        if running:
            return {
                "bulkOperation": None,
                "userErrors": [
                    {
                        "code": "OPERATION_IN_PROGRESS",
                        "field": ["query"],
                        "message": "A bulk query operation for this app and shop is already in progress: "
                        f"{running[0]['id']}.",
                    }
                ],
            }
        try:
            inner = _Parser(args["query"]).document()
            if inner.kind != "query" or inner.var_types:
                raise GraphQLError("Bulk queries must be queries without variables", "INVALID")
            for s in inner.selections:
                self._check_bulk(s, "QueryRoot", inner)
        except GraphQLError as e:
            return {
                "bulkOperation": None,
                "userErrors": [{"code": "INVALID", "field": ["query"], "message": str(e)}],
            }
        n = max(self.bulk_ops, default=0) + 1
        host = req.headers.get("host", "127.0.0.1")
        op = {
            "id": GID.format("BulkOperation", n),
            "n": n,
            "status": "CREATED",
            "query": args["query"],
            "createdAt": _now(),
            "completedAt": None,
            "objectCount": "0",
            "url": None,
            "errorCode": None,
            "type": "QUERY",
            "_done_at": time.monotonic() + self.bulk_delay,
            "_url": f"http://{host}/_bulk/{n}.jsonl",
        }
        # the result is a snapshot at start time: build it now, publish it when the delay has passed
        lines: list[str] = []
        for sel in inner.selections:
            for vid in sorted(self.variants):
                _bulk_lines(self._variant_view(vid), sel.children or [], None, lines)
        self.bulk_results[n] = ("\n".join(lines) + "\n").encode() if lines else b""
        op["_count"] = len(lines)
        self.bulk_ops[n] = op
        return {"bulkOperation": self._bulk_view(op), "userErrors": []}

    def _check_bulk(self, sel: Sel, parent: str, op: Operation) -> None:
        f = SCHEMA[parent].get(sel.name)
        if f is None:
            raise GraphQLError(f"Field '{sel.name}' doesn't exist on type '{parent}'", "undefinedField")
        if f.type and not sel.children:
            raise GraphQLError(f"Field must have selections (field '{sel.name}')", "selectionMismatch")
        for c in sel.children or []:
            self._check_bulk(c, f.type or "", op)

    def _bulk_view(self, op: dict[str, Any]) -> dict[str, Any]:
        if op["status"] in ("CREATED", "RUNNING"):
            op["status"] = "COMPLETED" if time.monotonic() >= op["_done_at"] else "RUNNING"
            if op["status"] == "COMPLETED":
                op.update(
                    completedAt=_now(),
                    objectCount=str(op["_count"]),
                    url=op["_url"] if op["_count"] else None,
                )
        return {k: v for k, v in op.items() if not k.startswith("_") and k != "n"}


def _resolve_args(args: dict[str, Any], variables: dict[str, Any]) -> dict[str, Any]:
    def res(v: Any) -> Any:
        if isinstance(v, Var):
            return variables.get(v.name)
        if isinstance(v, Enum):
            return v.name
        if isinstance(v, list):
            return [res(x) for x in v]
        if isinstance(v, dict):
            return {k: res(x) for k, x in v.items()}
        return v

    return {k: res(v) for k, v in args.items()}


_CONNECTION_FIELDS = {"inventoryLevels"}


def _project(obj: Any, sels: list[Sel]) -> Any:
    """Shape a plain dict tree like the selection set asks (aliases, nested connections, lists)."""
    if obj is None:
        return None
    if isinstance(obj, list):
        return [_project(o, sels) for o in obj]
    out = {}
    for s in sels:
        val = obj.get(s.name) if isinstance(obj, dict) else None
        if s.name in _CONNECTION_FIELDS and isinstance(val, list):
            args = _resolve_args(s.args, {})
            out[s.alias] = _connection(list(range(len(val))), args, s.children or [], lambda i, v=val: v[i])
        elif s.name == "quantities" and isinstance(val, list):
            names = _resolve_args(s.args, {}).get("names") or []
            out[s.alias] = _project([q for q in val if q["name"] in names], s.children or [])
        else:
            out[s.alias] = _project(val, s.children) if s.children else val
    return out


def _connection(ids: list[Any], args: dict[str, Any], sels: list[Sel], view: Any) -> dict[str, Any]:
    after = args.get("after")
    start = 0
    if after:
        try:
            start = int(after.removeprefix("c")) + 1
        except ValueError:
            start = len(ids)
    first = args.get("first") or len(ids)
    page = list(enumerate(ids))[start : start + first]
    out: dict[str, Any] = {}
    for s in sels:
        if s.name == "nodes":
            out[s.alias] = [_project(view(i), s.children or []) for _, i in page]
        elif s.name == "edges":
            out[s.alias] = [_project({"cursor": f"c{n}", "node": view(i)}, s.children or []) for n, i in page]
        elif s.name == "pageInfo":
            out[s.alias] = _project(
                {
                    "hasNextPage": start + first < len(ids),
                    "hasPreviousPage": start > 0,
                    "endCursor": f"c{page[-1][0]}" if page else None,
                    "startCursor": f"c{page[0][0]}" if page else None,
                },
                s.children or [],
            )
    return out


def _bulk_lines(node: dict[str, Any], sels: list[Sel], parent: str | None, lines: list[str]) -> None:
    """Bulk JSONL: connection nodes become their own lines, children after their parent with __parentId."""
    flat: dict[str, Any] = {}
    nested: list[tuple[list[Any], list[Sel]]] = []

    def walk(obj: dict[str, Any], sels: list[Sel], out: dict[str, Any]) -> None:
        for s in sels:
            val = obj.get(s.name)
            if s.name in _CONNECTION_FIELDS and isinstance(val, list):
                inner = next((c for c in s.children or [] if c.name in ("edges", "nodes")), None)
                if inner and inner.name == "edges":
                    inner = next((c for c in inner.children or [] if c.name == "node"), None)
                nested.append((val, inner.children or [] if inner else []))
            elif s.name == "quantities" and isinstance(val, list):
                names = _resolve_args(s.args, {}).get("names") or []
                out[s.alias] = [_project(q, s.children or []) for q in val if q["name"] in names]
            elif s.children and isinstance(val, dict):
                out[s.alias] = {}
                walk(val, s.children, out[s.alias])
            else:
                out[s.alias] = val

    inner_sels = sels
    edges = next((c for c in sels if c.name == "edges"), None)
    if edges:
        inner_sels = next((c.children or [] for c in edges.children or [] if c.name == "node"), [])
    nodes = next((c for c in sels if c.name == "nodes"), None)
    if nodes:
        inner_sels = nodes.children or []
    walk(node, inner_sels, flat)
    if parent:
        flat["__parentId"] = parent
    lines.append(json.dumps(flat))
    for children, child_sels in nested:
        for child in children:
            row: dict[str, Any] = {}
            walk(child, child_sels, row)
            row["__parentId"] = node["id"]
            lines.append(json.dumps(row))


def _money(v: Decimal | None) -> str | None:
    return None if v is None else format(v.quantize(Decimal("0.01")), "f")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _user_error(code: str, field: list[str], message: str) -> dict[str, Any]:
    return {"code": code, "field": field, "message": message}
