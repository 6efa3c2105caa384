"""Certified PSNR columns (smooth defense, --radius) in leaderboards, pivot tables, plots and `check`, on synthetic
rows: model-a under defense none (no certificate) and two smooth defenses certified at r = 0.1 and 0.25, pgd at
2/255 and 8/255, 3 images.

A certificate does not depend on the attack: cpsnr_r<R>_cert_gt of an image is CERTIFIED[sigma] - 10·R plus the
image's offset (-1, 0, +1), the same in both pgd runs; cpsnr_r<R>_cert_clean is 2 dB higher.
"""

import json
import re

import pytest
from PIL import Image
from report_helpers import OFFSETS, fast_store, grid_rows, make_row, psnr_mean
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.defenses.base import defense_label
from udcbench.errors import DataError, SpecError, UnknownNameError
from udcbench.report import check, leaderboard, plots, tables

RADII = {0.1: "cpsnr_r0p1", 0.25: "cpsnr_r0p25"}
CERTIFIED = {0.25: 24.0, 0.5: 22.0}  # sigma -> certified PSNR vs ground truth at r = 0 (before the offsets)
SPECS = {0.25: "smooth:sigma=0.25", 0.5: "smooth:sigma=0.5"}
runner = CliRunner()


def params(sigma, n=100, alpha=0.001):
    return json.dumps([{"component": "smooth", "sigma": sigma, "n": n, "alpha": alpha, "denoise": "none"}])


def label(sigma, n=100, alpha=0.001):
    return defense_label(SPECS[sigma], params(sigma, n, alpha))


def certified_row(defense, eps, index, sigma=None, n=100, alpha=0.001, certify=True):
    row = make_row("model-a", defense, "pgd", eps, index, run_hash=f"{defense}-{eps}")
    if sigma is not None:
        row["defense_params"] = params(sigma, n, alpha)
    for radius, prefix in RADII.items():
        value = CERTIFIED[sigma] - 10 * radius + OFFSETS[index] if sigma is not None and certify else None
        row[f"{prefix}_cert_gt"] = value
        row[f"{prefix}_cert_clean"] = None if value is None else value + 2.0
    return row


def write_certified(folder, alphas=(0.001, 0.001)):
    """The folder of the module docstring; `alphas`: the smoothing α of the two smooth defenses."""
    folder.mkdir(parents=True, exist_ok=True)
    store = fast_store(folder / "results.db")
    for eps in (2 / 255, 8 / 255):
        for index in range(3):
            store.add(certified_row("none", eps, index))
            for sigma, alpha in zip(SPECS, alphas):
                store.add(certified_row(SPECS[sigma], eps, index, sigma, alpha=alpha))
    store.close()
    return folder


@pytest.fixture
def certified(tmp_path):
    return write_certified(tmp_path / "certified")


def without_certificates(rows):
    return rows.drop(columns=[c for c in rows.columns if c.startswith("cpsnr_")])


def test_leaderboard_shows_certified_after_attacked_psnr_with_the_note(certified):
    table = leaderboard.summarise(grid_rows(certified))
    columns = list(table.columns)
    at = columns.index("psnr_adv_gt")
    assert columns[at:at + 4] == ["psnr_adv_gt", "cpsnr_r0p1_cert_gt", "cpsnr_r0p25_cert_gt", "ssim_adv_gt"]
    at = columns.index("psnr_adv_clean")
    assert columns[at:at + 3] == ["psnr_adv_clean", "cpsnr_r0p1_cert_clean", "cpsnr_r0p25_cert_clean"]
    smooth = table[table["defense"] == label(0.25)]
    assert list(smooth["cpsnr_r0p25_cert_gt"]) == [21.5, 21.5] and list(smooth["cpsnr_r0p1_cert_clean"]) == [25.0] * 2
    assert table.loc[table["defense"] == "none", "cpsnr_r0p1_cert_gt"].isna().all()
    text = leaderboard.to_markdown(table)
    note, _, header, _, *body = text.splitlines()
    headers = [cell.strip() for cell in header.split("|")]
    at = headers.index("attacked PSNR")
    assert headers[at:at + 4] == ["attacked PSNR", "certified PSNR (r=0.1)", "certified PSNR (r=0.25)", "attacked SSIM"]
    at = headers.index("attacked PSNR vs clean out")
    assert headers[at + 1:at + 3] == ["certified PSNR (r=0.1) vs smoothed clean out",
                                      "certified PSNR (r=0.25) vs smoothed clean out"]
    assert ("Certified PSNR (r) is a lower bound on the PSNR vs ground truth of the median-smoothed output for "
            "every L2 perturbation ‖δ‖₂ ≤ r of the clean input, holding with confidence 1 − α jointly over all "
            "pixels") in note
    assert note.endswith("smoothing n = 100 noise samples, confidence 1 − α = 0.999.")
    rows = [[cell.strip() for cell in line.split("|")] for line in body]
    first = headers.index("certified PSNR (r=0.1)")
    assert [row[first:first + 2] for row in rows if row[headers.index("defense")] == "none"] == [["-", "-"]] * 2
    assert [row[first:first + 2] for row in rows][-1] == ["21.00", "19.50"]  # smooth σ 0.5 at 8/255
    assert "cpsnr_r0p1_cert_gt" in leaderboard.to_csv(table).splitlines()[0]


