"""Paper tables: display names (`--names display` or a YAML file), a chosen LaTeX \\label and caption, ε in the
column headers; the default output keeps the raw labels. Also the did-you-mean hint for misspelt dimensions
and metrics."""

import re

import pytest
from report_helpers import fast_store, grid_rows, make_row
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.errors import SpecError
from udcbench.registry import ATTACKS, DEFENSES, MODELS
from udcbench.report import names as display, tables

runner = CliRunner()
DISPLAY = display.load_names("display")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, *fragments):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert all(f in lines[0] for f in fragments), (fragments, lines[0])
    return True


def test_every_registered_model_attack_and_defense_has_a_display_name():
    assert set(MODELS.names()) <= set(display.MODELS)
    assert set(ATTACKS.names()) <= set(display.ATTACKS)
    assert set(DEFENSES.names()) <= set(display.DEFENSES)
    for table in display.BUILT_IN.values():  # distinct: two names never share a row of a table
        assert len(set(table.values())) == len(table)


@pytest.mark.parametrize("dimension, raw, shown", [
    ("model", "uformer-t", "Uformer-T"), ("model", "uformer-nano", "Uformer-nano"),
    ("model", "nafnet-w32", "NAFNet-w32"), ("model", "discnet", "DISCNet"), ("attack", "pgd", "PGD"),
    ("attack", "pgd-l2", "PGD-L2"), ("attack", "cw", "C&W"), ("attack", "simba", "SimBA"),
    ("attack", "square", "Square"), ("attack", "fgsm", "FGSM"), ("defense", "purify+ft", "Purify+FT"),
    ("defense", "jpeg:75", "JPEG:75"), ("defense", "purify:auto(t*=5)+ft", "Purify:auto(t*=5)+FT"),
    ("threat", "gray-box", "Gray-box"), ("model", "my-net", "my-net"), ("seed", "0", "0"),
])
def test_display_names(dimension, raw, shown):
    assert DISPLAY.show(dimension, raw) == shown


def test_eps_headers():
    assert display.eps_header("8/255") == "ε = 8/255"
    assert display.eps_header("8/255", latex=True) == r"$\epsilon = 8/255$"
    assert display.eps_header("L2 0.5", latex=True) == r"$\epsilon_2 = 0.5$"
    assert display.eps_header("-") is None and display.eps_header("$x$") is None


def test_default_tables_keep_raw_labels_and_display_tables_map_them(grid):
    rows = grid_rows(grid)
    raw = tables.pivot(rows, None, None)
    assert raw.names is None and raw.row_keys[0] == ("model-a", "none")
    assert tables.to_latex(raw).splitlines()[8] == r"model & defense & - & 2/255 & 8/255 \\"
    shown = tables.pivot(rows, None, None, names=DISPLAY)
    assert shown.row_keys[0] == ("model-a", "None") and shown.col_keys == (("C&W", "-"), ("PGD", "2/255"),
                                                                          ("PGD", "8/255"))
    assert [c.mean for c in shown.cells.values()] == [c.mean for c in raw.cells.values()]
    assert len(shown.best) == len(raw.best) and shown.per_row["threat"][("model-a", "None")] == "Gray-box"
    latex = tables.to_latex(tables.titled(shown, "tab:robustness", "PSNR under attack, 100% of {images}."))
    lines = latex.splitlines()
    assert lines[2] == r"\caption{PSNR under attack, 100\% of \{images\}.}" and lines[3] == r"\label{tab:robustness}"
    assert lines[6] == r" &  & \multicolumn{1}{c}{C\&W} & \multicolumn{2}{c}{PGD} \\"
    assert lines[8] == r"Model & Defense & - & $\epsilon = 2/255$ & $\epsilon = 8/255$ \\"
    assert lines[10].startswith(r"model-a & None & 25.00 $\pm$ 1.00")
    markdown = tables.to_markdown(shown)
    assert re.search(r"\| Model +\| Defense +\| +C&amp;W \| +PGD ε = 2/255 \|", markdown)
    assert "steps by attack: C&amp;W 100, PGD 10" in markdown  # the caption names them alike
    assert tables.to_csv(shown).splitlines()[0].startswith("Model,Defense,C&W mean,C&W std,PGD ε = 2/255 mean")
    assert "<th scope=\"col\">ε = 8/255</th>" in tables.to_html(shown)


def test_eps_as_the_only_column_and_as_a_row(grid):
    rows = grid_rows(grid)
    across = tables.pivot(rows, ["model"], ["eps"], where=["attack=pgd", "defense=none"], names=DISPLAY)
    assert r"Model & $\epsilon = 2/255$ & $\epsilon = 8/255$ \\" in tables.to_latex(across)
    down = tables.pivot(rows, ["eps"], ["model"], where=["attack=pgd", "defense=none"], names=DISPLAY)
    assert r"$\epsilon$ & model-a & model-b \\" in tables.to_latex(down)


