import csv
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from report_helpers import DEFENSES, MODELS, fast_store, grid_rows, make_row, psnr_mean, write_grid

from udcbench.errors import SpecError, UnknownNameError
from udcbench.report import tables

SPECIAL = "net_v2 {x} ~^\\ 100% #1 $ & <b>"  # a model name with every LaTeX and HTML special


def test_cells_are_mean_and_sample_std_over_images(grid):
    table = tables.pivot(grid_rows(grid), None, None)
    assert table.rows_by == ("model", "defense") and table.cols_by == ("attack", "eps")
    assert table.col_keys == (("cw", "-"), ("pgd", "2/255"), ("pgd", "8/255"))
    assert table.row_keys == tuple((m, d) for m in MODELS for d in DEFENSES)  # defense none first
    for model, defense in table.row_keys:
        for attack, eps in (("cw", None), ("pgd", 2 / 255), ("pgd", 8 / 255)):
            cell = table.cells[((model, defense), (attack, "-" if eps is None else f"{round(eps * 255)}/255"))]
            assert cell.mean == pytest.approx(psnr_mean(model, defense, attack, eps))
            assert cell.std == pytest.approx(1.0)  # sample std of (-1, 0, +1); population std would be 0.816
            assert cell.images == 3
    assert table.text(("model-a", "none"), ("pgd", "8/255")) == "22.00 ± 1.00"


def test_one_image_has_std_zero(tmp_path):
    table = tables.pivot(grid_rows(write_grid(tmp_path / "g", images=1)), None, None)
    assert table.text(("model-a", "none"), ("pgd", "8/255")) == "21.00 ± 0.00"
    assert "over 1 image;" in table.caption


def test_metric_short_names_raw_columns_and_digits(grid):
    rows = grid_rows(grid)
    ssim = tables.pivot(rows, ["model"], ["defense"], "ssim_gt", where=["attack=pgd", "eps=8/255"])
    assert ssim.metric == "ssim_adv_gt" and ssim.text(("model-a",), ("none",)) == "0.5000 ± 0.0100"
    short = tables.pivot(rows, None, None, "psnr_clean_out")
    raw = tables.pivot(rows, None, None, "psnr_adv_clean")
    assert short.cells == raw.cells and raw.metric == "psnr_adv_clean"
    assert raw.cells[(("model-b", "none"), ("cw", "-"))].mean == pytest.approx(26.5)
    with pytest.raises(UnknownNameError) as error:
        tables.pivot(rows, None, None, "psnr")
    assert "psnr_gt" in str(error.value) and "ssim_adv_gt" in str(error.value)
    with pytest.raises(SpecError, match="rerun with --metrics lpips-alex"):
        tables.pivot(rows, None, None, "lpips_clean_gt")  # a metric column no row has


def test_hidden_dimension_with_several_values_is_an_error(tmp_path):
    rows = grid_rows(write_grid(tmp_path / "g", threats=("gray-box", "adaptive")))
    with pytest.raises(SpecError) as error:
        tables.pivot(rows, ["model", "defense"], ["attack", "eps"])
    message = str(error.value)
    assert "threat takes gray-box, adaptive" in message and "--where threat=" in message and "--rows" in message
    # the default rows add threat when there are several; a filter works too
    assert tables.pivot(rows, None, None).rows_by == ("model", "defense", "threat")
    adaptive = tables.pivot(rows, ["model", "defense"], ["attack", "eps"], where=["threat=adaptive"])
    assert adaptive.cells[(("model-a", "none"), ("pgd", "2/255"))].mean == pytest.approx(26.0)
    # steps and norm differ between pgd and cw, but each cell holds one value: not an error
    assert "steps by attack: cw 100, pgd 10" in adaptive.caption


def test_where_filters_on_labels(grid):
    rows = grid_rows(grid)
    table = tables.pivot(rows, ["model", "defense"], ["attack"], where=["eps=8/255"])
    assert table.col_keys == (("pgd",),) and "eps 8/255" in table.caption
    assert table.cells[(("model-b", "jpeg:75"), ("pgd",))].mean == pytest.approx(23.5)
    both = tables.pivot(rows, ["model"], ["eps"], where=["eps=2/255", "eps=8/255", "defense=none"])
    assert both.col_keys == (("2/255",), ("8/255",))
    with pytest.raises(SpecError, match="eps takes 2/255, 8/255, -"):
        tables.pivot(rows, None, None, where=["eps=4/255"])
    with pytest.raises(SpecError, match="unknown dimension 'colour'; dimensions: model, "):
        tables.pivot(rows, None, None, where=["colour=red"])
    with pytest.raises(SpecError, match="DIMENSION=VALUE"):
        tables.pivot(rows, None, None, where=["eps"])
    with pytest.raises(SpecError, match="both --rows and --cols"):
        tables.pivot(rows, ["model", "eps"], ["attack", "eps"])


