"""Figure layout: image_grid leaves out the defended column when no run has a defense (it would repeat f(y′)),
and the panels of psnr_vs_eps share one y range. Checked on the figure objects, not on pixels."""

import numpy as np
import pytest
import torch
from report_helpers import fast_store, make_row
from PIL import Image

from udcbench.report import plots

H, W = 8, 8
ALL = [key for key, _ in plots.PANEL_IMAGES]


def panel(seed, defense=None, same=False):
    generator = torch.Generator().manual_seed(seed)
    gt = torch.rand(1, 3, H, W, generator=generator)
    degraded = 0.25 + 0.5 * gt
    restored_adv = gt * 0.5
    found = {"degraded": degraded, "adversarial": degraded + 1 / 255, "restored": gt * 0.9,
             "restored_adv": restored_adv, "defended_adv": restored_adv.clone() if same else gt * 0.8, "gt": gt,
             "eps": 8 / 255, "label": f"run {seed}"}
    if defense is not None:
        found["defense"] = defense
    return found


def keys(panels):
    return [key for key, _ in plots.grid_columns(panels)]


def test_the_defended_column_is_left_out_only_when_no_run_has_a_defense():
    without = [key for key in ALL if key != "defended_adv"]
    assert keys([panel(0, "none"), panel(1, "none")]) == without
    assert keys([panel(0, "none"), panel(1, "jpeg:75")]) == ALL  # one defended run: the column stays
    assert keys([panel(0, "purify+ft")]) == ALL
    # panels that do not name their defense: undefended when the defended output is f(y′) itself
    assert keys([panel(0, same=True)]) == without
    assert keys([panel(0, same=True), panel(1)]) == ALL
    assert plots.grid_columns([])  # no panels: the full list (image_grid refuses them itself)


def test_image_grid_draws_the_columns_grid_columns_names(tmp_path):
    undefended = [panel(0, "none"), panel(1, "none")]
    narrow = plots.image_grid(undefended, tmp_path / "a.png")
    wide = plots.image_grid([panel(0, "none"), panel(1, "jpeg:75")], tmp_path / "b.png")
    assert narrow.keys == tuple(keys(undefended)) and "defended_adv" not in narrow.keys
    assert (narrow.columns, wide.columns) == (6, 7) and wide.keys == tuple(ALL)  # + the δ column
    assert wide.width - narrow.width == wide.tile_width + plots.GAP
    with Image.open(tmp_path / "a.png") as image:
        assert image.size == (narrow.width, narrow.height)
        png = np.asarray(image.convert("RGB")).astype(int)
    top, left, bottom, right = narrow.tile_box(1, narrow.keys.index("gt"))  # ground truth moved one column left
    gt = undefended[1]["gt"][0].permute(1, 2, 0).numpy()
    expected = np.round(np.repeat(np.repeat(gt, narrow.tile_height // H, 0), narrow.tile_width // W, 1) * 255)
    assert np.abs(png[top:bottom, left:right] - expected).max() <= 1


def test_psnr_vs_eps_panels_share_one_y_range(tmp_path):
    store = fast_store(tmp_path / "results.db")
    for index in range(3):  # pgd around 23-29 dB, fgsm around 5 dB: far apart, each autoscaled on its own
        for eps in (2 / 255, 8 / 255):
            store.add(make_row("model-a", "none", "pgd", eps, index))
        store.add(make_row("model-a", "none", "fgsm", 8 / 255, index, psnr_adv_clean=5.0 + index))
    rows = store.rows()
    curves = plots.eps_curves(rows, "psnr_clean_out")
    figure = plots.eps_figure(rows, "psnr_clean_out")
    axes = figure.get_axes()
    assert len(axes) == len(curves) == 2
    limits = {ax.get_ylim() for ax in axes}
    assert len(limits) == 1
    low, high = limits.pop()
    values = [m + s * sign for lines in curves.values() for c in lines for m, s in zip(c.means, c.stds)
              for sign in (-1, 1)]
    assert low <= min(values) < 8 and high >= max(values) > 22  # spans both panels' data
    single = plots.eps_figure(rows[rows["attack"] == "fgsm"], "psnr_clean_out").get_axes()[0].get_ylim()
    assert single[1] < 8  # alone, the fgsm panel would have autoscaled to its own data
    assert plots.psnr_vs_eps(rows, tmp_path / "eps.png", "psnr_clean_out").is_file()


@pytest.mark.parametrize("defense, shown", [("none", False), ("jpeg:75", True)])
def test_the_plot_command_passes_each_run_s_defense_to_the_grid(tmp_path, monkeypatch, defense, shown):
    from typer.testing import CliRunner

    from udcbench.cli import app, report

    (tmp_path / "run").mkdir()
    store = fast_store(tmp_path / "run" / "results.db")
    store.add(make_row("model-a", defense, "pgd", 8 / 255, 0))
    store.close()
    seen = []

    def replay(directory, run_hash, image):  # what udcbench.api.replay returns, without the model
        found = panel(0)
        del found["label"]
        return found

    monkeypatch.setattr(report, "_replay", lambda: replay)
    original = plots.image_grid
    monkeypatch.setattr(plots, "image_grid", lambda panels, path: seen.append(panels) or original(panels, path))
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert [p["defense"] for p in seen[0]] == [defense]
    assert ("defended_adv" in keys(seen[0])) is shown
