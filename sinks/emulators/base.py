"""Shared emulator machinery: a threaded HTTP server, fault injection and the control endpoints.

Control endpoints (all platforms): ``GET /_emulator/state`` (what the shop holds), ``POST
/_emulator/faults`` (JSON body of Faults fields), ``POST /_emulator/reset``, ``GET /_emulator/stats``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field


class RateLimit:
    """Token bucket (burst = one second's worth) answering how long to wait when empty."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.tokens = max(1.0, rate or 1.0)
        self.at = time.monotonic()

    def take(self) -> float | None:
        if not self.rate:
            return None
        now = time.monotonic()
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.rate


class Faults(BaseModel):
    """Fault injection rates (0..1 per request) and modes. Applied before the platform sees the request."""

    model_config = ConfigDict(extra="forbid")
    rate_429: float = Field(0.0, ge=0, le=1)
    rate_500: float = Field(0.0, ge=0, le=1)
    rate_timeout: float = Field(0.0, ge=0, le=1, description="hold the request for timeout_seconds, then 504")
    rate_drop: float = Field(0.0, ge=0, le=1, description="close the connection without answering")
    rate_html: float = Field(0.0, ge=0, le=1, description="answer a 502 HTML page from a 'proxy'")
    slow_ms: int = Field(0, ge=0, description="added latency on every request")
    timeout_seconds: float = 15.0
    retry_after: float = 1.0
    down: bool = Field(False, description="every request answers 503 (shop outage)")
    seed: int | None = None
    # Hostile answers (fault injection, not platform behaviour): every API request gets one.
    hostile: Literal["", "gzip_bomb", "huge_body", "drip", "redirect_301", "redirect_302", "text_200",
                     "json_list"] = Field("", description=(
        "gzip_bomb: a small gzip body inflating to hostile_bytes; huge_body: hostile_bytes of body, "
        "streamed; drip: the whole answer one byte every drip_seconds; redirect_301/302: to /moved/...; "
        "text_200: a text/plain 'OK'; json_list: a JSON list of strings where objects belong"))
    hostile_bytes: int = Field(256 * 1024 * 1024, ge=1)
    drip_seconds: float = Field(0.2, gt=0)
    echo_credentials: int = Field(0, ge=0, le=599, description="answer this status (0: off) with the "
                                  "request's credentials echoed: plain, base64, JSON-escaped, quoted")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.time)

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def q(self, name: str, default: str | None = None) -> str | None:
        v = self.query.get(name)
        return v[0] if v else default


@dataclass
class Response:
    status: int = 200
    body: Any = None  # dict/list → JSON; str/bytes → as is
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    chunks: Iterator[bytes] | None = None  # a streamed body (Content-Length from headers) instead of body
    drip: float = 0.0  # > 0: send the whole answer one byte at a time, this many seconds apart

    def encode(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body, default=str).encode()


class DropConnection(Exception):
    pass


