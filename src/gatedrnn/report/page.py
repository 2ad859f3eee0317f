"""The HTML page: one self-contained document (inline CSS, images as data URIs, no scripts, no fonts to fetch).

Sections are built as small HTML fragments by the caller; this module only escapes and assembles them.
"""
from __future__ import annotations

import html
from typing import NamedTuple, Sequence

STYLE = """
:root { --ink: #1d2430; --muted: #5a6473; --line: #dfe3ea; --card: #ffffff; --page: #f4f6f9; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--page); color: var(--ink);
       font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", "Liberation Sans", sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 28px 22px 60px; }
header h1 { font-size: 30px; margin: 0 0 4px; letter-spacing: -0.01em; }
header p.lead { color: var(--muted); margin: 0 0 18px; font-size: 17px; }
h2 { font-size: 22px; margin: 34px 0 10px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 18px; margin: 18px 0 8px; }
section.card, figure { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
       padding: 16px 18px; margin: 14px 0; }
figure img { display: block; width: 100%; height: auto; border-radius: 4px; }
figcaption { margin-top: 10px; padding: 10px 12px; background: #eef4fb; border-left: 4px solid var(--accent);
       border-radius: 4px; font-size: 15.5px; }
figcaption b { color: var(--accent); }
table.summary { border-collapse: collapse; width: 100%; font-size: 15px; background: var(--card); }
table.summary th, table.summary td { text-align: left; padding: 7px 10px; border-bottom: 1px solid var(--line); }
table.summary th { background: #eaeef4; font-weight: 600; }
table.summary td.num { text-align: right; font-variant-numeric: tabular-nums; }
.eqcard { display: grid; grid-template-columns: 150px 1fr; gap: 4px 18px; align-items: start; }
.eqcard h3 { margin: 4px 0 0; }
.eqcard .eqbody > p:first-child { margin-top: 4px; }
table.eq { border-collapse: collapse; margin: 6px 0 4px; font-family: "DejaVu Serif", Georgia, "Times New Roman", serif;
       font-size: 17px; }
table.eq td { padding: 2px 6px; vertical-align: baseline; white-space: nowrap; }
table.eq td.lhs { text-align: right; font-style: italic; }
table.eq td.op { color: var(--muted); }
table.eq td.note { color: var(--muted); font-size: 14px; font-family: system-ui, sans-serif; }
p.source { color: var(--muted); font-size: 13px; margin: 8px 0 0; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.9em; background: #eef1f5;
       padding: 1px 4px; border-radius: 3px; }
dl.notes { margin: 0; }
dl.notes dt { font-weight: 600; margin-top: 6px; }
dl.notes dt:first-child { margin-top: 0; }
dl.notes dd { margin: 2px 0 0 0; color: var(--ink); }
footer { color: var(--muted); font-size: 13px; margin-top: 36px; }
"""


class Figure(NamedTuple):
    """An embedded plot: anchor id, image data URI, alt text and the data-driven reading under it."""

    anchor: str
    data_uri: str
    alt: str
    reading: str


def escape(text: str) -> str:
    return html.escape(str(text), quote=True)


def figure_html(figure: Figure) -> str:
    return (f'<figure id="{escape(figure.anchor)}"><img src="{figure.data_uri}" alt="{escape(figure.alt)}">'
            f"<figcaption><b>Reading.</b> {escape(figure.reading)}</figcaption></figure>")


def table_html(header_html: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    """A summary table; header cells are HTML (written by the caller), body cells are escaped text."""
    head = "".join(f"<th>{h}</th>" for h in header_html)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{escape(c)}</td>' if n else f"<td>{escape(c)}</td>"
                         for c, n in zip(row, numeric)) + "</tr>"
        for row in rows
    )
    return f'<table class="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def page_html(title: str, lead: str, body: str, footer: str) -> str:
    """The complete document."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<link rel=\"icon\" href=\"data:,\">\n"
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
        f"<header><h1>{escape(title)}</h1><p class=\"lead\">{escape(lead)}</p></header>\n"
        f"{body}\n<footer>{escape(footer)}</footer>\n</main>\n</body>\n</html>\n"
    )
