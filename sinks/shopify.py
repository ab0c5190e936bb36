"""Shopify Admin GraphQL sink.

Stock: ``inventorySetQuantities`` (≤ 250 quantities per call); prices: ``productVariantsBulkUpdate`` (one
product per mutation field, several fields aliased in one request). SKU → variant / product / inventory
item ids come from ``productVariants(query: "sku:A OR sku:B")`` and are cached. Shopify answers HTTP 200
for GraphQL errors, userErrors and throttling, so the body decides success (pitfall #13). Requests are
paced by a client-side mirror of the server's cost bucket (``extensions.cost.throttleStatus``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
    SinkError,
    describe_http_error,
    http_client,
)
from sinks.config import ShopifySinkConfig

log = logging.getLogger(__name__)

MAX_QUERY_COST = 1000  # Shopify's single-query cost limit
MAX_INLINE_THROTTLE_WAIT = 10.0  # wait this long inside push for a throttled request; beyond, hand back RETRY


@dataclass(slots=True)
class _Ids:
    variant: str
    product: str
    item: str
    resolved_at: float


class CostBucket:
    """Client-side mirror of Shopify's leaky bucket: wait until the next request's cost has been restored,
    so steady state never gets THROTTLED. Updated from every response's throttleStatus."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.maximum: float | None = None
        self.available = 0.0
        self.rate = 0.0
        self.at = 0.0

    def update(self, status: dict[str, Any]) -> None:
        with self.lock:
            self.maximum = float(status["maximumAvailable"])
            self.available = float(status["currentlyAvailable"])
            self.rate = float(status["restoreRate"])
            self.at = time.monotonic()

    def _now_available(self, now: float) -> float:
        assert self.maximum is not None
        return min(self.maximum, self.available + (now - self.at) * self.rate)

    def acquire(self, cost: float) -> float:
        """Sleep until ``cost`` points are available, then take them; returns the time slept."""
        with self.lock:
            if self.maximum is None or self.rate <= 0:
                return 0.0  # nothing known yet: the first response tells us
            now = time.monotonic()
            # a small margin absorbs rounding of currentlyAvailable and clock skew between us and the server
            need = min(cost + self.rate * 0.01, self.maximum)
            wait = max(0.0, (need - self._now_available(now)) / self.rate)
            self.available = self._now_available(now) + wait * self.rate - cost
            self.at = now + wait
        if wait > 0:
            time.sleep(wait)
        return wait

    def wait_for(self, cost: float) -> float:
        with self.lock:
            if self.maximum is None or self.rate <= 0:
                return 1.0
            return max(0.0, (cost - self._now_available(time.monotonic())) / self.rate)


def _quote_sku(sku: str) -> str:
    return 'sku:"' + sku.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _money(amount: Decimal) -> str:
    return format(amount, "f")


def _field_index(field: Any, marker: str) -> int | None:
    """Index into the input list named ``marker`` from a userError ``field`` path."""
    if isinstance(field, list):
        for i, part in enumerate(field[:-1]):
            if part == marker and str(field[i + 1]).isdigit():
                return int(field[i + 1])
    return None


def _split_price_groups(groups: list[tuple[str, list[str]]]) -> list[list[tuple[str, list[str]]]]:
    """Bisect a refused price request: its products, or the variants of its only product."""
    if len(groups) > 1:
        half = len(groups) // 2
        return [groups[:half], groups[half:]]
    product, variants = groups[0]
    half = len(variants) // 2
    return [[(product, variants[:half])], [(product, variants[half:])]] if half else [groups]


