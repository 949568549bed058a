"""Readable, self-contained HTML reports without a dependency: a renderer for the Markdown subset kdflow's reports
are written in (headings, paragraphs, ``-`` lists, pipe tables, ``**bold**``, ```code```, links and images), and
small builders (:func:`table`, :func:`figure`, :func:`page`). Every piece of text is escaped; only the tags built
here reach the page."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

_ITEM = re.compile(r"^\s*[-*]\s+")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_SEPARATOR = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_NUM = ' class="num"'
_NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+(e[-+]?\d+)?%?$|^n/a$")
_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|!\[([^\]]*)\]\(([^)\s]+)\)|\[([^\]]+)\]\(([^)\s]+)\)")

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222;line-height:1.45}"
    "h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.2em}h2{font-size:1.25em;margin-top:1.6em}"
    "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;"
    "vertical-align:top}td:first-child{min-width:12em}th{background:#f3f3f3}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}"
    "code{background:#f3f3f3;padding:0 .2em;border-radius:3px;font-size:.92em}tr.fail{background:#fdd}"
    "tr.skipped{color:#888}tr.pass td.result{color:#075}tr.fail td.result{color:#b00;font-weight:bold}"
    ".verdict{font-size:1.1em;padding:.5em .8em;border-left:5px solid #075;background:#eef8f2}"
    ".verdict.fail{border-color:#b00;background:#fdeeee}figure{margin:1em 0}figure img{max-width:100%;"
    "border:1px solid #ddd}figcaption{color:#555;font-size:.9em}.muted{color:#666;font-size:.9em}"
)


class Raw(str):
    """HTML built here, inserted as is (every other cell or text is escaped)."""


def escape(value: object) -> str:
    """``value`` as HTML text (a :class:`Raw` string unchanged)."""
    return value if isinstance(value, Raw) else html.escape(str(value), quote=True)


def inline(text: str) -> Raw:
    """Escape ``text`` and render its inline Markdown: ```code```, ``**bold**``, ``![alt](src)``, ``[text](url)``."""
    out, at = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[at : m.start()]))
        code, bold, alt, src, label, url = m.groups()
        if code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            out.append(f"<strong>{inline(bold)}</strong>")
        elif src is not None:
            out.append(f'<img src="{html.escape(src)}" alt="{html.escape(alt)}">')
        else:
            out.append(f'<a href="{html.escape(url)}">{inline(label)}</a>')
        at = m.end()
    out.append(html.escape(text[at:]))
    return Raw("".join(out))


def _cells(line: str) -> list[str]:
    """The cells of one pipe-table row (``\\|`` is a literal pipe)."""
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


def _table_block(lines: list[str]) -> str:
    """A pipe table (header, separator, rows) as HTML; ``---:`` columns and columns of numbers are right-aligned."""
    header, aligns = _cells(lines[0]), _cells(lines[1])
    body_rows = [_cells(line) for line in lines[2:]]
    columns = [[r[i] for r in body_rows if i < len(r) and r[i]] for i in range(len(header))]
    right = [a.endswith(":") or (bool(c) and all(_NUMBER.match(v) for v in c)) for a, c in zip(aligns, columns)]

    def row(cells: list[str], tag: str) -> str:
        num = [i < len(right) and right[i] for i in range(len(cells))]
        return "<tr>" + "".join(f"<{tag}{_NUM if n else ''}>{inline(c)}</{tag}>" for c, n in zip(cells, num)) + "</tr>"

    body = "".join(row(cells, "td") for cells in body_rows)
    return f"<table><thead>{row(header, 'th')}</thead><tbody>{body}</tbody></table>"


def render(markdown: str) -> Raw:
    """The Markdown subset as HTML: ``#`` headings, pipe tables, ``-``/``*`` lists, paragraphs (blank-line separated)."""
    lines, out, i = markdown.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := _HEADING.match(line):
            level = len(m.group(1))
            out.append(f"<h{level}>{inline(m.group(2).strip())}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1].strip()):
            j = i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out.append(_table_block(lines[i:j]))
            i = j
        elif _ITEM.match(line):
            items = []
            while i < len(lines) and _ITEM.match(lines[i]):
                items.append(f"<li>{inline(_ITEM.sub('', lines[i]))}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not _starts_block(lines, i):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{inline(' '.join(para))}</p>")
    return Raw("\n".join(out))


def _starts_block(lines: list[str], i: int) -> bool:
    line = lines[i]
    return bool(
        _HEADING.match(line)
        or _ITEM.match(line)
        or (line.lstrip().startswith("|") and i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1].strip()))
    )


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    row_classes: Iterable[str] | None = None,
    cell_classes: Sequence[str] = (),
) -> Raw:
    """An HTML table; cells are escaped unless :class:`Raw`. ``cell_classes[i]`` is the class of column ``i``
    (``"num"`` right-aligns it), ``row_classes`` one class per row (``"fail"``, ``"pass"``, ``"skipped"``)."""
    classes = list(cell_classes) + [""] * max(0, len(headers) - len(cell_classes))

    def attr(c: str) -> str:
        return f' class="{html.escape(c)}"' if c else ""

    head = "".join(f"<th{attr(c)}>{escape(h)}</th>" for h, c in zip(headers, classes))
    rows = list(rows)
    kinds = list(row_classes) if row_classes is not None else [""] * len(rows)
    body = "".join(
        f"<tr{attr(k)}>" + "".join(f"<td{attr(c)}>{escape(v)}</td>" for v, c in zip(row, classes)) + "</tr>"
        for row, k in zip(rows, kinds)
    )
    return Raw(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def figure(png: str | Path, caption: str) -> Raw:
    """A PNG embedded as a ``data:`` URI (the page stays one file, readable where it is attached) with a caption."""
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return Raw(
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def page(title: str, *parts: str) -> str:
    """A complete HTML document: ``title`` (escaped) and the body ``parts`` (:class:`Raw` HTML or escaped text)."""
    body = "\n".join(escape(p) for p in parts)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
        f"<body>\n{body}\n</body></html>\n"
    )


def scatter(
    series: Mapping[str, Sequence[tuple[float, float]]],
    colors: Mapping[str, str],
    xlabel: str,
    ylabel: str,
    width: int = 640,
    height: int = 280,
) -> Raw:
    """A small inline SVG scatter plot of named point ``series`` (x, y), with axis ranges, labels and a legend;
    empty when no series has a point."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return Raw("")
    (x0, x1), (y0, y1) = ((min(v), max(v)) for v in zip(*points))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-3)
    xticks, yticks = (x0, (x0 + x1) / 2, x1), (y0, (y0 + y1) / 2, y1)  # the data's range, labelled
    dx, dy = (x1 - x0) * 0.04, (y1 - y0) * 0.08  # a margin so edge points are not cut
    x0, x1, y0, y1 = x0 - dx, x1 + dx, y0 - dy, y1 + dy
    left, right, top, bottom = 60, 20, 30, 45

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(ylabel)} against {html.escape(xlabel)}" font-family="sans-serif" font-size="11">',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="#fafafa" '
        'stroke="#ccc"/>',
    ]
    for y in yticks:
        out.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.4g}</text>')
    for x in xticks:
        out.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 15}" text-anchor="middle">{x:.4g}</text>')
    out.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">{html.escape(xlabel)}</text>'
    )
    out.append(
        f'<text x="14" y="{(top + height - bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + height - bottom) / 2})">{html.escape(ylabel)}</text>'
    )
    legend_x = left
    for name, pts in series.items():
        color = html.escape(colors.get(name, "#333"))
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4.5" fill="{color}"/>' for x, y in pts]
        out.append(f'<circle cx="{legend_x + 5}" cy="{top - 12}" r="4.5" fill="{color}"/>')
        out.append(f'<text x="{legend_x + 13}" y="{top - 8}">{html.escape(name)} ({len(pts)})</text>')
        legend_x += 20 + 7 * (len(name) + 5)
    return Raw("".join(out) + "</svg>")