def test_eps_labels_sort_by_budget():
    assert tables.sort_labels("eps", ["16/255", "-", "L2 0.5", "2/255", "L2 0.25"]) == \
        ["2/255", "16/255", "L2 0.25", "L2 0.5", "-"]
    assert tables.sort_labels("defense", ["jpeg:75", "ft", "none"]) == ["none", "ft", "jpeg:75"]


def test_best_per_column_is_max_for_psnr_min_for_lpips_and_ties_are_all_bold(tmp_path, grid):
    rows = grid_rows(grid)
    psnr = tables.pivot(rows, None, None)
    assert psnr.best == {(("model-b", "jpeg:75"), col) for col in psnr.col_keys}
    lpips = tables.pivot(rows, None, None, "lpips_gt")  # lpips = 0.3 - psnr / 100: lowest where PSNR is highest
    assert lpips.best == psnr.best
    store = fast_store(tmp_path / "tie.db")
    for model in ("x", "y", "z"):
        value = 20.0 if model == "z" else 25.0
        store.add(make_row(model, "none", "pgd", 8 / 255, 0, run_hash=model, psnr_adv_gt=value))
    tie = tables.pivot(store.rows(), ["model"], ["attack"])
    assert tie.best == {(("x",), ("pgd",)), (("y",), ("pgd",))}
    assert "**25.00 ± 0.00**" in tables.to_markdown(tie) and "**20.00" not in tables.to_markdown(tie)
    alone = tables.pivot(store.rows(), ["model"], ["attack"], where=["model=x"])  # one row: nothing to beat
    assert not alone.best and "in bold" not in alone.caption and "**" not in tables.to_markdown(alone)


def test_caption_always_names_threat_and_seed(tmp_path):
    rows = grid_rows(write_grid(tmp_path / "g", threats=("gray-box", "adaptive"), seeds=(0, 1)))
    table = tables.pivot(rows, ["model", "defense", "threat"], ["attack", "eps", "seed"])
    assert "threat models gray-box, adaptive" in table.caption and "seeds 0, 1" in table.caption
    assert "data udc-mini" in table.caption and "objective mse-clean" in table.caption
    single = tables.pivot(grid_rows(write_grid(tmp_path / "h")), None, None)
    assert "mean ± std over 3 images; threat model gray-box; seed 0;" in single.caption


def test_markdown_has_a_caption_line_and_a_pipe_table(grid):
    text = tables.to_markdown(tables.pivot(grid_rows(grid), None, None))
    caption, blank, *table = text.splitlines()
    assert caption.startswith("Table: ") and "threat model gray-box" in caption and "seed 0" in caption
    assert blank == "" and len(table) == 2 + 4
    assert all(line.count("|") == 6 for line in table)  # 5 columns, escaped pipes aside
    assert table[0].split("|")[3].strip() == "cw" and table[0].split("|")[5].strip() == "pgd 8/255"
    assert re.fullmatch(r"\|:-+\|:-+\|-+:\|-+:\|-+:\|", table[1].replace(" ", ""))
    assert "**29.50 ± 1.00**" in table[-1]


def test_csv_has_mean_and_std_columns_without_markup(grid):
    text = tables.to_csv(tables.pivot(grid_rows(grid), None, None))
    records = list(csv.DictReader(io.StringIO(text)))
    assert list(records[0]) == ["model", "defense", "cw mean", "cw std", "pgd 2/255 mean", "pgd 2/255 std",
                                "pgd 8/255 mean", "pgd 8/255 std", "threat", "seed"]
    assert len(records) == 4 and "*" not in text
    last = records[-1]
    assert (last["model"], last["defense"], last["threat"], last["seed"]) == ("model-b", "jpeg:75", "gray-box", "0")
    assert float(last["pgd 2/255 mean"]) == 29.5 and float(last["cw std"]) == 1.0