def test_the_note_lists_smoothings_that_differ(tmp_path):
    rows = grid_rows(write_certified(tmp_path / "c", alphas=(0.001, 0.01)))
    note = leaderboard.to_markdown(leaderboard.summarise(rows)).splitlines()[0]
    assert note.endswith(f"; smoothing differs between rows: n = 100 noise samples, confidence 1 − α = 0.999 "
                         f"({label(0.25)}); n = 100 noise samples, confidence 1 − α = 0.99 ({label(0.5, alpha=0.01)}).")


def test_without_certified_values_leaderboard_and_tables_are_unchanged(certified, tmp_path):
    rows = grid_rows(certified)
    plain = without_certificates(rows)
    empty = rows.assign(**{c: None for c in rows.columns if c.startswith("cpsnr_")})  # columns, no values
    for other in (empty, plain[plain["defense"] == "none"]):
        base = plain if other is empty else plain[plain["defense"] == "none"]
        assert leaderboard.to_markdown(leaderboard.summarise(other)) == leaderboard.to_markdown(
            leaderboard.summarise(base))
        assert leaderboard.to_csv(leaderboard.summarise(other)) == leaderboard.to_csv(leaderboard.summarise(base))
    expected = tables.pivot(plain, None, None)
    for table in (tables.pivot(empty, None, None), tables.pivot(rows, None, None, where=["bound=attacked"])):
        assert table == expected and tables.to_markdown(table) == tables.to_markdown(expected)
    assert tables.pivot(rows, None, None, "ssim_gt") == tables.pivot(plain, None, None, "ssim_gt")


def test_pivot_of_a_certified_metric_states_radius_n_and_confidence(certified):
    rows = grid_rows(certified)
    table = tables.pivot(rows, None, None, "cert@0.25")
    assert table.metric == "cpsnr_r0p25_cert_gt" and table.name == "cert@0.25" and table.digits == 2
    assert table.row_keys == (("model-a", label(0.25)), ("model-a", label(0.5)))  # no certificate: no row
    assert table.text(("model-a", label(0.5)), ("pgd", "8/255")) == "19.50 ± 1.00"
    assert table.caption.startswith("Certified PSNR (dB) at L2 radius r = 0.25: a lower bound on the PSNR vs ground "
                                    "truth of the median-smoothed output for every L2 perturbation ‖δ‖₂ ≤ 0.25 of "
                                    "the clean input, holding with confidence 1 − α jointly over all pixels "
                                    "(smoothing n = 100 noise samples, confidence 1 − α = 0.999), mean ± std over 3 "
                                    "images;")
    assert "defended output" not in table.caption and "higher is better" in table.caption
    latex = tables.to_latex(table)  # ‖δ‖₂ ≤ r and 1 − α typeset by pdflatex without unicode setup
    assert latex.isascii() and r"$\|$$\delta$$\|$$_2$ $\leq$ 0.25" in latex and r"1 $-$ $\alpha$ = 0.999" in latex
    assert tables.pivot(rows, None, None, "cpsnr_r0p25_gt").cells == table.cells  # the psnr_gt naming scheme
    assert tables.pivot(rows, None, None, "cpsnr_r0p25_cert_gt").cells == table.cells
    clean = tables.pivot(rows, None, None, "cert_clean@0.1")
    assert clean.metric == "cpsnr_r0p1_cert_clean" and "PSNR vs the smoothed clean output" in clean.caption
    with pytest.raises(SpecError, match=r"no stored row has certified PSNR at r = 0.3 \(cpsnr_r0p3_cert_gt; radii "
                       r"here: 0.1, 0.25\); run with --defense smooth:… --radius 0.3"):
        tables.pivot(rows, None, None, "cert@0.3")
    with pytest.raises(UnknownNameError, match="cert@0.1, cpsnr_r0p1_gt"):
        tables.pivot(rows, None, None, "cert@")


