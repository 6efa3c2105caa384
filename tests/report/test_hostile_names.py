"""Hostile names in reports (issue 15): image, weights and dataset folder names reach leaderboard.md,
leaderboard.csv and the pivot tables. Markdown must show them as text (no raw HTML, no links, no emphasis, no
extra table cells) and CSV must not hand a spreadsheet a formula; plain labels stay byte for byte as before."""

import csv
import io
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.models import bundled_weights
from udcbench.report.escape import csv_cell, csv_uncell, markdown, plot_text
from udcbench.report.tables import latex_escape

runner = CliRunner()
IMAGES = ["<img src=x onerror=alert(1)>", "a|b", "=2+5", "@SUM(1)"]
# dataset folders (the data label is the resolved path, so it never starts with a formula character)
DATA = ["=HYPERLINK(1)<img src=x onerror=alert(1)>|x", "-2+3 [l](javascript:x) `c` $m$ *e* _u_ a&amp;b"]
WEIGHTS = "=2+5<b>[w](z).safetensors"
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
PLAIN = ["pgd ε=8/255", "purify+ft", "uformer-nano", "RANDOM (untrained)", "alpha=1/255, restarts=3",
         "random_start=true", "box:0.25,0.25,0.5,0.5", "8/255", "L2 1", "-", "‖δ‖₂", "batch_size", "jpeg:75",
         "smooth:sigma=0.25", "udc-mini", "/data/ZTE_new_1/test", "attacked PSNR vs clean out", "file:6d7aec4e"]


def unescaped(line: str) -> list[tuple[int, str]]:
    """(position, char) of the characters of a Markdown line that no backslash escapes."""
    found, escaped = [], False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            found.append((index, char))
    return found


def split_cells(line: str) -> list[str]:
    """A pipe-table row split at its unescaped pipes (the outer empty parts dropped)."""
    cuts = [index for index, char in unescaped(line) if char == "|"]
    return [line[a + 1:b].strip() for a, b in zip(cuts, cuts[1:])]


