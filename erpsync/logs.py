"""Logging: JSON lines when stderr is not a terminal, plain text when it is. Secrets never reach here:
config values are SecretStr and messages are written not to include them; the formatters below are a last
line of defence for values registered as secret (cdc.redact: in their encoded forms too). Text lines show
control characters of messages and fields escaped: a shop's error text or a SKU cannot forge a log line."""

from __future__ import annotations

import json
import logging
import sys
import time

from cdc.redact import neutralise, redact, register_secret

__all__ = ["JsonFormatter", "TextFormatter", "fields", "neutralise", "redact", "register_secret", "setup"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": redact(record.getMessage())}
        for k, v in getattr(record, "fields", {}).items():
            out[k] = redact(v) if isinstance(v, str) else v
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return redact(json.dumps(out, default=str))  # fields that are not plain strings, too


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={neutralise(redact(str(v)))}" for k, v in fields.items())
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{ts} {record.levelname:<7} {record.name}: {neutralise(redact(record.getMessage()))}"
        if extra:
            line += f" {extra}"
        if record.exc_info:
            # a traceback keeps its lines, each indented (a newline in an exception's message cannot
            # start a line that looks like a record) and with other control characters escaped
            exc = self.formatException(record.exc_info)
            line += "".join(f"\n  {neutralise(x)}" for x in redact(exc).splitlines())
        return redact(line)


def setup(level: str = "info", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fields(**kw: object) -> dict[str, dict[str, object]]:
    """``log.info("batch", extra=fields(sink=..., n=...))``"""
    return {"fields": kw}
