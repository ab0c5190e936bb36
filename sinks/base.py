"""The one small interface every shop sink implements, and the HTTP plumbing they share."""

from __future__ import annotations

import random
import ssl
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from time import monotonic, sleep, time

import httpx

from cdc.facts import Fact, FactKey
from sinks.config import SinkConfigBase


class Outcome(StrEnum):
    OK = "ok"
    RETRY = "retry"  # transient (429, 5xx, timeout, throttled): try again later
    PERMANENT = "permanent"  # the shop refused this fact (unknown SKU, validation): dead-letter it


@dataclass(slots=True)
class PushResult:
    key: FactKey
    outcome: Outcome
    message: str = ""
    retry_after: float | None = None  # seconds, from the platform's own signal when it gave one
    throttled: bool = False


class SinkError(RuntimeError):
    """Configuration or connectivity problem of a sink as a whole."""


class Sink(ABC):
    """Push fact values to one shop. ``push`` never raises for per-fact problems: it returns one
    PushResult per input fact (same order) so one bad SKU never blocks the others."""

    kind: str = "?"
    max_batch: int = 100

    def __init__(self, config: SinkConfigBase) -> None:
        self.config = config
        self.name = config.name
        if config.max_batch:
            self.max_batch = min(self.max_batch, config.max_batch)

    @abstractmethod
    def push(self, facts: list[Fact]) -> list[PushResult]: ...

    def snapshot(self) -> Iterator[Fact]:
        """The shop's current stock and prices as facts (for the reconciler)."""
        raise NotImplementedError(f"{self.kind} sink cannot list the shop yet")

    def close(self) -> None:
        return None

    def check(self, f: Fact) -> PushResult | None:
        """What this sink's configuration says about a fact before any request: not synced here (OK, so it
        is not retried), or refused (an unmapped location, price list or another currency); None: push it."""
        cfg = self.config
        if f.kind not in cfg.kinds:
            return PushResult(f.key, Outcome.OK, f"{f.kind} is not synced to this sink")
        if f.kind == "stock":
            if cfg.locations and f.location not in cfg.locations:
                return PushResult(f.key, Outcome.PERMANENT,
                                  f"location {f.location!r} is not mapped for this sink")
            return None
        if f.price_list not in cfg.price_lists:
            return PushResult(f.key, Outcome.PERMANENT,
                              f"price list {f.price_list!r} is not mapped for this sink")
        cur, shop_cur = f.value.get("currency"), getattr(cfg, "currency", None)
        if shop_cur and cur and cur != shop_cur:
            return PushResult(f.key, Outcome.PERMANENT, f"currency {cur} differs from the shop's {shop_cur}")
        return None

    # shared helpers -----------------------------------------------------------------------------
    def all(self, facts: list[Fact], outcome: Outcome, message: str = "", **kw: object) -> list[PushResult]:
        return [PushResult(f.key, outcome, message, **kw) for f in facts]  # type: ignore[arg-type]


def http_client(config: SinkConfigBase, headers: dict[str, str] | None = None, **kw: object) -> httpx.Client:
    """An httpx client with TLS verification on (optionally against ``ca_file``) and the sink's timeout."""
    verify: bool | ssl.SSLContext = config.verify_tls
    if config.ca_file:
        verify = ssl.create_default_context(cafile=config.ca_file)
    return httpx.Client(
        timeout=httpx.Timeout(config.timeout_seconds),
        verify=verify,
        headers={"User-Agent": "erpsync/0.1", **(headers or {})},
        **kw,  # type: ignore[arg-type]
    )


def retry_after_seconds(resp: httpx.Response) -> float | None:
    """Retry-After as seconds (delta-seconds or HTTP date), or None."""
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError):
        return None


def describe_transport_error(e: httpx.TransportError) -> str:
    """Why a request got no answer. A TLS verification failure says so and names the fix: it is a
    configuration problem, not a flaky network, even though it is retried like one."""
    err: BaseException | None = e
    while err is not None:
        if isinstance(err, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(err):
            why = getattr(err, "verify_message", None) or "certificate verify failed"
            return f"TLS certificate verification failed ({why}): set ca_file to the shop's CA bundle"
        err = err.__cause__ or err.__context__
    return f"connection error: {type(e).__name__}"


def is_retryable_status(status: int) -> bool:
    return status in (408, 425, 429) or status >= 500


def backoff_seconds(attempt: int, base: float = 0.5, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter (attempt 1 → up to base seconds)."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def describe_http_error(resp: httpx.Response, limit: int = 300) -> str:
    """Short, safe description of an error response (no headers: they may carry secrets)."""
    text = resp.text.strip().replace("\n", " ")
    if len(text) > limit:
        text = text[:limit] + "…"
    ctype = resp.headers.get("content-type", "")
    if "html" in ctype:
        text = "HTML error page (not an API response)"
    return f"HTTP {resp.status_code}: {text}" if text else f"HTTP {resp.status_code}"


class RetryLater(Exception):
    """A transient failure of one request (timeout, 429, 5xx, proxy HTML page, refused credentials)."""

    def __init__(self, message: str, retry_after: float | None = None, throttled: bool = False) -> None:
        super().__init__(message)
        self.retry_after, self.throttled = retry_after, throttled


class Pacer:
    """Client-side request spacing (``max_requests_per_second``), shared by the sink's threads."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = monotonic()
            at = max(now, self.next_at)
            self.next_at = at + self.interval
        if at > now:
            sleep(at - now)


def newest_per_key(facts: list[Fact]) -> dict[FactKey, Fact]:
    newest: dict[FactKey, Fact] = {}
    for f in facts:  # the caller coalesces; this is the defensive second line
        if f.key not in newest or f.version >= newest[f.key].version:
            newest[f.key] = f
    return newest


def send(client: httpx.Client, pacer: Pacer, stats: dict[str, int], platform: str, method: str, url: str,
         **kw: object) -> httpx.Response:
    """One paced REST request. Raises RetryLater for what only time fixes (timeouts, dropped
    connections, 429/5xx, a proxy's HTML page) and for refused credentials (an operator problem: the
    facts stay queued rather than dead-lettered); any other answer is the caller's to read."""
    pacer.wait()
    try:
        resp = client.request(method, url, **kw)  # type: ignore[arg-type]
    except httpx.TimeoutException as e:
        raise RetryLater(f"timeout talking to {platform} ({type(e).__name__})") from None
    except httpx.TransportError as e:
        raise RetryLater(f"connection problem talking to {platform} ({type(e).__name__})") from None
    stats["calls"] += 1
    if resp.status_code == 429:
        stats["throttled"] += 1
    if is_retryable_status(resp.status_code) or "html" in resp.headers.get("content-type", ""):
        raise RetryLater(describe_http_error(resp), retry_after_seconds(resp), resp.status_code == 429)
    if resp.status_code in (401, 403):
        raise RetryLater(f"{platform} refused the credentials ({describe_http_error(resp)})", 60.0)
    return resp