class ShopifySink(ShopSink):
    kind = "shopify"
    platform = "Shopify"
    unknown_sku = "no Shopify variant"
    max_batch = 250  # Shopify's input array limit

    def __init__(self, config: ShopifySinkConfig) -> None:
        endpoint = f"{config.url.rstrip('/')}/admin/api/{config.api_version}/graphql.json"
        # paced by the cost bucket below, not by requests per second
        super().__init__(config, endpoint, {"X-Shopify-Access-Token": config.access_token.get_secret_value()})
        self.cfg = config
        self.endpoint = endpoint
        self.ids: dict[str, _Ids] = {}
        self.known_qty: dict[tuple[str, str], int] = {}  # (item gid, location gid) -> last read/written
        self.bucket = CostBucket()
        self._learned: dict[str, tuple[float, int]] = {}  # op -> (requested cost, items) of the last call
        self.lock = threading.Lock()
        self.stats |= {"lookups": 0, "paced_seconds": 0}
        version = config.api_version
        self.compare_style = "compareQuantity" if version < "2026-01" else "changeFromQuantity"
        self.idempotent = version >= "2026-04"  # also true for "unstable"
        self.use_known = config.compare_quantity == "last_known" or self.idempotent

    # GraphQL transport -------------------------------------------------------------------------------
    def _estimate(self, op: str, items: int, default: float) -> float:
        last = self._learned.get(op)
        if last and last[1]:
            return max(default * 0.5, last[0] * max(items, 1) / last[1])
        return default

    def refusal(self, resp: httpx.Response) -> Permanent:
        return Permanent(describe_http_error(resp), per_item=False, status=resp.status_code)

    def gql(
        self, op: str, query: str, variables: dict[str, Any], est_cost: float, items: int = 1
    ) -> dict[str, Any]:
        """One GraphQL request → ``data``. Raises RetryLater / Permanent; retries THROTTLED inline when
        short. Shopify answers HTTP 200 for errors too: the body decides."""
        throttled_waits = 0
        while True:
            if self.cfg.pace:
                self.stats["paced_seconds"] += self.bucket.acquire(est_cost)
            resp = self.call("POST", json={"query": query, "variables": variables})
            try:
                body = resp.json()
            except ValueError:
                raise RetryLater(f"unparseable response: {describe_http_error(resp)}",
                                 kind="bad_answer") from None
            if not isinstance(body, dict):
                raise RetryLater(f"unparseable response: JSON {type(body).__name__}, not an object",
                                 kind="bad_answer")
            cost = (body.get("extensions") or {}).get("cost") or {}
            if cost.get("throttleStatus"):
                self.bucket.update(cost["throttleStatus"])
            if cost.get("requestedQueryCost") is not None and not body.get("errors"):
                self._learned[op] = (float(cost["requestedQueryCost"]), items)
            errors = body.get("errors")
            if not errors:
                return body.get("data") or {}
            codes = {(e.get("extensions") or {}).get("code") for e in errors if isinstance(e, dict)}
            if "THROTTLED" in codes:
                self.stats["throttled"] += 1
                requested = float(cost.get("requestedQueryCost") or est_cost)
                est_cost = max(est_cost, requested)
                wait = self.bucket.wait_for(requested)
                if throttled_waits < 3 and wait <= MAX_INLINE_THROTTLE_WAIT:
                    throttled_waits += 1
                    time.sleep(wait)
                    continue
                raise RetryLater("Shopify throttled the request (THROTTLED)", wait, throttled=True)
            msg = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)[:500]
            if codes & {"INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE"}:
                raise RetryLater(f"Shopify error: {msg}")
            raise Permanent(f"Shopify rejected the request: {msg}", per_item=codes == {"INVALID_VARIABLE"})

    # SKU resolution ----------------------------------------------------------------------------------
    def _levels_selection(self) -> str:
        n = max(1, len(self.cfg.locations))
        name = self.cfg.quantity_name
        return (
            f" inventoryLevels(first: {n}) {{ nodes {{ location {{ id }} "
            f'quantities(names: ["{name}"]) {{ name quantity }} }} }}'
        )

    def resolve(self, skus: list[str], with_levels: bool | None = None) -> None:
        """Resolve and cache ids (and, for compare-and-set, current quantities) for these SKUs."""
        with_levels = self.use_known if with_levels is None else with_levels
        node_cost = 3 + (2 + 3 * max(1, len(self.cfg.locations)) if with_levels else 0)
        chunk = max(1, min(250, (MAX_QUERY_COST - 2) // node_cost))
        levels = self._levels_selection() if with_levels else ""
        query = (
            "query Lookup($q: String!, $n: Int!) { productVariants(first: $n, query: $q) { nodes { id sku "
            f"product {{ id }} inventoryItem {{ id{levels} }} }} }} }}"
        )
        for i in range(0, len(skus), chunk):
            part = skus[i : i + chunk]
            data = self.gql(
                "lookup",
                query,
                {"q": " OR ".join(_quote_sku(s) for s in part), "n": len(part)},
                self._estimate("lookup", len(part), 2 + node_cost * len(part)),
                len(part),
            )
            self.stats["lookups"] += 1
            now = time.monotonic()
            wanted = set(part)
            for node in (data.get("productVariants") or {}).get("nodes") or []:
                if node.get("sku") not in wanted:
                    continue  # Shopify search can match more loosely than an exact SKU
                item = node["inventoryItem"]["id"]
                self.ids[node["sku"]] = _Ids(node["id"], node["product"]["id"], item, now)
                for lvl in (node["inventoryItem"].get("inventoryLevels") or {}).get("nodes") or []:
                    for q in lvl.get("quantities") or []:
                        if q["name"] == self.cfg.quantity_name:
                            self.known_qty[(item, lvl["location"]["id"])] = int(q["quantity"])

    # push: hooks of Sink.push ---------------------------------------------------------------------------
    def known(self, sku: str) -> bool:
        return sku in self.ids

    def lookup(self, facts: list[Fact]) -> None:
        if not all(self.known(f.sku) for f in facts):
            super().lookup(facts)
        elif self.use_known and any(
            (self.ids[f.sku].item, self._loc(f)) not in self.known_qty for f in facts if f.kind == "stock"
        ):
            self.resolve(sorted({f.sku for f in facts if f.kind == "stock"}), with_levels=True)

    def groups(self, facts: list[Fact]) -> Iterator[tuple[str, list[Fact]]]:
        for kind in ("stock", "price"):
            part = [f for f in facts if f.kind == kind]
            if part:
                yield kind, part

    def write(self, group: str, facts: list[Fact], results: Results, started: float) -> None:
        if group == "stock":
            self._push_stock(facts, results, started)
        else:
            self._push_prices(facts, results, started)

    def _loc(self, f: Fact) -> str:
        return self.cfg.locations.get(f.location, f.location)

    # stock -------------------------------------------------------------------------------------------
    def _push_stock(self, facts: list[Fact], results: Results, started: float) -> None:
        pending = facts
        for _round in range(3):  # Shopify applies a set atomically: resend the good ones after userErrors
            if not pending:
                return
            query, variables = self._stock_mutation(pending)
            try:
                data = self.gql(
                    "stock",
                    query,
                    variables,
                    self._estimate("stock", len(pending), 10 + len(pending)),
                    len(pending),
                )
            except (RetryLater, Permanent) as e:
                # refused as a whole for one value (e.g. out of range): bisect to isolate the culprit
                self.settle(e, pending, results, resend=lambda part: self._push_stock(part, results, started))
                return
            errors = (data.get("inventorySetQuantities") or {}).get("userErrors") or []
            pending = self._stock_answer(pending, errors, results, started)
        for f in pending:
            results[f.key] = PushResult(
                f.key, Outcome.RETRY, "stock kept changing in the shop; retry later", 1.0
            )

    def _stock_mutation(self, pending: list[Fact]) -> tuple[str, dict[str, Any]]:
        """inventorySetQuantities for these facts, in the API version's compare-and-set dialect."""
        quantities = []
        for f in pending:
            item, loc = self.ids[f.sku].item, self._loc(f)
            q: dict[str, Any] = {"inventoryItemId": item, "locationId": loc, "quantity": f.available}
            if self.use_known:
                q[self.compare_style] = self.known_qty.get((item, loc))
            elif self.compare_style == "changeFromQuantity":
                q["changeFromQuantity"] = None  # 2026-01: null opts out of the check
            quantities.append(q)
        inp: dict[str, Any] = {
            "name": self.cfg.quantity_name,
            "reason": self.cfg.reason,
            "quantities": quantities,
        }
        if self.cfg.reference_document_uri:
            inp["referenceDocumentUri"] = self.cfg.reference_document_uri
        if not self.use_known and self.compare_style == "compareQuantity":
            inp["ignoreCompareQuantity"] = True
        variables: dict[str, Any] = {"input": inp}
        if self.idempotent:
            variables["key"] = str(uuid.uuid4())  # one key per attempt; inline throttle retries reuse it
            head, directive = (
                "($input: InventorySetQuantitiesInput!, $key: String!)",
                " @idempotent(key: $key)",
            )
        else:
            head, directive = "($input: InventorySetQuantitiesInput!)", ""
        query = (
            f"mutation SetStock{head} {{ inventorySetQuantities(input: $input){directive} "
            "{ inventoryAdjustmentGroup { id } userErrors { code field message } } }"
        )
        return query, variables

    def _stock_answer(
        self, pending: list[Fact], errors: list[dict[str, Any]], results: Results, started: float
    ) -> list[Fact]:
        """Record the results of one applied (or refused) set; returns the facts to send again: the good
        ones of a set refused for some items, and those whose compare-and-set found the shop moved."""
        if not errors:
            for f in pending:
                results[f.key] = PushResult(f.key, Outcome.OK)
                self.known_qty[(self.ids[f.sku].item, self._loc(f))] = f.available
            return []
        # read before the first stale id is forgotten: each location of that SKU is retried, not refused
        resolved_at = {f.sku: self.ids[f.sku].resolved_at for f in pending}
        bad: set[int] = set()
        stale: list[Fact] = []
        for err in errors:
            i = _field_index(err.get("field"), "quantities")
            if i is None or i >= len(pending):
                continue
            f, code, msg = pending[i], err.get("code"), f"{err.get('code')}: {err.get('message')}"
            bad.add(i)
            if code in ("COMPARE_QUANTITY_STALE", "CHANGE_FROM_QUANTITY_STALE"):
                stale.append(f)  # the shop moved (an order?): re-read, then set the ERP's value again
            elif code == "INVALID_INVENTORY_ITEM":
                results[f.key] = self.stale_or_refused(f, self.ids, resolved_at[f.sku], started, msg)
            else:
                results[f.key] = PushResult(f.key, Outcome.PERMANENT, msg)
        if not bad:  # userErrors we cannot attribute: the set was refused as a whole
            msg = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)[:500]
            for f in pending:
                results[f.key] = PushResult(f.key, Outcome.PERMANENT, msg)
            return []
        if stale:
            try:
                self.resolve(sorted({f.sku for f in stale}), with_levels=True)
            except (RetryLater, Permanent) as e:
                for f in stale:
                    results[f.key] = PushResult(
                        f.key, Outcome.RETRY, f"re-reading stock failed: {e}", None
                    )
                stale = []
        return [f for i, f in enumerate(pending) if i not in bad or f in stale]

    # prices ------------------------------------------------------------------------------------------
    def _push_prices(self, facts: list[Fact], results: Results, started: float) -> None:
        by_variant: dict[str, dict[str, Any]] = {}
        facts_of: dict[str, list[Fact]] = {}
        for f in facts:
            ids = self.ids[f.sku]
            v = by_variant.setdefault(ids.variant, {"id": ids.variant})
            facts_of.setdefault(ids.variant, []).append(f)
            field = self.cfg.price_lists[f.price_list]
            if field == "regular":
                v["price"] = _money(f.amount)
                cmp = f.value.get("compare_at")
                # a list mapped to compare_at wins over the compare_at carried by the regular price
                if cmp is not None and "compare_at" not in self.cfg.price_lists.values():
                    v["compareAtPrice"] = _money(Decimal(str(cmp)))
            else:
                v["compareAtPrice"] = _money(f.amount)
        by_product: dict[str, list[str]] = {}
        for f in facts:
            ids = self.ids[f.sku]
            lst = by_product.setdefault(ids.product, [])
            if ids.variant not in lst:
                lst.append(ids.variant)
        groups = [(p, vs[i : i + 250]) for p, vs in by_product.items() for i in range(0, len(vs), 250)]
        step = self.cfg.price_products_per_request
        for start in range(0, len(groups), step):
            self._price_request(groups[start : start + step], by_variant, facts_of, results, started)

    def _price_request(
        self,
        groups: list[tuple[str, list[str]]],
        by_variant: dict[str, dict[str, Any]],
        facts_of: dict[str, list[Fact]],
        results: Results,
        started: float,
    ) -> None:
        decls, fields, variables = [], [], {}
        for n, (product, variants) in enumerate(groups):
            decls.append(f"$p{n}: ID!, $v{n}: [ProductVariantsBulkInput!]!")
            fields.append(
                f"p{n}: productVariantsBulkUpdate(productId: $p{n}, variants: $v{n}, "
                "allowPartialUpdates: true) { userErrors { code field message } }"
            )
            variables[f"p{n}"] = product
            variables[f"v{n}"] = [by_variant[v] for v in variants]
        query = f"mutation Prices({', '.join(decls)}) {{ {' '.join(fields)} }}"
        items = sum(len(v) for _, v in groups)
        all_facts = [f for _, vs in groups for v in vs for f in facts_of[v]]
        try:
            data = self.gql(
                "prices", query, variables, self._estimate("prices", items, 10 * len(groups) + items), items
            )
        except (RetryLater, Permanent) as e:
            # an input refused: isolate the product, then the variant, whose input it was
            self.settle(
                e,
                all_facts,
                results,
                units=groups,
                split=_split_price_groups,
                resend=lambda part: self._price_request(part, by_variant, facts_of, results, started),
            )
            return
        for n, (_product, variants) in enumerate(groups):
            self._price_answer(data.get(f"p{n}") or {}, variants, facts_of, results, started)

    def _price_answer(
        self,
        payload: dict[str, Any],
        variants: list[str],
        facts_of: dict[str, list[Fact]],
        results: Results,
        started: float,
    ) -> None:
        """Results of one product's productVariantsBulkUpdate (partial updates allowed)."""
        # read before the first stale id is forgotten: every price of that variant is retried, not refused
        resolved_at = {v: self.ids[facts_of[v][0].sku].resolved_at for v in variants}
        failed: dict[str, str] = {}
        whole: str | None = None
        for err in payload.get("userErrors") or []:
            msg = f"{err.get('code')}: {err.get('message')}"
            i = _field_index(err.get("field"), "variants")
            if i is not None and i < len(variants):
                failed[variants[i]] = msg
            else:
                whole = msg
        for v in variants:
            for f in facts_of[v]:
                if whole is not None:
                    results[f.key] = self.stale_or_refused(f, self.ids, resolved_at[v], started, whole)
                elif v in failed:
                    code = failed[v].split(":", 1)[0]
                    results[f.key] = (
                        self.stale_or_refused(f, self.ids, resolved_at[v], started, failed[v])
                        if code == "PRODUCT_VARIANT_DOES_NOT_EXIST"
                        else PushResult(f.key, Outcome.PERMANENT, failed[v])
                    )
                else:
                    results[f.key] = PushResult(f.key, Outcome.OK)

    # snapshot ----------------------------------------------------------------------------------------
    def snapshot(self) -> Iterator[Fact]:
        rows = self._snapshot_bulk() if self.cfg.snapshot_mode == "bulk" else self._snapshot_pages()
        loc_names = {v: k for k, v in self.cfg.locations.items()}
        cmp_mapped = "compare_at" in self.cfg.price_lists.values()
        currency = self.cfg.currency or ""
        for variant, levels in rows:
            sku = variant.get("sku")
            if not sku:
                continue
            if "stock" in self.cfg.kinds:
                for loc_id, qty in levels:
                    name = loc_names.get(loc_id, loc_id if not self.cfg.locations else None)
                    if name is not None:
                        yield stock_fact(sku, name, qty)
            if "price" in self.cfg.kinds:
                for plist, field in self.cfg.price_lists.items():
                    raw = variant.get("price") if field == "regular" else variant.get("compareAtPrice")
                    if raw is None:
                        continue
                    cmp = variant.get("compareAtPrice") if field == "regular" and not cmp_mapped else None
                    yield price_fact(
                        sku,
                        plist,
                        Decimal(str(raw)),
                        currency,
                        Decimal(str(cmp)) if cmp is not None else None,
                    )

    def _levels_of(self, item: dict[str, Any]) -> list[tuple[str, int]]:
        out = []
        for lvl in (item.get("inventoryLevels") or {}).get("nodes") or []:
            out += [
                (lvl["location"]["id"], int(q["quantity"]))
                for q in lvl.get("quantities") or []
                if q["name"] == self.cfg.quantity_name
            ]
        return out

    def _snapshot_pages(self) -> Iterator[tuple[dict[str, Any], list[tuple[str, int]]]]:
        node_cost = 3 + 2 + 3 * max(1, len(self.cfg.locations))
        page = max(1, min(250, (MAX_QUERY_COST - 2) // node_cost))
        query = (
            "query Page($n: Int!, $after: String) { productVariants(first: $n, after: $after) { "
            "pageInfo { hasNextPage endCursor } nodes { id sku price compareAtPrice inventoryItem { id"
            f"{self._levels_selection()} }} }} }} }}"
        )
        after: str | None = None
        while True:
            data = self.listing(
                lambda a=after: self.gql(
                    "page",
                    query,
                    {"n": page, "after": a},
                    self._estimate("page", page, 2 + node_cost * page),
                    page,
                )
            )
            conn = data["productVariants"]
            for node in conn["nodes"]:
                yield node, self._levels_of(node["inventoryItem"])
            if not conn["pageInfo"]["hasNextPage"]:
                return
            after = conn["pageInfo"]["endCursor"]

    def _snapshot_bulk(self) -> Iterator[tuple[dict[str, Any], list[tuple[str, int]]]]:
        name = self.cfg.quantity_name
        inner = (
            "{ productVariants { edges { node { id sku price compareAtPrice inventoryItem { id "
            "inventoryLevels { edges { node { location { id } "
            f'quantities(names: ["{name}"]) {{ name quantity }} }} }} }}'
            " } } } } }"
        )
        run = (
            "mutation Bulk($q: String!) { bulkOperationRunQuery(query: $q) { bulkOperation { id status } "
            "userErrors { code field message } } }"
        )
        data = self.listing(lambda: self.gql("bulk", run, {"q": inner}, 10))
        payload = data["bulkOperationRunQuery"]
        if payload.get("userErrors"):
            raise SinkError(f"Shopify refused the bulk export: {payload['userErrors']}")
        op_id = payload["bulkOperation"]["id"]
        poll = "query Poll($id: ID!) { bulkOperation(id: $id) { id status errorCode objectCount url } }"
        while True:
            op = self.listing(lambda: self.gql("poll", poll, {"id": op_id}, 1))["bulkOperation"]
            if op["status"] == "COMPLETED":
                break
            if op["status"] in ("FAILED", "CANCELED", "CANCELING", "EXPIRED"):
                raise SinkError(f"Shopify bulk export {op['status']}: {op.get('errorCode')}")
            time.sleep(self.cfg.bulk_poll_seconds)
        if not op.get("url"):
            return
        # the result lives on storage, not the shop: never send the access token there
        with http_client(self.cfg) as plain, plain.stream("GET", op["url"]) as resp:
            if resp.status_code != 200:
                raise SinkError(f"bulk result download failed: HTTP {resp.status_code}")
            current: dict[str, Any] | None = None
            levels: list[tuple[str, int]] = []
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                row = json.loads(line)
                if "__parentId" in row:
                    levels += [
                        (row["location"]["id"], int(q["quantity"]))
                        for q in row.get("quantities") or []
                        if q["name"] == name
                    ]
                    continue
                if current is not None:
                    yield current, levels
                current, levels = row, []
            if current is not None:
                yield current, levels