def unmarkdown(text: str) -> str:
    """What a Markdown viewer shows for `markdown`'s output."""
    text = re.sub(r"\\(.)", r"\1", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def check_markdown_tables(text: str) -> None:
    """Every pipe-table row has as many cells as its header, and no line holds raw HTML or an unescaped character
    that starts a link, image, code span, emphasis or math."""
    assert "<img" not in text and "<b>" not in text and "<" not in text
    table: list[str] = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            widths = {len(split_cells(row)) for row in table}
            assert len(widths) == 1, table
            table = []
    for line in text.splitlines():
        line = re.sub(r"\*\*[-\d.]+ ± [\d.]+\*\*", "", line)  # a pivot table's best cells are bold: udcbench's own
        raw = {char for _, char in unescaped(line)}
        assert not raw & set("[]`*$"), (raw & set("[]`*$"), line)


def rendered(text: str) -> str:
    markdown_it = pytest.importorskip("markdown_it")
    return markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(text)


def check_rendering(text: str) -> None:
    """A CommonMark viewer that renders raw HTML shows no tag, link, emphasis or code span of a name."""
    html = rendered(text)
    for tag in ("<img", "<a ", "<em>", "<code>", "<b>"):
        assert tag not in html, (tag, html)
    bold = re.findall(r"<strong>(.*?)</strong>", html)
    assert all(re.fullmatch(r"[-\d.]+ ± [\d.]+", cell) for cell in bold), bold  # only a pivot table's best cells
    for table in re.findall(r"<table>.*?</table>", html, re.S):
        header = len(re.findall(r"<th[ >]", table.split("</thead>")[0]))
        for row in re.findall(r"<tr>.*?</tr>", table.split("</thead>")[1], re.S):
            assert len(re.findall(r"<td[ >]", row)) == header, row


def check_csv(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    for row in rows:
        for cell in row:
            if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
                assert cell == "-" or NUMBER.fullmatch(cell), (cell, row)
    return rows


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def hostile_results(tmp_path, monkeypatch):
    """Two runs of a weights file with a hostile name on two datasets with hostile folder and image names (the
    first image of each, <img src=x onerror=alert(1)>, is the one scored)."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for folder in DATA:
        for side in ("input", "gt"):
            (tmp_path / folder / side).mkdir(parents=True)
            for name in IMAGES:
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / folder / side / f"{name}.png")
    shutil.copy(bundled_weights("uformer-nano"), tmp_path / WEIGHTS)
    for folder in DATA:
        result = invoke("run", "--model", "uformer-nano", "--weights", WEIGHTS, "--data", folder, "--limit", "1",
                        "--steps", "1", "--out", "out")
        assert result.exit_code == 0, result.output
    return tmp_path / "out"


def test_hostile_names_are_escaped_in_every_report(hostile_results):
    out = hostile_results
    text = (out / "leaderboard.md").read_text()
    check_markdown_tables(text)
    check_rendering(text)
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "\\|x" in text
    rows = [split_cells(line) for line in text.splitlines() if line.startswith("|")]
    header = rows[0]
    labels = {str((out.parent / name).resolve()) for name in DATA}
    assert {unmarkdown(row[header.index("data")]) for row in rows[2:]} == labels  # escaped, still readable
    assert {unmarkdown(row[header.index("weights")]) for row in rows[2:]} == {WEIGHTS}

    records = check_csv((out / "leaderboard.csv").read_text())
    columns = records[0]
    assert {row[columns.index("weights")] for row in records[1:]} == {"'" + WEIGHTS}
    assert {row[columns.index("data")] for row in records[1:]} == labels
    assert all(NUMBER.fullmatch(row[columns.index("psnr_adv_gt")]) for row in records[1:])

    result = invoke("leaderboard", out)  # re-rendered: the same file
    assert result.exit_code == 0 and result.stdout == text
    result = invoke("leaderboard", out, "--format", "csv")
    assert result.exit_code == 0 and result.stdout == (out / "leaderboard.csv").read_text()

    # pivot tables: Markdown, CSV (names as row keys and as column labels), LaTeX, HTML
    assert invoke("leaderboard", out, "--rows", "weights,data", "--cols", "attack", "--format", "md").exit_code == 0
    table = (out / "table-psnr_gt.md").read_text()
    check_markdown_tables(table)
    check_rendering(table)
    assert len([line for line in table.splitlines() if line.startswith("|")]) == 2 + 2
    assert invoke("leaderboard", out, "--rows", "weights,data", "--cols", "attack", "--format", "csv").exit_code == 0
    pivot = check_csv((out / "table-psnr_gt.csv").read_text())
    assert {row[0] for row in pivot[1:]} == {"'" + WEIGHTS} and {row[1] for row in pivot[1:]} == labels
    assert invoke("leaderboard", out, "--rows", "data", "--cols", "weights", "--format", "csv").exit_code == 0
    assert check_csv((out / "table-psnr_gt.csv").read_text())[0][1] == f"'{WEIGHTS} mean"
    assert invoke("leaderboard", out, "--rows", "weights,data", "--cols", "attack", "--format", "latex").exit_code == 0
    latex = (out / "table-psnr_gt.tex").read_text()
    assert "<img" not in latex and "[w]" not in latex and r"\textless{}img" in latex
    assert invoke("leaderboard", out, "--rows", "weights,data", "--cols", "attack", "--format", "html").exit_code == 0
    assert "<img" not in (out / "table-psnr_gt.html").read_text()

    # the CSV is still a baseline `udcbench check` reads back to the same labels
    result = invoke("check", out, "--baseline", out / "leaderboard.csv")
    assert result.exit_code == 0 and "check passed: 2 rows" in result.output, result.output

    # figures: a name with $…$ must not switch on matplotlib's mathtext
    result = invoke("plot", out)
    assert result.exit_code == 0, result.output
    assert (out / "psnr_vs_eps.png").is_file() and (out / "image_grid.png").is_file()


def test_markdown_escape_keeps_plain_labels():
    for label in PLAIN:
        assert markdown(label) == label == markdown(label, cell=True)
    # a delimiter with nothing to pair with in its cell stays (udcbench's own calibrated purify label)
    assert markdown("purify:auto(t*=5)+ft", cell=True) == "purify:auto(t*=5)+ft"
    assert markdown("purify:auto(t*=5)+ft") == r"purify:auto(t\*=5)+ft"  # running text: other names may pair
    html = rendered("| a | b | c | d |\n|---|---|---|---|\n| x*y | z*w | `q | r` |\n")
    assert "<em>" not in html and "<code>" not in html and html.count("<td>") == 4


@pytest.mark.parametrize("name, escaped", [
    ("<img src=x onerror=alert(1)>", "&lt;img src=x onerror=alert(1)&gt;"),
    ("a|b", r"a\|b"),
    ("[x](javascript:y)", r"\[x\](javascript:y)"),
    ("![i](s.png)", r"!\[i\](s.png)"),
    ("*e* **s**", r"\*e\* \*\*s\*\*"),
    ("_u_ a_b __init__", r"\_u\_ a_b \_\_init\_\_"),
    ("`code`", r"\`code\`"),
    ("$x$", r"\$x\$"),
    ("a\\|b", r"a\\\|b"),
    ("&amp; &#60;", "&amp;amp; &amp;#60;"),
    ("two\nlines\r\tand", "two lines  and"),
])
def test_markdown_escape(name, escaped):
    assert markdown(name) == escaped == markdown(name, cell=True)
    assert unmarkdown(escaped) == name.replace("\n", " ").replace("\r", " ").replace("\t", " ")
    html = rendered(f"| h |\n|---|\n| {escaped} |\n")
    assert html.count("<td>") == 1
    for tag in ("<img", "<a ", "<em>", "<strong>", "<code>"):
        assert tag not in html


@pytest.mark.parametrize("value, written", [
    ("=2+5", "'=2+5"), ("+cmd", "'+cmd"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"),
    ("\rx", "'\rx"), ("'=x", "''=x"), ("=2+5<b>.safetensors", "'=2+5<b>.safetensors"),
    ("-1.5", "-1.5"), ("+2", "+2"), ("-1e-3", "-1e-3"), ("-.5", "-.5"), ("-", "-"), ("8/255", "8/255"),
    ("uformer-nano", "uformer-nano"), ("'quoted'", "'quoted'"), ("", ""), (-1.5, -1.5), (None, None),
])
def test_csv_cells(value, written):
    assert csv_cell(value) == written
    assert csv_uncell(written) == value


def test_plot_and_latex_text():
    assert plot_text("a $x$ b") == r"a \$x\$ b"
    assert plot_text("_hidden") == "\u200b_hidden"  # matplotlib drops legend labels that start with _
    assert plot_text("pgd ε=8/255") == "pgd ε=8/255"
    assert latex_escape("[w](z)\nx") == "{[}w{]}(z) x"
