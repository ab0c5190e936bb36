"""Emulator of a webhook receiver: checks shape and signature, keeps the newest value per key, and
records what a test needs to prove delivery (every value received, regressions, latency).

With a secret it is the reference receiver of the signature scheme (Standard Webhooks,
https://www.standardwebhooks.com): the ``webhook-signature`` HMAC over
"<webhook-id>.<webhook-timestamp>.<body>", a timestamp within ``tolerance_seconds`` of its clock, and a
``webhook-id`` not seen before (a replay)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import deque
from decimal import Decimal, InvalidOperation
from typing import Any

from sinks.emulators.base import Emulator, Faults, Request, Response


class WebhookEmulator(Emulator):
    platform = "webhook"

    def __init__(self, faults: Faults | None = None, *, secret: str | None = None, max_batch: int = 10_000,
                 known_skus: set[str] | None = None, path: str = "/hook",
                 tolerance_seconds: float = 300) -> None:
        super().__init__(faults)
        self.secret = secret.encode() if secret else None
        self.tolerance_seconds = tolerance_seconds
        # webhook-ids received, oldest first, forgotten once their timestamp is refused anyway
        self.seen_ids: set[str] = set()
        self._seen_order: deque[tuple[int, str]] = deque()
        self.max_batch = max_batch
        self.known_skus = known_skus
        self.path = path
        self.reset()

    def reset(self) -> None:
        self.values: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.versions: dict[tuple[str, str, str], int] = {}
        self.regressions: list[tuple[str, int, int]] = []
        self.latencies: list[float] = []
        self.received = 0
        self.batches = 0

    @property
    def endpoint(self) -> str:
        return self.url + self.path

    def handle(self, req: Request) -> Response:
        if req.path != self.path or req.method != "POST":
            return Response(404, {"error": f"no route {req.method} {req.path}"})
        if self.secret is not None and (refused := self.verify(req, self.secret)) is not None:
            return refused
        body = req.json()
        facts = body.get("facts") if isinstance(body, dict) else None
        if not isinstance(facts, list) or not facts:
            return Response(422, {"error": "body must be {\"facts\": [...]} with at least one fact"})
        if len(facts) > self.max_batch:
            return Response(413, {"error": f"at most {self.max_batch} facts per request"})
        problems = [p for i, f in enumerate(facts) if (p := _check(i, f))]
        if problems:
            return Response(422, {"error": "invalid facts", "details": problems[:20]})
        results = []
        now = time.time()
        with self.lock:
            self.batches += 1
            for f in facts:
                if self.known_skus is not None and f["sku"] not in self.known_skus:
                    results.append({"status": "error", "message": f"unknown sku {f['sku']!r}"})
                    continue
                scope = f.get("location") if f["kind"] == "stock" else f.get("price_list")
                key = (f["kind"], f["sku"], scope)
                version = int(f.get("version", 0))
                if version < self.versions.get(key, 0):
                    self.regressions.append((f"{key}", self.versions[key], version))
                self.versions[key] = max(version, self.versions.get(key, 0))
                self.values[key] = f
                self.received += 1
                if f.get("erp_commit_ts"):
                    self.latencies.append(now - float(f["erp_commit_ts"]))
                results.append({"status": "ok"})
        return Response(200, {"results": results})

    def verify(self, req: Request, secret: bytes) -> Response | None:
        """None if the request is signed with ``secret``, recent and new; else the refusal (401, or 409 for a
        replayed webhook-id)."""
        msg_id = req.headers.get("webhook-id", "")
        ts = req.headers.get("webhook-timestamp", "")
        if not msg_id or not ts.isdigit():
            return Response(401, {"error": "missing webhook-id or webhook-timestamp"})
        mac = hmac.new(secret, f"{msg_id}.{ts}.".encode() + req.body, hashlib.sha256).digest()
        want = base64.b64encode(mac).decode()
        sigs = req.headers.get("webhook-signature", "").split()  # several during a key rotation
        given = [s.partition(",")[2] for s in sigs if s.startswith("v1,")]
        if not any(hmac.compare_digest(want, g) for g in given):
            return Response(401, {"error": "bad or missing webhook-signature"})
        now = time.time()
        if abs(now - int(ts)) > self.tolerance_seconds:
            return Response(401, {"error": f"webhook-timestamp more than {self.tolerance_seconds:g}s away"})
        with self.lock:
            while self._seen_order and now - self._seen_order[0][0] > self.tolerance_seconds:
                self.seen_ids.discard(self._seen_order.popleft()[1])
            if msg_id in self.seen_ids:
                return Response(409, {"error": "webhook-id already received (a replay)"})
            self.seen_ids.add(msg_id)
            self._seen_order.append((int(ts), msg_id))
        return None

    def stock(self) -> dict[tuple[str, str], int]:
        with self.lock:
            return {(k[1], k[2]): int(v["available"]) for k, v in self.values.items() if k[0] == "stock"}

    def state(self) -> dict[str, Any]:
        stock: dict[str, dict[str, int]] = {}
        prices: dict[str, dict[str, Any]] = {}
        for (kind, sku, scope), v in self.values.items():
            if kind == "stock":
                stock.setdefault(sku, {})[scope] = v["available"]
            else:
                fields = ("amount", "currency", "compare_at")
                prices.setdefault(sku, {})[scope] = {k: v.get(k) for k in fields}
        return {"stock": stock, "prices": prices, "received": self.received, "batches": self.batches,
                "regressions": len(self.regressions)}


def _check(i: int, f: Any) -> str | None:
    if not isinstance(f, dict):
        return f"facts[{i}]: not an object"
    if f.get("kind") not in ("stock", "price"):
        return f"facts[{i}].kind: must be stock or price"
    if not isinstance(f.get("sku"), str) or not f["sku"]:
        return f"facts[{i}].sku: must be a non-empty string"
    if f["kind"] == "stock":
        if not isinstance(f.get("location"), str):
            return f"facts[{i}].location: required for stock"
        if not isinstance(f.get("available"), int) or f["available"] < 0:
            return f"facts[{i}].available: must be an integer >= 0"
    else:
        if not isinstance(f.get("price_list"), str):
            return f"facts[{i}].price_list: required for price"
        try:
            if Decimal(str(f.get("amount"))) < 0:
                return f"facts[{i}].amount: must not be negative"
        except InvalidOperation:
            return f"facts[{i}].amount: must be a decimal string"
    if not isinstance(f.get("version", 0), int):
        return f"facts[{i}].version: must be an integer"
    return None
