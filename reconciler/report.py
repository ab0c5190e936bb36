"""Reports for merchandisers: one self-contained HTML file (inline SVG charts, a searchable table, no
external resources — the machine may be offline) and a CSV of every drifted item.

Every value in them comes from an ERP or a shop and is hostile until shown otherwise: in the HTML it is
escaped for where it lands (text, attribute, JSON inside <script>) and a Content-Security-Policy runs only
the report's own script; in the CSV a text cell a spreadsheet would take for a formula is neutralised."""

from __future__ import annotations

import base64
import hashlib
import html
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from reconciler.diff import DRIFT_KINDS

LABELS = {"stock_mismatch": "Stock differs", "price_mismatch": "Price differs",
          "missing_in_shop": "Missing in shop", "not_in_erp": "In shop, not in ERP",
          "not_mapped": "SKU not mapped"}
COLORS = {"stock_mismatch": "#d9534f", "price_mismatch": "#f0ad4e", "missing_in_shop": "#5bc0de",
          "not_in_erp": "#6f42c1", "not_mapped": "#777777"}


def _e(x: Any) -> str:
    """Text or a quoted attribute value: & < > " ' escaped."""
    return html.escape("" if x is None else str(x), quote=True)


def script_json(obj: Any) -> str:
    """JSON safe inside a <script> element: no < > & (so no </script>, <!--, <script> can end or bend the
    element), and no U+2028 / U+2029 (line terminators to older JavaScript), all as \\u escapes."""
    text = json.dumps(obj, default=str)
    for ch in "<>&\u2028\u2029":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return text


# CSV injection (formula injection), OWASP: https://owasp.org/www-community/attacks/CSV_Injection — a cell
# starting with one of these is a formula to Excel, LibreOffice or Google Sheets (which also honour the
# full-width forms). Such a text cell is prefixed with a single quote and quoted; numbers stay numbers.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")

_CSV_SELECT = """SELECT sink, drift, fact_kind AS kind, sku, scope AS location_or_price_list,
                        erp_value, shop_value, erp_currency, shop_currency,
                        round(severity, 2) AS severity, note
                 FROM drift ORDER BY severity DESC, sink, sku, scope"""


def csv_cell(v: object) -> str:
    """One CSV field: numbers as they are; text quoted when needed, and defused when it reads as a formula."""
    if v is None:
        return ""
    if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
        return str(v)
    s = str(v)
    if s.startswith(FORMULA_START):
        return '"\'' + s.replace('"', '""') + '"'
    if any(c in s for c in ',"\r\n'):
        return '"' + s.replace('"', '""') + '"'
    return s


def write_csv(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    cur = con.execute(_CSV_SELECT)
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write(",".join(d[0] for d in cur.description) + "\n")
        while batch := cur.fetchmany(10_000):
            f.writelines(",".join(map(csv_cell, row)) + "\n" for row in batch)


def chart_by_location(rows: list[tuple[str, str, int]], width: int = 760) -> str:
    """Horizontal stacked bars: one bar per location / price list, one segment per drift kind."""
    scopes: dict[str, dict[str, int]] = {}
    for scope, kind, n in rows:
        scopes.setdefault(scope or "(none)", {})[kind] = n
    if not scopes:
        return ('<svg id="chart-location" class="chart" width="760" height="60" role="img" '
                'aria-label="no drift"><text x="10" y="35">No drift found</text></svg>')
    order = sorted(scopes, key=lambda s: -sum(scopes[s].values()))[:25]
    peak = max(sum(scopes[s].values()) for s in order)
    left, bar_h, gap, top = 150, 22, 8, 30
    plot = width - left - 70
    height = top + len(order) * (bar_h + gap) + 10
    out = [f'<svg id="chart-location" class="chart" width="{width}" height="{height}" role="img" '
           f'aria-label="drift by kind and location" xmlns="http://www.w3.org/2000/svg">']
    x = left
    for kind in DRIFT_KINDS:  # legend
        out.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{COLORS[kind]}"/>'
                   f'<text x="{x + 16}" y="17" font-size="12">{_e(LABELS[kind])}</text>')
        x += 26 + int(7.2 * len(LABELS[kind]))
    for i, scope in enumerate(order):
        y = top + i * (bar_h + gap)
        out.append(f'<text x="{left - 8}" y="{y + 15}" font-size="13" text-anchor="end">{_e(scope)}</text>')
        x0 = float(left)
        for kind in DRIFT_KINDS:
            n = scopes[scope].get(kind, 0)
            if not n:
                continue
            w = max(1.0, plot * n / peak)
            out.append(f'<rect class="bar" data-kind="{kind}" data-location="{_e(scope)}" x="{x0:.1f}" '
                       f'y="{y}" width="{w:.1f}" height="{bar_h}" fill="{COLORS[kind]}">'
                       f'<title>{_e(scope)} — {_e(LABELS[kind])}: {n:,}</title></rect>')
            x0 += w
        out.append(f'<text x="{x0 + 6:.1f}" y="{y + 15}" font-size="12">{sum(scopes[scope].values()):,}'
                   '</text>')
    out.append("</svg>")
    return "".join(out)


