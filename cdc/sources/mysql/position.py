"""MySQL / MariaDB binlog positions: parsing, ordering, GTID state algebra and binlog lag.

Position text: ``<binlog file>:<offset>`` of the end of a committed transaction, optionally followed by
``;gtid=<gtid state>`` (MariaDB ``domain-server-seq`` list or a MySQL GTID set). Positions order by
file/offset; resume uses the GTID when ``use_gtid`` and one is present (that survives a failover), else
file/offset.

No database access here: importable by status/reconcile code without a connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cdc.changes import SourceMisconfigured

_POS_RE = re.compile(r"^(?P<file>[^:;]+):(?P<off>\d+)(?:;gtid=(?P<gtid>.*))?$")


@dataclass(slots=True)
class BinlogPosition:
    file: str
    offset: int
    gtid: str = ""  # MariaDB "d-s-n,d-s-n" state or MySQL GTID set; "" when GTIDs are off

    def __str__(self) -> str:
        return f"{self.file}:{self.offset}" + (f";gtid={self.gtid}" if self.gtid else "")

    @classmethod
    def parse(cls, text: str) -> BinlogPosition:
        m = _POS_RE.match(text.strip())
        if not m:
            raise SourceMisconfigured(f"not a MySQL binlog position: {text!r} (expected "
                                      "'binlog.000001:1234[;gtid=...]')")
        return cls(m["file"], int(m["off"]), m["gtid"] or "")

    def order_key(self) -> tuple[str, int, int]:
        base, _, num = self.file.rpartition(".")
        return (base, int(num) if num.isdigit() else 0, self.offset)


def compare_positions(a: str, b: str) -> int:
    """-1, 0, 1 like cmp() for two position texts (by file and offset; the GTID part is not compared).
    Raises SourceMisconfigured for a text that is not a binlog position."""
    ka, kb = BinlogPosition.parse(a).order_key(), BinlogPosition.parse(b).order_key()
    return (ka > kb) - (ka < kb)


def binlog_lag_bytes(logs: list[tuple[str, int]], pos: BinlogPosition) -> tuple[int, int] | None:
    """``(lag_bytes, retained_bytes)`` of ``pos`` against ``SHOW BINARY LOGS`` (``(file, size)`` rows, in
    the server's order): bytes written after ``pos``, and bytes the server keeps from ``pos``'s file on
    (what it holds only because a reader at ``pos`` may still need it). None when ``pos``'s file is no
    longer on the server (purged, or another server's file)."""
    files = [f for f, _ in logs]
    if pos.file not in files:
        return None
    i = files.index(pos.file)
    lag = max(0, logs[i][1] - pos.offset) + sum(s for _, s in logs[i + 1:])
    retained = sum(s for _, s in logs[i:])
    return lag, retained


# --------------------------------------------------------------------------- GTID state algebra


def maria_gtid_state(text: str) -> dict[int, tuple[int, int]]:
    """MariaDB GTID state text ``d-s-n,d-s-n`` → {domain: (server_id, seq_no)}."""
    state: dict[int, tuple[int, int]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        d, s, n = (int(x) for x in part.split("-"))
        state[d] = (s, n)
    return state


def maria_gtid_text(state: dict[int, tuple[int, int]]) -> str:
    """Inverse of ``maria_gtid_state`` (domains sorted)."""
    return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(state.items()))


def mysql_gtid_add(gset: str, uuid: str, gno: int) -> str:
    """Add one GTID to a MySQL GTID set text (intervals merged), e.g. 'uuid:1-5' + 6 → 'uuid:1-6'."""
    parts: dict[str, list[list[int]]] = {}
    for item in filter(None, (x.strip() for x in gset.split(","))):
        sid, *ivs = item.split(":")
        parts[sid.lower()] = [[int(a), int(b or a)] for a, _, b in (iv.partition("-") for iv in ivs)]
    ivs = parts.setdefault(uuid, [])
    if ivs and ivs[-1][0] <= gno <= ivs[-1][1]:
        return gset
    if ivs and ivs[-1][1] + 1 == gno:
        ivs[-1][1] = gno
    else:
        ivs.append([gno, gno])
        ivs.sort()
    return ",".join(sid + "".join(f":{a}" if a == b else f":{a}-{b}" for a, b in iv)
                    for sid, iv in parts.items())
