"""Escaping the names udcbench writes into reports: file and folder names (images, weights, datasets), defense
and attack parameter strings and model options are user-controlled, so they are escaped for each output format.

- Markdown (`markdown`): `<`, `>`, `&` become HTML entities (no raw HTML, no autolinks), `|` becomes `\\|` (it
  would split a table cell), `\\`, `[` and `]` (links, images) are backslash-escaped, and so are `*`, `_`, `` ` ``
  and `$` (emphasis, code spans, math) — except an `_` between two letters or digits, which never makes
  emphasis (`random_start`), and, in a table cell (`cell=True`, its own inline context), a character that occurs
  only once, which has nothing to pair with (`purify:auto(t*=5)+ft`). Line breaks and other control characters
  become spaces (a newline would end a table row). Plain labels (`pgd 8/255`, `purify+ft`, `uformer-nano`,
  `RANDOM (untrained)`) come out unchanged.
- CSV (`csv_cell`): a text cell that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, tab
  or carriage return) gets a leading `'` (OWASP's advice against CSV injection); numbers (`-1.5`, `+2e-3`) and
  the lone `-` udcbench writes for "none" stay as they are. `csv_uncell` undoes it (the CSV a check reads back).
- matplotlib (`plot_text`): `$` is escaped, so a name cannot switch on mathtext (an unbalanced expression would
  fail the whole figure), and a label starting with `_` is kept in the legend.

LaTeX (tables.latex_escape) and HTML (html.escape) are escaped where they are written.
"""

from __future__ import annotations

import re

_MARKDOWN = {"\\": "\\\\", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "$": "\\$",
             "|": "\\|", "<": "&lt;", ">": "&gt;", "&": "&amp;"}
_PAIRED = "*_`$"  # inert alone: emphasis, code spans and math need an opening and a closing delimiter
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
# a spreadsheet runs a cell starting with one of these as a formula; leading quotes are counted so that
# csv_uncell(csv_cell(text)) == text for every text
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|nan)", re.IGNORECASE)
_NONE = "-"  # the label of a setting left unset


def markdown(value, cell: bool = False) -> str:
    """`value` as text that Markdown (CommonMark / GitHub) shows literally, safe inside a pipe-table cell.
    `cell`: the text is a whole table cell, so a `*`, `_`, `` ` `` or `$` that occurs once stays as it is."""
    text = _CONTROL.sub(" ", str(value))

    def intraword(index: int) -> bool:
        return 0 < index < len(text) - 1 and text[index - 1].isalnum() and text[index + 1].isalnum()

    special = [index for index, char in enumerate(text) if char in _MARKDOWN
               and not (char == "_" and intraword(index))]
    if cell:
        counts = {char: sum(text[index] == char for index in special) for char in _PAIRED}
        special = [index for index in special if counts.get(text[index], 2) > 1]
    out = list(text)
    for index in special:
        out[index] = _MARKDOWN[text[index]]
    return "".join(out)


def markdown_cells(values) -> list:
    """Each text of `values` escaped with `markdown` as a table cell; numbers and None (missing) unchanged."""
    return [markdown(value, cell=True) if isinstance(value, str) else value for value in values]


def csv_cell(value):
    """A text cell a spreadsheet would run as a formula, prefixed with `'`; numbers and anything else as is."""
    if isinstance(value, str) and value != _NONE and _FORMULA.match(value) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_uncell(value):
    """The text `csv_cell` was given, from what it wrote."""
    if isinstance(value, str) and value.startswith("'") and _FORMULA.match(value[1:]):
        return value[1:]
    return value


def plot_text(value) -> str:
    """`value` as matplotlib text that is drawn literally: no mathtext, and kept in legends (matplotlib leaves
    out a label that starts with `_`)."""
    text = str(value).replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text
