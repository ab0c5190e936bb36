"""The ops HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz`` (readiness).

Bound to ``ops.listen`` (loopback by default: metrics name tables, SKUs counts and sinks, and nothing here
is authenticated: a shop's error text is not shown, ``erpsync status`` has it). Readiness reads the outbox
file with its own read-only SQLite connection, so it reflects what the delivery threads actually committed,
not what they meant to do.

Idle or slow clients cannot exhaust it: each connection has a socket timeout, and at most
``max_connections`` are served at once; one more is answered 503 at once and closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cdc.outbox.views import open_readonly, outbox_status
from erpsync import metrics
from erpsync.config import OpsConfig
from erpsync.status import sink_problem

log = logging.getLogger("erpsync.ops")


class OpsListenError(OSError):
    """The ops endpoint could not bind (port in use, address not local)."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; a bare port means loopback."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", listen
    host = host.strip("[]") or "127.0.0.1"
    try:
        return host, int(port)
    except ValueError:
        raise ValueError(f"ops.listen: expected host:port, got {listen!r}") from None


class OpsServer:
    """``OpsServer(cfg.ops, outbox_path, sink_names).start()``; ``.port`` is the bound port (also with
    listen port 0)."""

    def __init__(self, ops: OpsConfig, outbox_path: str | Path, sinks: list[str], *,
                 connection_timeout: float = 10.0, max_connections: int = 16) -> None:
        self.ops = ops
        self.connection_timeout = connection_timeout
        self.max_connections = max_connections
        self.outbox_path = Path(outbox_path)
        self.sinks = list(sinks)
        self.host, self.port = parse_listen(ops.listen)
        self.started = time.time()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> OpsServer:
        server_cls = type("_OpsHTTPServer", (_BoundedHTTPServer,), {"max_connections": self.max_connections})
        if ":" in self.host:
            server_cls.address_family = socket.AF_INET6
        try:
            self._server = server_cls((self.host, self.port), _handler(self))
        except OSError as e:
            msg = f"ops.listen: cannot listen on {self.ops.listen}: {e.strerror or e}"
            raise OpsListenError(msg) from None
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)
        self._thread.start()
        log.info("ops endpoint listening", extra={"fields": {"url": self.url}})
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- content ---------------------------------------------------------------------------------------
    def _outbox(self) -> dict[str, Any] | None:
        if not self.outbox_path.exists():
            return None
        conn = open_readonly(self.outbox_path)
        try:
            return outbox_status(conn, self.sinks)
        finally:
            conn.close()

    def refresh_sink_gauges(self, ob: dict[str, Any] | None) -> None:
        for name, s in (ob or {}).get("sinks", {}).items():
            metrics.sink_last_success_timestamp.labels(name).set(s.get("last_ok_at") or 0)
            metrics.sink_last_error_timestamp.labels(name).set(s.get("last_error_at") or 0)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        reasons: list[str] = []
        reg = metrics.REGISTRY
        connected = (reg.get_sample_value("erpsync_source_connected") or 0) >= 1
        if not connected:
            reasons.append("source: not streaming (connecting, snapshotting or disconnected)")
        lag = reg.get_sample_value("erpsync_source_lag_seconds") or 0.0
        if lag > self.ops.max_lag_seconds:
            reasons.append(f"source: lag {lag:.1f}s exceeds ops.max_lag_seconds={self.ops.max_lag_seconds:g}")
        now = time.time()
        try:
            ob = self._outbox()
        except Exception as e:  # a locked/corrupt outbox is itself a reason not to be ready
            ob = None
            reasons.append(f"outbox: cannot read: {e}")
        self.refresh_sink_gauges(ob)
        for name, s in (ob or {}).get("sinks", {}).items():
            problem = sink_problem(s, now, self.ops.sink_down_seconds, since=self.started, with_error=False)
            if problem:
                reasons.append(f"sink {name}: {problem}")
        body = {"ready": not reasons, "reasons": reasons, "source_connected": connected,
                "lag_seconds": lag,
                "sinks": {n: {"pending": s["pending"], "dlq": s["dlq"]}
                          for n, s in (ob or {}).get("sinks", {}).items()}}
        return not reasons, body


_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 17\r\n"
         b"Retry-After: 1\r\nConnection: close\r\n\r\n{\"error\": \"busy\"}")


class _BoundedHTTPServer(ThreadingHTTPServer):
    """One thread per connection, at most ``max_connections`` of them."""

    daemon_threads = True
    max_connections = 16

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):  # a client that cannot even take 130 bytes: just close
                request.settimeout(1.0)
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: the slot is free again
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr for any handler error (a client hanging up mid-answer);
        # a debug line is enough, and stderr stays JSON when --log-format json.
        peer = client_address[0] if client_address else "?"
        log.debug("ops endpoint: connection from %s ended abnormally", peer)


def _handler(ops: OpsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "erpsync-ops"
        timeout = ops.connection_timeout  # socket timeout: an idle or half-sent request is closed

        def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: keep quiet
            pass

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj, default=str).encode(), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    try:
                        ops.refresh_sink_gauges(ops._outbox())
                    except Exception as e:  # metrics must still be served
                        log.debug("sink gauges not refreshed: %s", e)
                    self._send(200, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._json(200, {"status": "ok", "uptime_seconds": round(time.time() - ops.started, 1)})
                elif path == "/readyz":
                    ok, body = ops.readiness()
                    self._json(200 if ok else 503, body)
                else:
                    self._json(404, {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]})
            except (BrokenPipeError, ConnectionResetError):
                return  # the scraper hung up (its timeout): nothing to answer, nothing wrong here
            except Exception as e:
                log.exception("ops endpoint %s failed", path)
                self._json(500, {"error": type(e).__name__})

        do_HEAD = do_GET

    return Handler