def chart_trend(runs: list[dict[str, Any]], width: int = 760, height: int = 200) -> str:
    """Drift total per recent run: bars (so a single run still shows) with a line over them."""
    if not runs:
        return '<svg id="chart-trend" class="chart" width="760" height="40"></svg>'
    left, top, bottom = 50, 15, 30
    plot_w, plot_h = width - left - 20, height - top - bottom
    peak = max(1, *(int(r["total"] or 0) for r in runs))
    step = plot_w / len(runs)
    out = [f'<svg id="chart-trend" class="chart" width="{width}" height="{height}" role="img" '
           f'aria-label="drift over recent runs" xmlns="http://www.w3.org/2000/svg">',
           f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
           f'<text x="{left - 6}" y="{top + 10}" font-size="11" text-anchor="end">{peak:,}</text>',
           f'<text x="{left - 6}" y="{top + plot_h}" font-size="11" text-anchor="end">0</text>']
    points = []
    for i, r in enumerate(runs):
        total = int(r["total"] or 0)
        h = plot_h * total / peak
        x = left + i * step
        at = r["at"].strftime("%m-%d %H:%M") if hasattr(r["at"], "strftime") else str(r["at"])
        out.append(f'<rect class="run" x="{x + step * 0.15:.1f}" y="{top + plot_h - h:.1f}" '
                   f'width="{max(1.0, step * 0.7):.1f}" height="{h:.1f}" fill="#9ecae1">'
                   f'<title>run {_e(r["run_id"])} ({_e(at)}): {total:,}</title></rect>')
        points.append(f"{x + step / 2:.1f},{top + plot_h - h:.1f}")
        if len(runs) <= 12 or i % max(1, len(runs) // 8) == 0:
            out.append(f'<text x="{x + step / 2:.1f}" y="{height - 10}" font-size="10" '
                       f'text-anchor="middle">{_e(at)}</text>')
    out.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="#3182bd" stroke-width="2"/>')
    out.append("</svg>")
    return "".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px} .muted{color:#666;font-size:13px}
.cards{display:flex;gap:10px;flex-wrap:wrap;margin:14px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:22px} .warn{background:#fff3cd;border:1px solid #ffe69c;padding:8px;
border-radius:6px;margin:8px 0} table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #eee;padding:4px 8px;text-align:left}
th{background:#f6f6f6;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums} input#search{padding:6px;width:320px;margin:6px 0}
.tag{display:inline-block;padding:1px 6px;border-radius:3px;color:#fff;font-size:12px}
""" + "".join(f".card.k-{k}{{border-left:5px solid {c}}}\n" for k, c in COLORS.items())

_JS = """
(function(){
  var items = JSON.parse(document.getElementById('items-data').textContent);
  var known = JSON.parse(document.getElementById('labels-data').textContent);
  var labels = new Proxy(known, {get: function(t, k){ return t[k] || [String(k), '#777777']; }});
  var body = document.querySelector('#items tbody');
  var cols = ['sink','drift','sku','scope','erp_value','shop_value','severity','note'];
  items.forEach(function(it){
    var tr = document.createElement('tr');
    tr.className = 'item';
    cols.forEach(function(c){
      var td = document.createElement('td');
      if (c === 'drift') {
        var s = document.createElement('span'); s.className = 'tag';
        s.style.background = labels[it.drift][1]; s.textContent = labels[it.drift][0]; td.appendChild(s);
      } else {
        td.textContent = it[c] === null ? '' : it[c];
        if (c === 'erp_value' || c === 'shop_value' || c === 'severity') td.className = 'num';
      }
      tr.appendChild(td);
    });
    tr.setAttribute('data-text', (it.sink+' '+it.drift+' '+labels[it.drift][0]+' '+it.sku+' '+it.scope+' '+
                                  (it.note||'')).toLowerCase());
    body.appendChild(tr);
  });
  var shown = document.getElementById('shown');
  function filter(){
    var q = document.getElementById('search').value.toLowerCase().trim(), n = 0;
    body.querySelectorAll('tr').forEach(function(tr){
      var ok = !q || tr.getAttribute('data-text').indexOf(q) >= 0;
      tr.style.display = ok ? '' : 'none'; if (ok) n++;
    });
    shown.textContent = n;
  }
  document.getElementById('search').addEventListener('input', filter);
  filter();
  document.getElementById('items').setAttribute('data-ready', String(items.length));
})();
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Nothing runs or loads but the report's own <script> and <style> (by hash): markup that slipped through
# could neither execute nor fetch anything. Inline SVG and the CSV link need no source.
CSP = (f"default-src 'none'; script-src {_sha256(_JS)}; style-src {_sha256(_CSS)}; img-src data:; "
       "base-uri 'none'; form-action 'none'")


def render_html(con: duckdb.DuckDBPyConnection, *, summaries: list[dict[str, Any]],
                trend: list[dict[str, Any]], run_id: int, generated: datetime,
                max_items: int = 2000, csv_name: str | None = None) -> str:
    by_kind = dict.fromkeys(DRIFT_KINDS, 0)
    for k, n in con.execute("SELECT drift, count(*) FROM drift GROUP BY drift").fetchall():
        by_kind[k] = n
    total = sum(by_kind.values())
    by_loc = con.execute("SELECT scope, drift, count(*) FROM drift GROUP BY ALL").fetchall()
    cur = con.execute("SELECT sink, drift, sku, scope, erp_value, shop_value, "
                      "round(severity, 1) AS severity, note FROM drift "
                      "ORDER BY severity DESC, sink, sku, scope LIMIT $n", {"n": max_items})
    names = [d[0] for d in cur.description]
    rows = [{k: (str(v) if v is not None and k in ("erp_value", "shop_value") else v)
             for k, v in zip(names, r, strict=True)} for r in cur.fetchall()]
    for r in rows:  # 12.0000 → 12 for stock, keep cents for prices
        for k in ("erp_value", "shop_value"):
            if r[k] is not None and "." in r[k]:
                r[k] = r[k].rstrip("0").rstrip(".") if r["drift"] != "price_mismatch" else r[k][:-2]
    data = script_json(rows)
    labels = script_json({k: [LABELS[k], COLORS[k]] for k in DRIFT_KINDS})

    warns = []
    sink_rows = []
    for s in summaries:
        if s.get("error"):
            warns.append(f"Sink <b>{_e(s['sink'])}</b> was not reconciled: {_e(s['error'])}")
        if s.get("caught_up") is False:
            warns.append(f"Sink <b>{_e(s['sink'])}</b>: the pipeline had not caught up with the ERP "
                         "snapshot; some differences may be changes still on their way.")
        if s.get("heal_refused"):
            warns.append(f"Healing refused: {_e(s['heal_refused'])}")
        sink_rows.append(
            f"<tr><td>{_e(s['sink'])}</td><td class=num>{s.get('erp_keys') or 0:,}</td>"
            f"<td class=num>{s.get('shop_keys') or 0:,}</td><td class=num>{s.get('drift_total') or 0:,}</td>"
            f"<td class=num>{s.get('in_flight') or 0:,}</td><td class=num>{s.get('healed') or 0:,}</td>"
            f"<td>{_e(s.get('error') or 'ok')}</td></tr>")
    cards = "".join(f'<div class="card k-{k}"><b>{by_kind[k]:,}</b>'
                    f"{_e(LABELS[k])}</div>" for k in DRIFT_KINDS)
    position = next((s.get("erp_position") for s in summaries if s.get("erp_position")), None)
    more = (f'<p class="muted">Showing the {max_items:,} worst of {total:,} items; the CSV has all of '
            'them.</p>'
            if total > max_items else "")
    csv_link = f' · <a href="{_e(csv_name)}">CSV</a>' if csv_name else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report #{run_id}</title>
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>Shop vs ERP drift report</h1>
<div class="muted">Run #{run_id} · {_e(generated.strftime('%Y-%m-%d %H:%M:%S %Z'))} · ERP position
{_e(position or '?')}{csv_link}</div>
{''.join(f'<div class="warn">{w}</div>' for w in warns)}
<div class="cards"><div class="card"><b id="total">{total:,}</b>items drifted</div>{cards}</div>
<table id="sinks"><thead><tr><th>Shop</th><th>ERP keys</th><th>Shop keys</th><th>Drift</th>
<th>In flight (not counted)</th><th>Healed</th><th>Status</th></tr></thead><tbody>{''.join(sink_rows)}</tbody>
</table>
<h2>Drift by kind and location</h2>
{chart_by_location(by_loc)}
<h2>Drift over recent runs</h2>
{chart_trend(trend)}
<h2>Items, worst first</h2>
{more}<input id="search" type="search" placeholder="Search SKU, location, kind…" aria-label="search">
<span class="muted"><span id="shown">0</span> shown</span>
<table id="items" data-ready="0"><thead><tr><th>Shop</th><th>Kind</th><th>SKU</th><th>Location / list</th>
<th>ERP</th><th>Shop</th><th>Severity</th><th>Note</th></tr></thead><tbody></tbody></table>
<script type="application/json" id="items-data">{data}</script>
<script type="application/json" id="labels-data">{labels}</script>
<script>{_JS}</script>
</body></html>
"""


def write_reports(con: duckdb.DuckDBPyConnection, report_dir: Path, *, summaries: list[dict[str, Any]],
                  trend: list[dict[str, Any]], run_id: int, max_items: int) -> tuple[Path, Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    stem = f"drift-{now.strftime('%Y%m%d-%H%M%S')}-run{run_id}"
    csv_path, html_path = report_dir / f"{stem}.csv", report_dir / f"{stem}.html"
    write_csv(con, csv_path)
    html_path.write_text(render_html(con, summaries=summaries, trend=trend, run_id=run_id, generated=now,
                                     max_items=max_items, csv_name=csv_path.name), encoding="utf-8")
    return html_path, csv_path
