"""A result as HTML, for a notebook: the kernels side by side, the error, the gap in three parts and the
sentence. Values are formatted as `klab show` formats them (service.render.text)."""
from __future__ import annotations

import html
from typing import Any

from service.errors import visible
from service.render.text import (
    bias_line,
    difference,
    gap_parts,
    gap_title,
    group_line,
    heading,
    identifiable_line,
    slices,
    weight,
)


def escape(text: str) -> str:
    """Text as HTML shows it as written: markup escaped, and what a page would play rather than show (a bidi override
    reordering a stored path, a newline) written as in a literal, as `klab show` writes it (service.errors.visible)."""
    return html.escape(visible(text))


_TABLE = "border-collapse:collapse;margin:0 1.5em 0.5em 0"
_CELL = "padding:1px 6px;text-align:right;font-family:monospace;border:1px solid #ccc"


def _kernel(name: str, kernel: Any) -> str:
    rows = []
    for label, part in slices(kernel):  # a 4-D kernel's (out, in) slices, each named above its rows
        if label is not None and part:
            rows.append(f'<tr><td colspan="{len(part[0])}" style="text-align:left"><small>{escape(label)}</small>'
                        "</td></tr>")
        rows += ["<tr>" + "".join(f'<td style="{_CELL}">{weight(v).strip()}</td>' for v in row) + "</tr>"
                 for row in part]
    return (f'<table style="{_TABLE}"><caption style="text-align:left">{escape(name)}</caption>'
            f"{''.join(rows)}</table>")


def _head(result: dict[str, Any]) -> str:
    head, line = heading(result)
    return f"<b>{escape(head)}</b><br><small>{escape(line)}</small>"


def result_html(result: dict[str, Any]) -> str:
    """One result as a block of HTML."""
    parts = [_head(result)]
    kernels = [("true", result.get("true_kernel")), ("learned", result.get("learned_kernel")),
               ("learned - true", difference(result)), ("least squares W*", result.get("lstsq_kernel"))]
    tables = "".join(_kernel(name, k) for name, k in kernels if k is not None)
    parts.append(f'<div style="display:flex;flex-wrap:wrap;align-items:flex-start">{tables}</div>' if tables
                 else "<p>(no kernels: the job did not train)</p>")
    if (bias := bias_line(result)) is not None:
        parts.append(escape(bias))
    parts += [escape(line) for line in group_line(result, "error")]
    if (ident := identifiable_line(result)) is not None:
        parts.append(ident)
    parts += [escape(line) for line in group_line(result, "pace")]
    gap = gap_parts(result)
    if gap:
        rows = "".join(f'<tr><td style="text-align:left">{escape(f.key or f.name)}</td>'
                       f'<td style="{_CELL}">{escape(value)}</td>'
                       f'<td style="text-align:left">{escape(f.doc)}</td></tr>' for f, value in gap)
        parts.append(f'<table style="{_TABLE}"><caption style="text-align:left">{escape(gap_title(result))}'
                     f"</caption>{rows}</table>")
    if result.get("explanation"):
        parts.append(f"<p><b>{escape(result['explanation'])}</b></p>")
    if result.get("error_message"):
        parts.append(f"<p>error message: {escape(result['error_message'])}</p>")
    return "<div>" + "<br>".join(parts) + "</div>"
