"""The dashboard as ONE self-contained HTML page: inline SVG line charts drawn here,
no JavaScript, no external asset (the hosts have no internet).

Every text that comes from Prometheus (labels, statement texts, errors) is escaped.
Each panel is ``<section class="panel" data-panel="KEY" data-points="N">``: N samples
drawn (a table: its rows); 0 shows the panel's "no data" text.
"""

from __future__ import annotations

import time
from html import escape

from donnadb.ops.dashboard import Line, PanelData, Snapshot, Statement

REFRESH_SECONDS = 30
WIDTH, HEIGHT = 640, 190
LEFT, RIGHT, TOP, BOTTOM = 64, 8, 8, 22
#: Colour-blind-safe (Okabe-Ito), then greys.
COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442",
           "#000000", "#777777", "#bbbbbb")
#: A chart with more series than this leaves out those at 0 all along (noted below it).
MAX_QUIET_SERIES = 4

CSS = """
body{font-family:DejaVu Sans,Liberation Sans,Arial,sans-serif;margin:16px;background:#f6f6f4;
color:#222222}
h1{font-size:20px;margin:0 0 4px}p.meta{margin:0 0 14px;color:#555555;font-size:13px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(620px,1fr));gap:14px}
section.panel{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 12px}
section.wide{grid-column:1/-1}h2{font-size:15px;margin:0 0 6px}
p.empty{color:#888888;font-style:italic;margin:24px 0;text-align:center}
p.error{color:#b00020;font-size:13px}
ul.legend{list-style:none;margin:4px 0 0;padding:0;font-size:12px;display:flex;
flex-wrap:wrap;gap:4px 14px}
ul.legend span.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
p.note{font-size:11px;color:#777777;margin:2px 0 0}
table{border-collapse:collapse;width:100%;font-size:12px}
th,td{text-align:left;padding:3px 6px;border-bottom:1px solid #eee}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td code{font-size:12px;white-space:pre-wrap;word-break:break-all}
svg text{font-size:10px;fill:#555555}
"""


def fmt(value: float, unit: str) -> str:
    """``value`` for a person: 12.3/s, 850 µs, 2.1 h, 42 %, 1.2k."""
    if unit == "ratio":
        return f"{value * 100:.0f} %"
    if unit == "seconds":
        return _duration(value)
    number = _short(value)
    return f"{number}/s" if unit == "ops" else number


def _short(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def _duration(seconds: float) -> str:
    for size, name in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"), (1e-3, "ms")):
        if abs(seconds) >= size:
            return f"{seconds / size:.3g} {name}"
    return "0 s" if seconds == 0 else f"{seconds * 1e6:.3g} µs"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M", time.gmtime(ts))


def _scale(lines: list[Line], unit: str) -> float:
    top = max((v for ln in lines for _, v in ln.samples), default=0.0)
    if unit == "ratio":
        return 1.0
    return top * 1.1 if top > 0 else 1.0


def _axes(top: float, unit: str, start: float, end: float) -> list[str]:
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = []
    for share in (0.0, 0.5, 1.0):
        y = TOP + inner_h * (1 - share)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + inner_w}" y2="{y:.1f}" '
                     'stroke="#e4e4e4"/>')
        parts.append(f'<text x="{LEFT - 4}" y="{y + 3:.1f}" text-anchor="end">'
                     f"{escape(fmt(top * share, unit))}</text>")
    for ts, anchor, x in ((start, "start", LEFT), (end, "end", LEFT + inner_w)):
        parts.append(f'<text x="{x}" y="{HEIGHT - 6}" text-anchor="{anchor}">'
                     f"{_clock(ts)} UTC</text>")
    return parts


