"""Rendering a pivot table (tables.pivot) as Markdown, CSV, LaTeX (booktabs) and HTML.

Labels come from the results and are escaped for each format (escape.py; LaTeX here, `latex_escape`). A table
with display names (names.py, `--names display`) has capitalised headers and an ε column dimension written as
`ε = 8/255` (in LaTeX `$\\epsilon = 8/255$`); without them the output is what earlier versions wrote, byte for
byte. The LaTeX float's \\label is `tab:udcbench-METRIC` unless the table carries another (`--label`).
"""

from __future__ import annotations

import csv
import html
import io

from tabulate import tabulate

from udcbench.report.escape import csv_cell, markdown, markdown_cells
from udcbench.report.names import Names, eps_header

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}", "|": r"\textbar{}", "±": r"$\pm$", "–": "--", "−": "$-$", "·": r"$\cdot$",
        "×": r"$\times$", "δ": r"$\delta$", "ε": r"$\varepsilon$", "∞": r"$\infty$", "→": r"$\rightarrow$",
        "α": r"$\alpha$", "σ": r"$\sigma$", "‖": r"$\|$", "₂": r"$_2$", "≤": r"$\leq$",  # certified captions
        "[": "{[}", "]": "{]}",  # a row or a rule followed by [ would read it as an optional argument
        **{chr(code): " " for code in range(32)}}  # a line break in a name would end the cell's paragraph


def latex_escape(text: str) -> str:
    """Plain text -> LaTeX source that pdflatex typesets as that text (specials and a few symbols)."""
    return "".join(_TEX.get(char, char) for char in text)


def header(table, dimension: str, latex: bool = False) -> str:
    """The column header of a dimension: its name, or with display names 'Model', 'ε' ($\\epsilon$ in LaTeX).
    LaTeX text comes escaped."""
    if table.names is None:
        return latex_escape(dimension) if latex else dimension
    if latex and dimension == "eps":
        return r"$\epsilon$"
    text = Names.header(dimension)
    return latex_escape(text) if latex else text


def part(table, dimension: str, label: str, latex: bool = False) -> str:
    """One part of a column key as the header shows it: the label, or with display names an eps budget as
    'ε = 8/255'. LaTeX text comes escaped."""
    if table.names is not None and dimension == "eps":
        shown = eps_header(label, latex)
        if shown is not None:
            return shown
    return latex_escape(label) if latex else label


def _labels(table, latex: bool = False) -> list[str]:
    def joined(key, skip_none: bool) -> str:
        return " ".join(part(table, d, p, latex) for d, p in zip(table.cols_by, key) if not skip_none or p != "-")

    labels = [joined(key, True) or "-" for key in table.col_keys]
    return labels if len(set(labels)) == len(labels) else [joined(key, False) for key in table.col_keys]


def column_labels(table) -> list[str]:
    """'pgd 8/255', and 'cw' for a column key whose eps is '-' (unless that makes two labels equal)."""
    return _labels(table)


def _groups(col_keys, level: int) -> list[tuple[str, int, int]]:
    """Runs of consecutive column keys that share key[:level + 1]: (label, first index, count)."""
    groups: list[tuple[str, int, int]] = []
    for index, key in enumerate(col_keys):
        if groups and col_keys[groups[-1][1]][:level + 1] == key[:level + 1]:
            groups[-1] = (groups[-1][0], groups[-1][1], groups[-1][2] + 1)
        else:
            groups.append((key[level], index, 1))
    return groups


def to_markdown(table) -> str:
    body = []  # labels are names from the results: escaped (no raw HTML, links or cell-splitting pipes)
    for row in table.row_keys:
        cells = []
        for col in table.col_keys:
            text = table.text(row, col) or "-"
            cells.append(f"**{text}**" if (row, col) in table.best else text)
        body.append(markdown_cells(row) + cells)
    headers = markdown_cells([header(table, d) for d in table.rows_by] + column_labels(table))
    align = ("left",) * len(table.rows_by) + ("right",) * len(table.col_keys)
    grid = tabulate(body, headers=headers, tablefmt="pipe", colalign=align, disable_numparse=True)
    return f"Table: {markdown(table.caption)}\n\n{grid}\n"