def latex_cells(line: str) -> int:
    body = line.rstrip().removesuffix(r"\\")
    cells = re.split(r"(?<!\\)&", body)
    return sum(int(m.group(1)) if (m := re.search(r"\\multicolumn\{(\d+)\}", c)) else 1 for c in cells)


def test_latex_is_booktabs_with_escaped_labels_and_compiles_when_pdflatex_exists(tmp_path):
    store = fast_store(tmp_path / "results.db")
    for model in ("model-a", SPECIAL):
        for attack, eps in (("pgd", 2 / 255), ("pgd", 8 / 255), ("cw", None)):
            for index in range(3):
                store.add(make_row(model, "none", attack, eps, index, run_hash=f"{model}{attack}{eps}"))
    table = tables.pivot(store.rows(), ["model", "defense"], ["attack", "eps"])
    text = tables.to_latex(table)
    # environments nest and close
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{(\w+)\}", text):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack.pop() == name
    assert not stack
    # every row of the tabular has as many cells as the column spec
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", text).group(1)
    assert spec == "llrrr"
    body = text[text.index(r"\toprule"):text.index(r"\bottomrule")]
    rows = [line for line in body.splitlines() if line.rstrip().endswith(r"\\")]
    assert len(rows) == 2 + 2  # two header levels, two models
    assert all(latex_cells(line) == len(spec) for line in rows)
    assert r"\multicolumn{2}{c}{pgd}" in text and r"\cmidrule(lr){4-5}" in text
    assert all(rule in text for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    # specials are escaped; braces balance; only kernel and booktabs commands appear
    assert (r"net\_v2 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{} 100\% \#1 \$ \& "
            r"\textless{}b\textgreater{}") in text
    assert SPECIAL not in text
    unescaped = re.sub(r"\\[{}]", "", text)
    assert unescaped.count("{") == unescaped.count("}")
    commands = set(re.findall(r"\\([A-Za-z]+)", text))
    assert commands <= {"begin", "end", "centering", "caption", "label", "toprule", "midrule", "bottomrule",
                        "cmidrule", "multicolumn", "textbf", "pm", "textbackslash", "textasciitilde",
                        "textasciicircum", "textless", "textgreater"}
    caption = re.search(r"\\caption\{(.*)\}\n", text).group(1)
    assert "threat model gray-box" in caption and "seed 0" in caption
    assert r"\label{tab:udcbench-psnr_gt}" in text and r"\textbf{" in text and r"$\pm$" in text
    if shutil.which("pdflatex"):
        document = tmp_path / "table.tex"
        document.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + text
                            + "\\end{document}\n")
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:]


class Structure(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.text = [], [], {}

    def handle_starttag(self, tag, attrs):
        self.stack.append(tag)
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        assert self.stack.pop() == tag

    def handle_data(self, data):
        if self.stack:
            self.text.setdefault(self.stack[-1], []).append(data)


def test_html_is_a_standalone_escaped_table(tmp_path):
    store = fast_store(tmp_path / "results.db")
    for model in ("model-b", SPECIAL):  # model-b scores 0.5 dB higher: the best of every column
        for attack, eps in (("pgd", 2 / 255), ("pgd", 8 / 255), ("cw", None)):
            store.add(make_row(model, "none", attack, eps, 0, run_hash=f"{model}{attack}{eps}"))
    text = tables.to_html(tables.pivot(store.rows(), ["model", "defense"], ["attack", "eps"]))
    parser = Structure()
    parser.feed(text)
    parser.close()
    assert not parser.stack and text.startswith("<table") and text.rstrip().endswith("</table>")
    names = [tag for tag, _ in parser.tags]
    assert names[:2] == ["table", "caption"] and names.count("table") == 1
    assert names.index("thead") < names.index("tbody")
    caption = "".join(parser.text["caption"])
    assert "threat model gray-box" in caption and "seed 0" in caption
    assert names.count("tr") == 2 + 2 and names.count("strong") == 3  # two header levels; one best per column
    spans = [int(attrs.get("colspan", 1)) for tag, attrs in parser.tags if tag == "th" and attrs.get("scope") != "row"]
    assert sum(spans[:4]) == 2 + 3  # first header row: 2 row dimensions + groups spanning 3 columns
    assert SPECIAL in parser.text["th"] and "&lt;b&gt;" in text and "<b>" not in text