def chart(lines: list[Line], unit: str, start: float, end: float) -> str:
    """An inline SVG line chart of ``lines`` over ``start``..``end``."""
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top, span = _scale(lines, unit), max(end - start, 1e-9)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
             'width="100%" role="img">', *_axes(top, unit, start, end)]
    for i, line in enumerate(lines):
        points = " ".join(f"{LEFT + inner_w * (t - start) / span:.1f},"
                          f"{TOP + inner_h * (1 - min(v, top) / top):.1f}"
                          for t, v in line.samples)
        colour = COLOURS[i % len(COLOURS)]
        if len(line.samples) == 1:
            x, y = points.split(",")
            parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"/>')
        else:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" '
                         f'points="{points}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _legend(lines: list[Line], unit: str) -> str:
    items = []
    for i, line in enumerate(lines):
        last = fmt(line.samples[-1][1], unit) if line.samples else "-"
        items.append(f'<li><span class="swatch" style="background:{COLOURS[i % len(COLOURS)]}">'
                     f"</span>{escape(line.name)}: <b>{escape(last)}</b></li>")
    return f'<ul class="legend">{"".join(items)}</ul>'


def _shown(lines: list[Line]) -> tuple[list[Line], list[Line], list[Line]]:
    """(drawn, limits, left out): a busy chart leaves out the series at 0 all along."""
    drawn = [ln for ln in lines if ln.drawn]
    limits = [ln for ln in lines if not ln.drawn]
    if len(drawn) <= MAX_QUIET_SERIES:
        return drawn, limits, []
    quiet = [ln for ln in drawn if all(v == 0 for _, v in ln.samples)]
    return [ln for ln in drawn if ln not in quiet], limits, quiet


def _line_body(data: PanelData, start: float, end: float) -> str:
    drawn, limits, quiet = _shown(data.lines)
    unit = data.panel.unit
    body = chart(drawn, unit, start, end) + _legend(drawn, unit)
    for line in limits:
        last = fmt(line.samples[-1][1], unit) if line.samples else "-"
        body += f'<p class="note">limit, not drawn: {escape(line.name)} {escape(last)}</p>'
    if quiet:
        names = ", ".join(ln.name for ln in quiet)
        body += f'<p class="note">at 0 all along: {escape(names)}</p>'
    return body


def _row(r: Statement) -> str:
    mean = "-" if r.mean_seconds is None else fmt(r.mean_seconds, "seconds")
    return (f"<tr><td><code>{escape(r.query)}</code></td><td>{escape(r.queryid)}</td>"
            f'<td class="num">{r.seconds_per_second * 100:.2f} %</td>'
            f'<td class="num">{escape(fmt(r.calls_per_second, "ops"))}</td>'
            f'<td class="num">{escape(mean)}</td></tr>')


def _table_body(data: PanelData) -> str:
    head = ('<tr><th>statement (first 60 characters)</th><th>queryid</th>'
            '<th class="num">time spent (% of one core)</th><th class="num">calls</th>'
            '<th class="num">mean</th></tr>')
    return f"<table>{head}{''.join(_row(r) for r in data.rows)}</table>"


def panel_html(data: PanelData, start: float, end: float) -> str:
    """One ``<section class="panel">`` with its data attributes."""
    p = data.panel
    wide = " wide" if p.kind == "table" else ""
    head = (f'<section class="panel{wide}" data-panel="{escape(p.key)}" '
            f'data-kind="{escape(p.kind)}" data-points="{data.points}" '
            f'data-series="{len(data.lines) or len(data.rows)}"><h2>{escape(p.title)}</h2>')
    if data.error:
        body = f'<p class="error">{escape(data.error)}</p>'
    elif data.points == 0:
        body = f'<p class="empty">{escape(p.empty)}</p>'
    elif p.kind == "table":
        body = _table_body(data)
    else:
        body = _line_body(data, start, end)
    return head + body + "</section>"


def _document(title: str, meta: str, main: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1><p class=\"meta\">{meta}</p>{main}</body></html>\n")


def page(snap: Snapshot) -> str:
    """The dashboard page of ``snap``."""
    meta = (f"database <b>{escape(snap.db_name)}</b> · Prometheus "
            f"<code>{escape(snap.source)}</code> · {_clock(snap.start)} to "
            f"{_clock(snap.end)} UTC · refreshes every {REFRESH_SECONDS} s")
    body = "".join(panel_html(p, snap.start, snap.end) for p in snap.panels)
    return _document("donnadb dashboard", meta, f"<main>{body}</main>")


def error_page(message: str) -> str:
    """The page shown while Prometheus does not answer (served with status 503)."""
    return _document("donnadb dashboard", "", f'<p class="error">{escape(message)}</p>')
