"""The cell equations, rendered from the docstrings of the step functions in `gatedrnn.cells` (their single
source): the text before "Args:" becomes prose and equation blocks, with subscripts typeset."""
from __future__ import annotations

import html
import inspect
import re

from gatedrnn.cells import CELL_SPECS

_SUBSCRIPT = re.compile(r"\b([A-Za-z])_([A-Za-z0-9]+)\b")


def equation_text(cell: str) -> str:
    """The docstring of the cell's step function up to its Args section (plain text, as written in cells/), or
    the cell's own equations where one step function serves several cells (`CellSpec.equations`)."""
    if cell not in CELL_SPECS:
        raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(CELL_SPECS)}")
    spec = CELL_SPECS[cell]
    if spec.equations is not None:
        return spec.equations().strip()
    doc = inspect.getdoc(spec.step) or ""
    return doc.split("\nArgs:")[0].strip()


def _typeset(text: str) -> str:
    """Escape, drop reST literal quotes, and turn W_ih into W<sub>ih</sub>."""
    return _SUBSCRIPT.sub(r"\1<sub>\2</sub>", html.escape(text.replace("``", "")))


def _equation_rows(lines: list[str]) -> str:
    """Indented lines `lhs = rhs   (note)` -> table rows aligned on "=" (lines without " = " span the row)."""
    rows = []
    for line in (line.strip() for line in lines if line.strip()):
        if " = " not in line:
            rows.append(f'<tr><td colspan="4">{_typeset(line)}</td></tr>')
            continue
        lhs, rhs = line.split(" = ", 1)
        rhs, note = (re.split(r"\s{3,}", rhs, maxsplit=1) + [""])[:2]  # "expr   (note)"
        rows.append(f'<tr><td class="lhs">{_typeset(lhs.strip())}</td><td class="op">=</td>'
                    f'<td class="rhs">{_typeset(rhs.strip())}</td><td class="note">{_typeset(note.strip())}</td></tr>')
    return '<table class="eq">' + "".join(rows) + "</table>"


def equations_html(cell: str) -> str:
    """The docstring as HTML: indented paragraphs are equation tables aligned on "=", the rest prose."""
    parts = []
    for paragraph in re.split(r"\n\s*\n", equation_text(cell)):
        lines = paragraph.split("\n")
        if all(line.startswith("    ") for line in lines if line.strip()):
            parts.append(_equation_rows(lines))
        else:
            parts.append(f"<p>{_typeset(' '.join(line.strip() for line in lines))}</p>")
    source = CELL_SPECS[cell].step
    where = f"{source.__module__}.{source.__name__}"
    if CELL_SPECS[cell].equations is not None:  # derived from the step module's docstring for this cell
        where = f"{source.__module__} (the equations of {CELL_SPECS[cell].display_name}, as {source.__name__} runs them)"
        parts.append(f'<p class="source">from the docstring of <code>{html.escape(where)}</code></p>')
    else:
        parts.append(f'<p class="source">from the docstring of <code>{where}</code></p>')
    return "\n".join(parts)