def to_csv(table) -> str:
    """Row-key columns, then '<column label> mean' and '<column label> std' per column (plain numbers), then
    threat and seed when they are not pivot dimensions; text a spreadsheet would run as a formula gets a leading '
    (escape.csv_cell)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    extra = list(table.per_row)
    names = [header(table, d) for d in list(table.rows_by)]
    header_row = names + [f"{label} {stat}" for label in column_labels(table)
                          for stat in ("mean", "std")] + [header(table, d) for d in extra]
    writer.writerow([csv_cell(text) for text in header_row])
    for row in table.row_keys:
        values = [csv_cell(label) for label in row]
        for col in table.col_keys:
            cell = table.cells.get((row, col))
            values += ["", ""] if cell is None else [f"{cell.mean:.{table.digits}f}", f"{cell.std:.{table.digits}f}"]
        writer.writerow(values + [csv_cell(table.per_row[name][row]) for name in extra])
    return buffer.getvalue()


def to_latex(table) -> str:
    """A `table` float with a booktabs `tabular`; needs only \\usepackage{booktabs}."""
    first = len(table.rows_by)
    label = table.label or f"tab:udcbench-{table.name}"
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.caption)}}}",
             rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{'l' * first + 'r' * len(table.col_keys)}}}", r"\toprule"]
    for level in range(len(table.cols_by) - 1):  # grouped header rows: attack over eps, ...
        groups = _groups(table.col_keys, level)
        cells = [""] * first + [rf"\multicolumn{{{n}}}{{c}}{{{part(table, table.cols_by[level], text, True)}}}"
                                for text, _, n in groups]
        lines.append(" & ".join(cells) + r" \\")
        lines.append(" ".join(rf"\cmidrule(lr){{{first + start + 1}-{first + start + n}}}" for _, start, n in groups))
    bottom = [header(table, d, True) for d in table.rows_by]
    if len(table.cols_by) == 1:
        bottom += _labels(table, latex=True)
    else:
        bottom += [part(table, table.cols_by[-1], key[-1], True) for key in table.col_keys]
    lines += [" & ".join(bottom) + r" \\", r"\midrule"]
    for row in table.row_keys:
        cells = [latex_escape(text) for text in row]
        for col in table.col_keys:
            text = table.text(row, col, r"$\pm$") or "--"
            cells.append(rf"\textbf{{{text}}}" if (row, col) in table.best else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(table) -> str:
    """A standalone <table> with <caption>, <thead> (grouped headers) and <tbody>; best cells in <strong>."""
    escape = html.escape
    levels = len(table.cols_by)
    lines = ['<table class="udcbench">', f"<caption>{escape(table.caption)}</caption>", "<thead>"]
    for level in range(levels):
        cells = []
        if level == 0:
            span = f' rowspan="{levels}"' if levels > 1 else ""
            cells += [f'<th scope="col"{span}>{escape(header(table, d))}</th>' for d in table.rows_by]
        if level < levels - 1:
            cells += [f'<th scope="colgroup" colspan="{n}">{escape(part(table, table.cols_by[level], text))}</th>'
                      for text, _, n in _groups(table.col_keys, level)]
        else:
            labels = (column_labels(table) if levels == 1
                      else [part(table, table.cols_by[-1], key[-1]) for key in table.col_keys])
            cells += [f'<th scope="col">{escape(text)}</th>' for text in labels]
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines += ["</thead>", "<tbody>"]
    for row in table.row_keys:
        cells = [f'<th scope="row">{escape(text)}</th>' for text in row]
        for col in table.col_keys:
            text = escape(table.text(row, col) or "-")
            cells.append(f"<td><strong>{text}</strong></td>" if (row, col) in table.best else f"<td>{text}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines) + "\n"


RENDERERS = {"md": to_markdown, "csv": to_csv, "latex": to_latex, "html": to_html}
