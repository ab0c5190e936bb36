"""A throwaway nats-server with JetStream (temp store dir, free port), restartable on the same port and
store so tests can stop the bus mid-run and check that nothing is lost."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time

from erpsync.testing import find_binary, free_port


class ThrowawayNats:
    """``with ThrowawayNats() as n: n.url``; ``n.restart()`` keeps the port and the JetStream store."""

    def __init__(self) -> None:
        binary = find_binary("nats-server", ["/usr/sbin", "/usr/local/bin", "/usr/bin"])
        if not binary:
            raise RuntimeError("nats-server not found: apt-get install -y nats-server")
        self.binary = binary
        self.port = 0
        self.dir = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> ThrowawayNats:
        if not self.dir:
            self.dir = tempfile.mkdtemp(prefix="erpsync-nats-")
            self.port = free_port()
        self.proc = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.dir],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.dir}/server.log", "ab"))  # noqa: SIM115
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited ({self.proc.returncode}): see {self.dir}/server.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start within 15 s")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self, *, kill: bool = False, down_seconds: float = 0.0) -> None:
        self.stop(kill=kill)
        time.sleep(down_seconds)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ThrowawayNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
