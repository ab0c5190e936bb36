"""Secrets redaction and untrusted-text neutralising, for every package (the outbox redacts before it
writes a shop's error text; the application's logs and outputs redact before they print).

A secret is registered once (the application does it at config load) and from then on ``redact`` masks it
in any text, in the forms a shop or a serializer may turn it into: as is, JSON-escaped (once and twice),
Python-quoted, URL-encoded, base64 — and base64 of the ``user:password`` pairs HTTP Basic auth sends (any
two registered secrets, and a secret with an empty password: WooCommerce sends key:secret, PrestaShop
key:), because a shop that echoes its request headers echoes those.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from urllib.parse import quote, quote_plus

MASK = "***"
_MIN_LEN = 4

_lock = threading.Lock()
_secrets: list[str] = []  # registration order: the Basic-auth pairs are (earlier, later) and reverse
_forms: set[str] = set()
_pattern: re.Pattern[str] | None = None


def _b64(text: str) -> list[str]:
    """base64 of ``text`` (UTF-8 and Latin-1 bytes, standard and URL-safe alphabet), without the padding:
    the unpadded form is a prefix of the padded one, so masking it masks both."""
    out: list[str] = []
    for raw in {text.encode(), text.encode("latin-1", "ignore")}:
        for enc in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
            out.append(enc.decode().rstrip("="))
    return out


def _escaped(value: str) -> set[str]:
    """``value`` as it reads once serialized: JSON-escaped (ASCII or not, once and twice), quoted with
    repr(), URL-encoded."""
    forms = {value}
    for ascii_only in (True, False):
        once = json.dumps(value, ensure_ascii=ascii_only)[1:-1]
        forms.add(once)
        forms.add(json.dumps(once, ensure_ascii=ascii_only)[1:-1])
    py = value.encode("unicode_escape").decode()  # repr()'s escapes, in either quote style
    forms |= {py, py.replace("'", "\\'"), py.replace('"', '\\"')}
    forms.add(quote(value, safe=""))
    forms.add(quote_plus(value, safe=""))
    return forms


def variants(value: str) -> set[str]:
    """Every form of one secret ``redact`` masks (without the pairs it makes with other secrets)."""
    forms = _escaped(value)
    for encoded in [*_b64(value), *_b64(value + ":")]:
        forms |= _escaped(encoded)
    return {f for f in forms if len(f) >= _MIN_LEN}


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its encoded forms) in every later ``redact``. Values shorter than 4 characters
    are ignored (they would mask ordinary words)."""
    global _pattern
    if not value or len(value) < _MIN_LEN:
        return
    with _lock:
        if value in _secrets:
            return
        new = variants(value)
        for other in _secrets:
            for pair in (f"{other}:{value}", f"{value}:{other}"):
                for encoded in _b64(pair):
                    new |= _escaped(encoded)
        _secrets.append(value)
        _forms.update(f for f in new if len(f) >= _MIN_LEN)
        # longest first: a form that contains another is masked whole
        _pattern = re.compile("|".join(re.escape(f) for f in sorted(_forms, key=len, reverse=True)))


def redact(text: str) -> str:
    """``text`` with every registered secret, in any of its forms, replaced by ``***``."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def redact_values(obj: object) -> object:
    """``redact`` applied to every string inside dicts, lists and tuples (a copy; other values as is)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_values(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_values(v) for v in obj)
    return obj


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0 controls, DEL, C1 controls, and the Unicode line / paragraph separators and bidi overrides that
# make a terminal or a log viewer show something other than what is there
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape_one(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def neutralise(text: str) -> str:
    """Untrusted text (a shop's error, a SKU) made safe for one line of a terminal or a text log: newlines,
    carriage returns, escape sequences and other control characters are shown as backslash escapes, so
    they can neither start a forged line nor drive the terminal."""
    return _CONTROL.sub(_escape_one, text)
