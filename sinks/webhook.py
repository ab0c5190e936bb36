"""Generic JSON webhook sink: batched POST of facts, signed per the Standard Webhooks spec.

Request: ``POST <url>`` with ``{"facts": [fact.to_json(), ...]}`` and the headers ``webhook-id`` (unique per
request), ``webhook-timestamp`` (Unix seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<raw body>">`` (see ``sign``). Answer 2xx to accept all; optionally ``{"results":
[{"status": "ok"|"error"|"retry", "message": ...}, ...]}`` aligned with the facts; 429/5xx (with Retry-After)
to retry the batch; other 4xx to refuse it (a multi-fact batch is then retried fact by fact so one bad fact
does not sink the others).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import httpx

from cdc.facts import Fact, price_fact, stock_fact
from sinks.base import (
    Outcome,
    Permanent,
    PushResult,
    Results,
    RetryLater,
    Sink,
    bounded_request,
    describe_http_error,
    describe_transport_error,
    http_client,
    is_retryable_status,
    moved,
    retry_after_seconds,
    singles,
)
from sinks.config import WebhookSinkConfig

log = logging.getLogger("erpsync.sinks.webhook")

# Standard Webhooks (https://www.standardwebhooks.com, spec "standard-webhooks.md" of
# github.com/standard-webhooks/standard-webhooks): the id and the timestamp are signed with the body, so a
# receiver refuses a push older than its tolerance and an id it has already seen (a replay). One difference:
# the HMAC key is the secret's UTF-8 bytes (the spec's libraries take it as "whsec_" + base64(secret)).
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
TOLERANCE_SECONDS = 300  # what a receiver should allow between webhook-timestamp and its clock (both ways)


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 of HMAC-SHA256(secret, "<id>.<timestamp>.<body>")."""
    mac = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: bytes, body: bytes, now: float | None = None) -> dict[str, str]:
    """The three headers of one request: a fresh id (a retry is a new request: new id, new timestamp)."""
    msg_id = f"msg_{uuid.uuid4().hex}"
    ts = int(time.time() if now is None else now)
    return {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(secret, msg_id, ts, body)}


class WebhookSink(Sink):
    kind = "webhook"

    def __init__(self, config: WebhookSinkConfig) -> None:
        self.max_batch = config.batch_size
        super().__init__(config)
        self.cfg = config
        self._secret = config.secret.get_secret_value().encode() if config.secret else None
        if self._secret is None and not config.unsigned:
            log.warning("sink %s: no secret: pushes go unsigned (set secret, or unsigned: true)", config.name)
        self.client = http_client(config, {"Content-Type": "application/json"})

    # push: hooks of Sink.push ---------------------------------------------------------------------------
    def screen(self, facts: list[Fact], results: Results) -> list[Fact]:
        """Every fact goes to the receiver as given: it decides what it takes (no ``check`` here)."""
        return list(facts)

    def write(self, group: None, facts: list[Fact], results: Results, started: float) -> None:
        try:
            self._post(facts, results)
        except (RetryLater, Permanent) as e:
            # a refused batch is retried fact by fact: find the bad one(s) instead of refusing them all
            self.settle(e, facts, results, split=singles,
                        resend=lambda part: self.write(group, part, results, started))

    def _post(self, facts: list[Fact], results: Results) -> None:
        body = json.dumps({"facts": [f.to_json() for f in facts]}, separators=(",", ":")).encode()
        headers = signed_headers(self._secret, body) if self._secret else {}
        try:
            resp = bounded_request(self.client, "POST", self.cfg.url, who="webhook receiver",
                                   deadline=self.cfg.timeout_seconds, content=body, headers=headers)
        except httpx.TimeoutException:
            raise RetryLater("timeout") from None
        except httpx.TransportError as e:
            raise RetryLater(describe_transport_error(e)) from None
        if 200 <= resp.status_code < 300:
            for f, r in zip(facts, self._per_item(facts, resp), strict=True):
                results[f.key] = r
            return
        if 300 <= resp.status_code < 400:
            raise moved(resp, "webhook receiver")
        if is_retryable_status(resp.status_code):
            raise RetryLater(describe_http_error(resp), retry_after_seconds(resp), resp.status_code == 429)
        raise Permanent(describe_http_error(resp), status=resp.status_code)

    def _per_item(self, facts: list[Fact], resp: httpx.Response) -> list[PushResult]:
        try:
            data = resp.json() if resp.content else None
        except ValueError:
            # A plain "OK" is an acceptance; a JSON body we cannot parse was cut short (a proxy, a crash):
            # we cannot tell what was applied, so send again (a set of the newest value is idempotent).
            if "json" in resp.headers.get("content-type", ""):
                return self.all(facts, Outcome.RETRY, f"HTTP {resp.status_code} with a truncated JSON body")
            data = None
        if isinstance(data, dict) and data.get("errors") and "results" not in data:
            # 200 with errors inside (GraphQL style): a failure, or alerts never fire
            return self.all(facts, Outcome.RETRY,
                            f"HTTP {resp.status_code} with errors: {str(data['errors'])[:300]}")
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list) or len(results) != len(facts):
            return self.all(facts, Outcome.OK)
        out = []
        for f, r in zip(facts, results, strict=True):
            status = r.get("status") if isinstance(r, dict) else "ok"
            msg = str(r.get("message", ""))[:300] if isinstance(r, dict) else ""
            outcome = {"ok": Outcome.OK, "retry": Outcome.RETRY}.get(str(status), Outcome.PERMANENT)
            out.append(PushResult(f.key, outcome, msg))
        return out

    def snapshot(self) -> Iterator[Fact]:
        """The receiver's state from ``list_url`` (the webhook emulator serves it at /_emulator/state)."""
        if not self.cfg.list_url:
            raise NotImplementedError("webhook sink cannot list the receiver: set list_url")
        resp = self.client.get(self.cfg.list_url, timeout=self.cfg.list_timeout_seconds)
        if resp.status_code != 200:
            raise RuntimeError(f"list_url: {describe_http_error(resp)}")
        data = resp.json()
        for sku, levels in (data.get("stock") or {}).items():
            for location, qty in levels.items():
                yield stock_fact(sku, location, int(qty))
        for sku, lists in (data.get("prices") or {}).items():
            for plist, p in lists.items():
                if p.get("amount") is None:
                    continue
                cmp = p.get("compare_at")
                yield price_fact(sku, plist, Decimal(str(p["amount"])), p.get("currency") or "",
                                 Decimal(str(cmp)) if cmp is not None else None)

    def close(self) -> None:
        self.client.close()