def test_attacked_psnr_gets_certified_columns_beside_it(certified):
    table = tables.pivot(grid_rows(certified), None, None)
    assert table.cols_by == ("attack", "eps", "bound")
    assert table.col_keys[:3] == (("pgd", "2/255", "attacked"), ("pgd", "2/255", "cert@0.1"),
                                  ("pgd", "2/255", "cert@0.25"))
    smooth = ("model-a", label(0.25))
    attacked = psnr_mean("model-a", SPECS[0.25], "pgd", 8 / 255)
    assert table.text(smooth, ("pgd", "8/255", "attacked")) == f"{attacked:.2f} ± 1.00"
    assert table.text(smooth, ("pgd", "8/255", "cert@0.1")) == "23.00 ± 1.00"
    assert table.text(("model-a", "none"), ("pgd", "8/255", "cert@0.1")) is None  # '-' in the table
    assert ("cert@r: certified PSNR at L2 radius r, a lower bound on the PSNR vs ground truth of the median-smoothed"
            in table.caption)
    assert "next to what the attack reached (attacked); smoothing n = 100 noise samples" in table.caption
    text = tables.to_markdown(table)
    assert "pgd 8/255 cert@0.25" in text.splitlines()[2] and re.search(r"\| +- +\|", text)
    assert r"\multicolumn{3}{c}{2/255}" in tables.to_latex(table)
    beside = tables.pivot(grid_rows(certified), ["model", "defense"], ["bound"], where=["eps=8/255"])
    assert [key[0] for key in beside.col_keys] == ["attacked", "cert@0.1", "cert@0.25"]
    vs_clean = tables.pivot(grid_rows(certified), None, None, "psnr_clean_out")
    assert vs_clean.text(smooth, ("pgd", "8/255", "cert@0.1")) == "25.00 ± 1.00"


def test_certified_curves_start_at_the_smoothed_clean_psnr(certified):
    curves = plots.certified_curves(grid_rows(certified))
    assert [c.label for c in curves] == [f"model-a · {label(0.25)}", f"model-a · {label(0.5)}"]
    first = curves[0]
    assert first.xs == pytest.approx((0.0, 0.1, 0.25))
    assert first.means == pytest.approx((32.0, 23.0, 21.5))  # clean PSNR, then certified (each image once)
    assert first.stds == pytest.approx((1.0, 1.0, 1.0))
    assert curves[1].means[1:] == pytest.approx((21.0, 19.5)) and curves[0].colour != curves[1].colour
    with pytest.raises(DataError, match=r"run with --defense smooth:… --radius 0.1,0.25"):
        plots.certified_curves(without_certificates(grid_rows(certified)))


def test_certified_vs_radius_is_a_deterministic_png(certified, tmp_path):
    rows = grid_rows(certified)
    first = plots.certified_vs_radius(rows, tmp_path / "a.png")
    assert first.read_bytes() == plots.certified_vs_radius(rows, tmp_path / "b.png").read_bytes()
    with Image.open(first) as image:
        assert image.format == "PNG" and image.size == (600, 460)
    differing = grid_rows(write_certified(tmp_path / "d", alphas=(0.001, 0.01)))
    assert plots.certified_curves(differing)[1].label == f"model-a · {label(0.5, alpha=0.01)} (n = 100, 1 − α = 0.99)"
    assert plots.certified_vs_radius(differing, tmp_path / "c.png").read_bytes() != first.read_bytes()