class Emulator:
    """Base class: subclasses implement ``handle(req) -> Response`` and ``state()``."""

    platform = "base"

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self._rng = random.Random(self.faults.seed)
        self.lock = threading.RLock()
        self.stats: dict[str, int] = {"requests": 0, "injected": 0, "throttled": 0, "rejected": 0}
        self.server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # to implement ---------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {}

    def reset(self) -> None:
        return None

    # fault injection ------------------------------------------------------------------------------
    def set_faults(self, **changes: Any) -> None:
        self.faults = self.faults.model_copy(update=changes)
        if "seed" in changes:
            self._rng = random.Random(changes["seed"])

    def _injected(self, req: Request) -> Response | None:
        f = self.faults
        if f.slow_ms:
            time.sleep(f.slow_ms / 1000)
        if f.hostile:
            self.stats["injected"] += 1
            return hostile_answer(f, req.path)
        if f.down:
            return Response(503, {"error": "service unavailable"}, {"Retry-After": str(f.retry_after)})
        r = self._rng.random()
        for rate, kind in (
            (f.rate_429, "429"),
            (f.rate_500, "500"),
            (f.rate_timeout, "timeout"),
            (f.rate_drop, "drop"),
            (f.rate_html, "html"),
        ):
            if r < rate:
                self.stats["injected"] += 1
                if kind == "429":
                    return Response(429, {"errors": "Too Many Requests"}, {"Retry-After": str(f.retry_after)})
                if kind == "500":
                    return Response(500, {"errors": "Internal Server Error"})
                if kind == "timeout":
                    time.sleep(f.timeout_seconds)
                    return Response(504, {"errors": "Gateway Timeout"})
                if kind == "drop":
                    raise DropConnection
                return Response(502, "<html><body><h1>502 Bad Gateway</h1></body></html>", {}, "text/html")
            r -= rate
        return None

    def dispatch(self, req: Request) -> Response:
        if req.path.startswith("/_emulator/"):
            return self._control(req)
        with self.lock:
            self.stats["requests"] += 1
        if self.faults.echo_credentials:
            return _echo_credentials(req, self.faults.echo_credentials)
        injected = self._injected(req)
        if injected is not None:
            return injected
        try:
            return self.handle(req)
        except json.JSONDecodeError as e:
            self.stats["rejected"] += 1
            return Response(400, {"error": f"malformed JSON: {e}"})

    def _control(self, req: Request) -> Response:
        what = req.path.removeprefix("/_emulator/")
        if what == "state":
            with self.lock:
                return Response(200, self.state())
        if what == "stats":
            return Response(200, self.stats)
        if what == "faults" and req.method == "POST":
            self.set_faults(**(req.json() or {}))
            return Response(200, self.faults.model_dump())
        if what == "reset" and req.method == "POST":
            with self.lock:
                self.reset()
            return Response(200, {"ok": True})
        return Response(404, {"error": "unknown control endpoint"})

    # serving --------------------------------------------------------------------------------------
    def start(self, port: int = 0, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None) -> str:
        """Serve in a background thread; returns the base URL. With ``ssl_context`` it serves HTTPS (the
        TLS tests: a self-signed shop must be refused unless its CA is configured)."""
        self.server = _Server((host, port), _handler_for(self))
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
            self.server.tls = True
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"emu-{self.platform}",
                                        daemon=True)
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"{'https' if self.server.tls else 'http'}://{host}:{port}"

    def serve_forever(self, port: int, host: str = "127.0.0.1") -> None:
        self.server = _Server((host, port), _handler_for(self))
        self.server.serve_forever()

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _echo_credentials(req: Request, status: int) -> Response:
    """A shop that echoes what authenticated the request: the Authorization header as sent (base64 of
    user:password for Basic), decoded, JSON-escaped and quoted; token headers and query keys likewise."""
    import base64

    creds = [v for k, v in req.headers.items() if k in ("authorization", "x-shopify-access-token")]
    creds += [v[0] for k, v in req.query.items() if k in ("consumer_key", "consumer_secret", "ws_key")]
    parts: list[str] = []
    for c in creds:
        scheme, _, token = c.partition(" ")
        plain = base64.b64decode(token).decode(errors="replace") if scheme.lower() == "basic" else c
        parts.append(f"sent {c} = {plain} json {json.dumps(plain)} quoted {plain!r}")
    return Response(status, "denied: " + "; ".join(parts), content_type="text/plain")


def hostile_answer(f: Faults, path: str) -> Response:
    """The answer of ``Faults.hostile``."""
    n = f.hostile_bytes
    if f.hostile == "gzip_bomb":
        return Response(200, gzip_bomb(n), {"Content-Encoding": "gzip"})
    if f.hostile == "huge_body":
        return Response(200, None, {"Content-Length": str(n)}, chunks=_spaces(n))
    if f.hostile == "drip":
        return Response(200, {"update": [], "data": {}, "pad": " " * 4096}, drip=f.drip_seconds)
    if f.hostile in ("redirect_301", "redirect_302"):
        return Response(int(f.hostile[-3:]), "", {"Location": f"/moved{path}?token=hidden"}, "text/plain")
    if f.hostile == "text_200":
        return Response(200, "OK", {}, "text/plain")
    return Response(200, ["not", "an", "object"])


@functools.cache
def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzipped (about 1/1000 of it)."""
    z = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(1 << 20)
    parts = [z.compress(block) for _ in range(size >> 20)]
    return b"".join([*parts, z.compress(bytes(size & ((1 << 20) - 1))), z.flush()])


def _spaces(n: int) -> Iterator[bytes]:
    block = b" " * 65536
    while n > 0:
        yield block[:n]
        n -= len(block)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    tls = False
    allow_reuse_address = True
    request_queue_size = 128


def _handler_for(emu: Emulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are two writes: without TCP_NODELAY each answer waits ~40 ms for a delayed ACK.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return None

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            req = Request(self.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                          {k.lower(): v for k, v in self.headers.items()}, body)
            try:
                resp = emu.dispatch(req)
            except DropConnection:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            data = resp.encode()
            if resp.drip:
                self._drip(resp, data)
                return
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            if resp.chunks is None:
                self.send_header("Content-Length", str(len(data)))
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.end_headers()
            with contextlib.suppress(OSError):  # a client refusing the rest hangs up
                for chunk in resp.chunks or [data]:
                    self.wfile.write(chunk)

        def _drip(self, resp: Response, data: bytes) -> None:
            head = (f"HTTP/1.1 {resp.status} OK\r\nContent-Type: {resp.content_type}\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n").encode()
            self.close_connection = True
            raw = head + data
            with contextlib.suppress(OSError):
                for i in range(len(raw)):
                    self.wfile.write(raw[i : i + 1])
                    self.wfile.flush()
                    time.sleep(resp.drip)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    return Handler
