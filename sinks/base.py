"""The one small interface every shop sink implements, and the plumbing they share.

``Sink.push`` is a template: screen the facts (newest per key, ``check``), look up the shop's ids they
need (``lookup``/``resolve``), group them into the platform's requests (``groups``) and send each group
(``write``). A request that fails goes through ``settle``: what only time fixes (``RetryLater``: timeouts,
429/5xx, a proxy's HTML page) is RETRY with the shop's Retry-After; a refusal (``Permanent``) is PERMANENT,
after bisecting the request when the refusal names one input value, so only the culprit is dead-lettered.
``snapshot`` implementations read the shop through ``listing``, the one retry loop for listing pages.
``ShopSink`` adds the HTTP side of the shop platforms: paced requests and the classification of answers.

A shop's answer is read with ``bounded_request``: at most ``MAX_ANSWER_BYTES`` of DECODED body (a gzip
bomb is decompressed piece by piece and cut at the cap) within one total deadline per request (a shop
dripping its answer byte by byte never holds a push). Whatever goes wrong in a push (also an answer of an
unexpected shape) ends as RETRY for its facts, never as an exception: a broken shop is that sink's problem.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from time import monotonic, sleep, time
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from cdc.facts import Fact, FactKey
from sinks.config import SinkConfigBase

T = TypeVar("T")

MAX_ANSWER_BYTES = 16 * 1024 * 1024  # decoded body of one shop answer (a listing page is well below 1 MB)


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
    problem: str = ""  # a broken or hostile answer's kind (RetryLater.kind): counted by the delivery side


Results = dict[FactKey, PushResult]


class SinkError(RuntimeError):
    """Configuration or connectivity problem of a sink as a whole."""


class RetryLater(Exception):
    """A failure of one request the facts wait out in the outbox: transient (timeout, 429, 5xx, proxy HTML
    page) or an operator's problem (refused credentials, a redirect). ``kind`` names a broken or hostile
    answer (``too_large``, ``deadline``, ``redirect``, ``bad_answer``), "" for the ordinary ones."""

    def __init__(self, message: str, retry_after: float | None = None, throttled: bool = False,
                 kind: str = "") -> None:
        super().__init__(message)
        self.retry_after, self.throttled, self.kind = retry_after, throttled, kind


class Permanent(Exception):
    """The shop refused one request: sending it again unchanged gets the same answer.

    ``per_item``: the refusal is about some input value, so splitting a multi-fact request isolates the
    culprit (False: about the request as a whole, splitting would only repeat it). ``status`` and ``body``:
    the HTTP status and parsed error body, when the refusal came as an HTTP error."""

    def __init__(self, message: str, *, per_item: bool = True, status: int | None = None,
                 body: Any = None) -> None:
        super().__init__(message)
        self.per_item, self.status, self.body = per_item, status, body


def halves(items: list[T]) -> list[list[T]]:
    """How a refused request is bisected: two halves (an item alone cannot be split)."""
    if len(items) < 2:
        return [items]
    half = len(items) // 2
    return [items[:half], items[half:]]


def singles(items: list[T]) -> list[list[T]]:
    """Split a refused request into one request per item."""
    return [[x] for x in items]


def failure(key: FactKey, e: RetryLater | Permanent, prefix: str = "") -> PushResult:
    """A fact's result when the request carrying it failed: RETRY (with the shop's Retry-After and whether
    it throttled) or PERMANENT."""
    if isinstance(e, RetryLater):
        return PushResult(key, Outcome.RETRY, f"{prefix}{e}", e.retry_after, e.throttled, e.kind)
    return PushResult(key, Outcome.PERMANENT, f"{prefix}{e}")


def unexpected(platform: str, e: Exception) -> RetryLater:
    """An exception no classification foresaw (an answer of an unexpected shape: a JSON list where an
    object belongs, XML that does not parse): the facts wait for the shop to answer sensibly again."""
    return RetryLater(f"unexpected answer from {platform} ({type(e).__name__}: {str(e)[:200]})",
                      kind="bad_answer")


class Sink(ABC):
    """Push fact values to one shop. ``push`` never raises for per-fact problems: it returns one
    PushResult per input fact (same order) so one bad SKU never blocks the others.

    A platform implements ``write`` (send one group, record each fact's result) and, as it needs,
    ``check``, ``known``/``resolve`` (SKU → the shop's ids, cached), ``groups`` and ``snapshot``."""

    kind: str = "?"
    platform: str = "?"  # the name in messages ("Shopify")
    unknown_sku: str = "not in the shop"  # refusal of a SKU ``resolve`` did not find ("no Shopify variant")
    max_batch: int = 100

    def __init__(self, config: SinkConfigBase) -> None:
        self.config = config
        self.name = config.name
        if config.max_batch:
            self.max_batch = min(self.max_batch, config.max_batch)

    # the template ---------------------------------------------------------------------------------
    def push(self, facts: list[Fact]) -> list[PushResult]:
        """One result per input fact, same order (a key given twice gets one result for both)."""
        started = monotonic()  # ids cached before this are suspects when the shop says it lacks them
        results: Results = {}
        todo = self.screen(facts, results)
        if todo:
            try:
                self.lookup(todo)
            except (RetryLater, Permanent) as e:
                self.settle(e, todo, results, prefix="SKU lookup failed: ")
                todo = []
            except Exception as e:  # a broken answer must not stop the deliverer: the facts wait
                self.settle(unexpected(self.platform, e), todo, results, prefix="SKU lookup failed: ")
                todo = []
        ready = []
        for f in todo:
            if self.known(f.sku):
                ready.append(f)
            else:
                results[f.key] = PushResult(
                    f.key, Outcome.PERMANENT, f"unknown SKU {f.sku!r}: {self.unknown_sku}"
                )
        for group, part in self.groups(ready):
            live = []
            for f in part:
                if self.known(f.sku):
                    live.append(f)
                else:  # an earlier write of this push found the SKU's cached id stale and forgot it
                    msg = f"stale id cache for {f.sku!r}: the shop no longer knows it"
                    results[f.key] = PushResult(f.key, Outcome.RETRY, msg, 0.0)
            if live:
                try:
                    self.write(group, live, results, started)
                except Exception as e:  # the facts this write did not settle wait for a sane answer
                    self.settle(unexpected(self.platform, e), [f for f in live if f.key not in results],
                                results)
        return [results[f.key] for f in facts]

    def screen(self, facts: list[Fact], results: Results) -> list[Fact]:
        """The facts to send: the newest per key that ``check`` lets through (the others get its result)."""
        todo = []
        for f in newest_per_key(facts).values():
            problem = self.check(f)
            if problem is not None:
                results[f.key] = problem
            else:
                todo.append(f)
        return todo

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

    def known(self, sku: str) -> bool:
        """Whether the sink can address this SKU without a lookup (default: the shop is keyed by SKU)."""
        return True

    def resolve(self, skus: list[str]) -> None:
        """Look up and cache the shop's ids of these SKUs (those it has). Raises RetryLater / Permanent."""
        return None

    def lookup(self, facts: list[Fact]) -> None:
        """Whatever lookups these facts need before they can be written: by default, resolve the SKUs
        not ``known`` yet. A failure fails every fact of the push (RETRY or PERMANENT)."""
        missing = sorted({f.sku for f in facts if not self.known(f.sku)})
        if missing:
            self.resolve(missing)

    def groups(self, facts: list[Fact]) -> Iterable[tuple[Any, list[Fact]]]:
        """The facts (all addressable) split into the platform's requests: (group, facts) pairs handed to
        ``write`` in turn. Default: one group of all of them."""
        return [(None, facts)] if facts else []

    @abstractmethod
    def write(self, group: Any, facts: list[Fact], results: Results, started: float) -> None:
        """Send one group and record a result for each of its facts (for a failed request: ``settle``).
        ``started``: when the push began (see ``stale_or_refused``)."""

    # shared handling of failures ---------------------------------------------------------------------
    def settle(
        self,
        e: RetryLater | Permanent,
        facts: list[Fact],
        results: Results,
        *,
        resend: Callable[[list[Any]], None] | None = None,
        units: list[Any] | None = None,
        split: Callable[[list[Any]], list[list[Any]]] = halves,
        prefix: str = "",
    ) -> None:
        """Record the failure of the request that carried ``facts``. A refusal that names an input value
        (``Permanent.per_item``) is bisected when ``resend`` is given: ``split`` (halves by default) the
        request's ``units`` (the facts, unless given: SKUs, products...) and ``resend`` each part, so only
        the culprit ends PERMANENT. Otherwise every fact gets the failure (RETRY with the shop's
        Retry-After, or PERMANENT)."""
        if resend is not None and isinstance(e, Permanent) and e.per_item:
            parts = split(facts if units is None else units)
            if len(parts) > 1:
                for part in parts:
                    resend(part)
                return
        for f in facts:
            results[f.key] = failure(f.key, e, prefix)

    def stale_or_refused(
        self, f: Fact, cache: dict[str, Any], resolved_at: float, started: float, message: str
    ) -> PushResult:
        """The shop says it has no such id: if it came from ``cache`` (resolved before this push), forget
        it and retry at once (the SKU may have moved to a new product); if we resolved it during this
        push, the shop really refuses the fact. Read ``resolved_at`` once per request: the SKU's other
        facts in it are retried too, after the first one forgot the id."""
        if resolved_at < started:
            cache.pop(f.sku, None)
            return PushResult(f.key, Outcome.RETRY, f"stale id cache for {f.sku!r}: {message}", 0.0)
        return PushResult(f.key, Outcome.PERMANENT, message)

    # snapshot ----------------------------------------------------------------------------------------
    def snapshot(self) -> Iterator[Fact]:
        """The shop's current stock and prices as facts (for the reconciler)."""
        raise NotImplementedError(f"{self.kind} sink cannot list the shop yet")

    def listing(self, call: Callable[[], T], attempts: int = 5) -> T:
        """One read of a snapshot (a page, a bulk-export poll), tried up to ``attempts`` times while the
        shop fails transiently, waiting its Retry-After (else 0.5 s × attempt), at most 10 s. A refusal, or
        still failing at the last attempt, ends the snapshot: SinkError."""
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except RetryLater as e:
                if attempt == attempts:
                    raise SinkError(f"{self.platform} kept failing: {e}") from None
                sleep(min(e.retry_after or 0.5 * attempt, 10.0))
            except Permanent as e:
                raise SinkError(str(e)) from None
            except SinkError:
                raise
            except Exception as e:  # an answer of an unexpected shape ends the snapshot, named
                raise SinkError(str(unexpected(self.platform, e))) from None
        raise AssertionError("unreachable: the last attempt returns or raises")

    def close(self) -> None:
        return None

    # shared helpers -----------------------------------------------------------------------------
    def all(self, facts: list[Fact], outcome: Outcome, message: str = "", **kw: object) -> list[PushResult]:
        return [PushResult(f.key, outcome, message, **kw) for f in facts]  # type: ignore[arg-type]


class ShopSink(Sink):
    """A shop platform's admin API over one httpx client: paced requests (``max_requests_per_second``),
    request counters in ``stats``, and one classification of the answers (``call``)."""

    def __init__(
        self,
        config: SinkConfigBase,
        api: str,
        headers: dict[str, str] | None = None,
        rate: float | None = None,
        **client_kw: object,
    ) -> None:
        super().__init__(config)
        self.api = api  # base URL the request paths are appended to
        self.client = http_client(config, headers, **client_kw)
        self.pacer = Pacer(rate)
        self.stats: dict[str, float] = {"calls": 0, "throttled": 0}
        self.max_answer_bytes = MAX_ANSWER_BYTES

    def close(self) -> None:
        self.client.close()

    def call(self, method: str, path: str = "", **kw: object) -> httpx.Response:
        """One paced request to ``api + path``. Raises RetryLater for what only time fixes (timeouts,
        dropped connections, 429/5xx, a proxy's HTML page) and for refused credentials (an operator
        problem: the facts stay queued rather than dead-lettered), ``refusal(resp)`` for any other 4xx;
        returns any other answer for the caller to read."""
        platform = self.platform
        self.pacer.wait()
        try:
            resp = bounded_request(self.client, method, self.api + path, who=platform,
                                   deadline=self.config.timeout_seconds, max_bytes=self.max_answer_bytes,
                                   **kw)
        except httpx.TimeoutException as e:
            raise RetryLater(f"timeout talking to {platform} ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise RetryLater(f"connection problem talking to {platform} ({type(e).__name__})") from None
        self.stats["calls"] += 1
        if resp.status_code == 429:
            self.stats["throttled"] += 1
        if is_retryable_status(resp.status_code) or "html" in resp.headers.get("content-type", ""):
            raise RetryLater(describe_http_error(resp), retry_after_seconds(resp), resp.status_code == 429)
        if resp.status_code in (401, 403):
            raise RetryLater(f"{platform} refused the credentials ({describe_http_error(resp)})", 60.0)
        if resp.status_code >= 400:
            raise self.refusal(resp)
        if resp.status_code >= 300:
            raise moved(resp, platform)
        return resp

    def refusal(self, resp: httpx.Response) -> Permanent:
        """The shop's 4xx answer as a refusal, in the platform's words."""
        return Permanent(describe_http_error(resp), status=resp.status_code)


def json_answer(resp: httpx.Response) -> Any:
    """The answer's JSON body. A success whose body is not JSON (a text/plain "OK" from something in front
    of the shop) tells nothing of what was applied: the facts are sent again later (a set of the newest
    value is idempotent), never dead-lettered for the shop's fault."""
    try:
        return resp.json()
    except ValueError as e:
        ctype = resp.headers.get("content-type", "") or "no content type"
        raise RetryLater(f"HTTP {resp.status_code} answer is not JSON ({ctype}: {e})",
                         kind="bad_answer") from None


def http_client(config: SinkConfigBase, headers: dict[str, str] | None = None, **kw: object) -> httpx.Client:
    """An httpx client with TLS verification on (optionally against ``ca_file``) and the sink's timeout."""
    verify: bool | ssl.SSLContext = config.verify_tls
    if config.ca_file:
        verify = ssl.create_default_context(cafile=config.ca_file)
    return httpx.Client(
        timeout=httpx.Timeout(config.timeout_seconds),
        verify=verify,
        # only the encodings bounded_request decodes under its cap
        headers={"User-Agent": "erpsync/0.1", "Accept-Encoding": "gzip, deflate", **(headers or {})},
        **kw,  # type: ignore[arg-type]
    )


class Watchdog:
    """The total deadline of one request. httpx's timeout bounds each read, so a shop sending one byte per
    second never trips it; at the deadline this shuts the request's connection down (its socket, seen
    when connected, or on the answer of a reused connection), which ends any blocked read at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = monotonic() + seconds
        self.fired = False
        self.streams: list[Any] = []
        self.timer = threading.Timer(seconds, self.fire)
        self.timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: remember the connection's stream as soon as it exists."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self.watch(info.get("return_value"))

    def watch(self, stream: Any) -> None:
        if stream is not None:
            self.streams.append(stream)
            if self.fired:
                self.fire()

    def fire(self) -> None:
        self.fired = True
        for stream in self.streams:
            sock = stream.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def check(self, who: str) -> None:
        if self.fired or monotonic() > self.at:
            raise self.exceeded(who)

    def exceeded(self, who: str) -> RetryLater:
        return RetryLater(f"{who} did not answer within the {self.seconds:g} s deadline of one request "
                          "(a slow or dripping answer)", kind="deadline")


def bounded_request(client: httpx.Client, method: str, url: str, *, who: str, deadline: float,
                    max_bytes: int = MAX_ANSWER_BYTES, **kw: Any) -> httpx.Response:
    """One request whose answer is read within ``deadline`` seconds in total and whose DECODED body may
    hold at most ``max_bytes`` (read piece by piece, so neither a huge body nor a gzip bomb is ever held
    whole). Raises RetryLater (kind ``deadline``, ``too_large`` or ``bad_answer``) or httpx's errors."""
    dog = Watchdog(deadline)
    extensions = {**kw.pop("extensions", {}), "trace": dog.trace}
    dog.timer.start()
    try:
        with client.stream(method, url, extensions=extensions, **kw) as resp:
            dog.watch(resp.extensions.get("network_stream"))  # a reused connection is watched from here
            body = read_capped(resp, max_bytes, dog, who)
    except httpx.TransportError:
        if dog.fired:
            raise dog.exceeded(who) from None
        raise
    finally:
        dog.timer.cancel()
    dog.check(who)
    headers = [(k, v) for k, v in resp.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(resp.status_code, headers=headers, content=body, request=resp.request)


def read_capped(resp: httpx.Response, max_bytes: int, dog: Watchdog, who: str) -> bytes:
    """The answer's body, decoded (identity, gzip, deflate) no further than ``max_bytes`` + 1."""
    codings = [c.strip().lower() for c in resp.headers.get("content-encoding", "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
        raise RetryLater(f"{who} answered in an encoding not asked for ({', '.join(codings)})",
                         kind="bad_answer")
    inflate = zlib.decompressobj(zlib.MAX_WBITS | 32) if codings else None  # | 32: gzip or zlib header
    parts: list[bytes] = []
    total = 0
    for raw in resp.iter_raw():
        data = raw
        while data:
            if inflate is None:
                piece, data = data, b""
            else:
                try:
                    piece = inflate.decompress(data, max_bytes - total + 1)  # never 0 (= unlimited)
                except zlib.error as e:
                    raise RetryLater(f"{who} sent a body that does not decompress ({e})",
                                     kind="bad_answer") from None
                data = b"" if inflate.eof else inflate.unconsumed_tail
            total += len(piece)
            if total > max_bytes:
                raise RetryLater(f"{who} answered more than {max_bytes} bytes (decoded): answer refused",
                                 kind="too_large")
            parts.append(piece)
        dog.check(who)
    return b"".join(parts)


def moved(resp: httpx.Response, who: str) -> RetryLater:
    """A redirect: the configured URL is wrong (the shop moved, or something in front sends us to a login
    page). A configuration problem, not the facts': they wait in the outbox until the URL is fixed."""
    loc = resp.headers.get("location", "")
    parts = urlsplit(loc)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    where = urlunsplit((parts.scheme, host, parts.path, "", "")) if parts.netloc else parts.path
    why = "moved permanently" if resp.status_code in (301, 308) else "redirected"
    return RetryLater(f"{who} answered HTTP {resp.status_code} ({why}) to {where or '?'}: the sink's url "
                      "is out of date, fix it in the config (the facts wait in the outbox)", 60.0,
                      kind="redirect")


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