def test_plot_kind_certified_writes_one_figure_or_refuses(certified, grid, tmp_path):
    out = tmp_path / "figures"
    result = runner.invoke(app, ["plot", str(certified), "--kind", "certified", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == ["certified_vs_radius.png"]
    assert result.output.strip() == f"wrote {out / 'certified_vs_radius.png'}"
    nothing = tmp_path / "nothing"
    refused = runner.invoke(app, ["plot", str(grid), "--kind", "certified", "--out", str(nothing)])
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert refused.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: no stored row has certified")
    assert "--defense smooth:… --radius 0.1,0.25" in lines[0] and not nothing.exists()
    assert not list(grid.glob("*.png"))
    mixed = runner.invoke(app, ["plot", str(certified), "--kind", "certified", "--image", "img0"])
    assert mixed.exit_code == 2 and "--image applies only to --kind eps" in mixed.output


def test_leaderboard_command_tabulates_a_certified_metric(certified):
    result = runner.invoke(app, ["leaderboard", str(certified), "--metric", "cert@0.1", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert (certified / "table-cert@0.1.csv").read_text() == result.stdout
    refused = runner.invoke(app, ["leaderboard", str(certified), "--metric", "cert@1", "--format", "latex"])
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert refused.exit_code == 2 and lines == ["error: no stored row has certified PSNR at r = 1 (cpsnr_r1_cert_gt; "
                                                "radii here: 0.1, 0.25); run with --defense smooth:… --radius 1 to "
                                                "certify it, or pick a stored radius"]
    assert result.stdout.splitlines()[0] == "model,defense,pgd 2/255 mean,pgd 2/255 std,pgd 8/255 mean," \
                                            "pgd 8/255 std,threat,seed"


def shift(column, amount):
    def edit(table):
        where = (table["defense"] == label(0.5)) & (table["eps"] == "8/255")
        table.loc[where, column] = table.loc[where, column] + amount
        return table
    return edit


def baseline(folder, path, edit=None):
    table = leaderboard.summarise(grid_rows(folder))
    path.write_text(leaderboard.to_csv(edit(table) if edit else table))
    return path


def test_check_compares_certified_columns_at_their_registered_tolerance(certified, tmp_path):
    same = check.check(certified, baseline(certified, tmp_path / "same.csv"))
    assert same.passed and same.metrics == 11  # 7 as in test_check (LPIPS included), 4 certified
    assert "±0.05 certified PSNR (r=0.1) / ±0.05 certified PSNR (r=0.25) of" in same.summary()
    at = check.check(certified, baseline(certified, tmp_path / "at.csv", shift("cpsnr_r0p25_cert_gt", 0.05)))
    assert at.passed
    moved = check.check(certified, baseline(certified, tmp_path / "moved.csv", shift("cpsnr_r0p25_cert_gt", 0.2)))
    assert not moved.passed and [f.metric for f in moved.failures] == ["cpsnr_r0p25_cert_gt"]
    assert moved.failures[0].describe().endswith(
        "cpsnr_r0p25_cert_gt (certified PSNR (r=0.25)) 19.70 → 19.50 (-0.20 dB, lower: worse; tolerance ±0.05 dB)")
    assert not check.check(certified, tmp_path / "moved.csv", tolerance=0.5).passed  # plain PSNR columns only
    for name, first in (("certified-psnr", "±0.2"), ("certified-psnr@0.25", "±0.05")):  # every radius, one
        loose = runner.invoke(app, ["check", str(certified), "--baseline", str(tmp_path / "moved.csv"),
                                    "--metric-tolerance", f"{name}=0.2"])
        assert loose.exit_code == 0, loose.output
        assert f"{first} certified PSNR (r=0.1) / ±0.2 certified PSNR (r=0.25) of" in loose.output
    tight = runner.invoke(app, ["check", str(certified), "--baseline", str(tmp_path / "moved.csv"),
                                "--metric-tolerance", "certified-psnr@0.1=0.2"])
    assert tight.exit_code == 1 and tight.output.startswith("FAIL model-a · smooth")
    current = leaderboard.summarise(grid_rows(certified))
    current.loc[current["defense"] == label(0.5), "cpsnr_r0p1_cert_gt"] = float("nan")
    vanished = check.compare(current, check.read_baseline(tmp_path / "same.csv"))
    assert [f.metric for f in vanished.failures] == ["cpsnr_r0p1_cert_gt"] * 2
    assert "19.50 → no value (a value appeared or vanished)" not in vanished.failures[0].describe()
    assert "21.00 → no value (a value appeared or vanished)" in vanished.failures[0].describe()