def test_a_names_file_adds_a_labs_own_names(grid, tmp_path):
    path = tmp_path / "names.yaml"
    path.write_text("model-a: Ours_{v2} & 100%\nmodel:\n  model-b: Baseline\ndefense:\n  jpeg:75: JPEG-75\n")
    own = display.load_names(str(path))
    assert own.show("model", "model-b") == "Baseline" and own.show("attack", "pgd") == "PGD"  # built-ins stay
    table = tables.pivot(grid_rows(grid), None, None, names=own)
    assert {key[0] for key in table.row_keys} == {"Ours_{v2} & 100%", "Baseline"}
    assert {key[1] for key in table.row_keys} == {"None", "JPEG-75"}
    latex = tables.to_latex(table)
    assert r"Ours\_\{v2\} \& 100\% & None" in latex and "Ours_{v2}" not in latex  # escaped like any label
    assert r"Ours\_\{v2\} & 100% | None" not in tables.to_markdown(table)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("- a\n- b\n", "holds a list, not a mapping"),
    ("model-a: [x]\n", "display name ['x'] is not text"),
    ("model-a: [\n", "not a readable YAML file"),
    ("model-a: Same\nmodel-b: Same\n", "shows both 'model-a' and 'model-b' of model as 'Same'"),
])
def test_bad_names_files_are_one_clear_error(grid, tmp_path, content, message):
    path = tmp_path / "names.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SpecError, match=re.escape(message)):
        tables.pivot(grid_rows(grid), None, None, names=display.load_names(str(path)))


def test_hostile_model_names_stay_escaped_with_display_names(tmp_path):
    hostile = "net_v2 {x} ~^\\ 100% #1 $ & <b>"
    store = fast_store(tmp_path / "results.db")
    for model in ("uformer-nano", hostile):
        store.add(make_row(model, "none", "pgd", 8 / 255, 0, run_hash=model))
    table = tables.pivot(store.rows(), ["model"], ["attack", "eps"], names=DISPLAY)
    latex, html = tables.to_latex(table), tables.to_html(table)
    assert hostile not in latex and r"net\_v2 \{x\} \textasciitilde{}" in latex and "Uformer-nano &" in latex
    assert "<b>" not in html and "&lt;b&gt;" in html


def test_leaderboard_command_options(grid, tmp_path):
    out = tmp_path / "t.tex"
    result = invoke("leaderboard", grid, "--format", "latex", "--names", "display", "--label", "tab:robustness",
                    "--caption", "Robustness.", "-o", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert r"\label{tab:robustness}" in text and r"\caption{Robustness.}" in text and "PGD" in text
    default = invoke("leaderboard", grid, "--format", "latex", "-o", tmp_path / "d.tex")
    assert default.exit_code == 0 and r"\label{tab:udcbench-psnr_gt}" in (tmp_path / "d.tex").read_text()
    assert "model & defense" in (tmp_path / "d.tex").read_text()
    md = invoke("leaderboard", grid, "--names", "display")  # a names option alone makes the pivot table
    assert md.exit_code == 0 and md.stdout.startswith("Table: ") and (grid / "table-psnr_gt.md").is_file()
    assert one_error_line(invoke("leaderboard", grid, "--label", "tab:x"), "--format latex only")
    assert one_error_line(invoke("leaderboard", grid, "-f", "latex", "--label", "tab:{x}"), "a LaTeX label takes")
    assert one_error_line(invoke("leaderboard", grid, "-f", "csv", "--caption", "c"), "has no caption")
    assert one_error_line(invoke("leaderboard", grid, "--names", tmp_path / "no.yaml"), "no such file")


def test_misspelt_dimensions_and_metrics_get_a_suggestion(grid, tmp_path):
    rows = invoke("leaderboard", grid, "--rows", "modle")
    assert one_error_line(rows, "--rows modle: unknown dimension 'modle' (did you mean 'model'?); dimensions: model, "
                          "weights, defense")
    assert one_error_line(invoke("leaderboard", grid, "--cols", "atack,eps"),
                          "unknown dimension 'atack' (did you mean 'attack'?)")
    assert one_error_line(invoke("leaderboard", grid, "--where", "defence=none"),
                          "--where 'defence=none': unknown dimension 'defence' (did you mean 'defense'?); dimensions:")
    assert one_error_line(invoke("leaderboard", grid, "--metric", "psnr_g"),
                          "unknown metric 'psnr_g' (did you mean 'psnr_gt'?); use one of psnr_gt")
    assert one_error_line(invoke("leaderboard", grid, "--rows", "zzzz"), "unknown dimension 'zzzz'; dimensions:")
    plot = invoke("plot", grid, "--metric", "ssim_g", "-o", tmp_path / "figures")
    assert one_error_line(plot, "unknown metric 'ssim_g' (did you mean 'ssim_gt'?)")
    assert not (tmp_path / "figures").exists()
