import numpy as np
import pytest
import torch
from report_helpers import grid_rows, write_grid
from PIL import Image

from udcbench.errors import DataError, SpecError
from udcbench.report import plots

H, W = 16, 24


def test_eps_curves_start_at_the_clean_psnr_and_use_1_over_255_units(grid):
    curves = plots.eps_curves(grid_rows(grid))
    assert list(curves) == [("pgd", "linf")]  # cw has no eps budget
    lines = curves[("pgd", "linf")]
    assert [c.label for c in lines] == ["model-a · none · gray-box", "model-a · jpeg:75 · gray-box",
                                        "model-b · none · gray-box", "model-b · jpeg:75 · gray-box"]
    first = lines[0]
    assert first.xs == pytest.approx((0.0, 2.0, 8.0))
    assert first.means == pytest.approx((32.0, 28.0, 22.0))  # clean PSNR at eps 0, then attacked
    assert first.stds == pytest.approx((1.0, 1.0, 1.0))
    assert len({c.colour for c in lines}) == 4


def test_psnr_vs_eps_is_a_deterministic_png(grid, tmp_path):
    rows = grid_rows(grid)
    first = plots.psnr_vs_eps(rows, tmp_path / "a.png")
    second = plots.psnr_vs_eps(rows, tmp_path / "b.png")
    assert first.read_bytes() == second.read_bytes()
    with Image.open(first) as image:
        assert image.format == "PNG" and image.size == (600, 460)
    assert plots.psnr_vs_eps(rows, tmp_path / "c.png", "ssim_gt").read_bytes() != first.read_bytes()
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_psnr_vs_eps_without_any_budget_is_a_data_error(grid, tmp_path):
    rows = grid_rows(grid)
    with pytest.raises(DataError, match="eps budget"):
        plots.psnr_vs_eps(rows[rows["attack"] == "cw"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def panel(seed, delta, label="run", eps=8 / 255):
    generator = torch.Generator().manual_seed(seed)
    gt = torch.rand(1, 3, H, W, generator=generator)
    degraded = 0.25 + 0.5 * gt
    return {"degraded": degraded, "adversarial": degraded + delta, "restored": gt * 0.9, "restored_adv": gt * 0.5,
            "defended_adv": gt * 0.8, "gt": gt, "eps": eps, "label": label}


def tile(png, layout, row, column):
    top, left, bottom, right = layout.tile_box(row, column)
    return png[top:bottom, left:right, :3].astype(int)


def test_image_grid_places_every_image_and_amplifies_delta(tmp_path):
    delta = torch.zeros(1, 3, H, W)
    delta[..., : W // 2] = 4 / 255  # + on the left half, - on the right half
    delta[..., W // 2:] = -4 / 255
    panels = [panel(0, delta, "model · none"), panel(1, delta / 2, "model · jpeg:75", eps=None)]
    layout = plots.image_grid(panels, tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as image:
        assert image.format == "PNG" and image.size == (layout.width, layout.height)
        png = np.asarray(image.convert("RGB"))
    assert (layout.rows, layout.columns) == (2, 7) and layout.scale == 6  # 16×24 enlarged to at least 128 px
    assert (layout.tile_height, layout.tile_width) == (H * 6, W * 6)
    gt = panels[1]["gt"][0].permute(1, 2, 0).numpy()
    expected = np.round(np.repeat(np.repeat(gt, 6, 0), 6, 1) * 255).astype(int)
    assert np.abs(tile(png, layout, 1, 5) - expected).max() <= 1  # row 2, column 'ground truth'
    assert not np.array_equal(tile(png, layout, 1, 4), tile(png, layout, 1, 5))
    # one amplification for all rows: 0.5 / max|δ|, so row 1 reaches white / black and row 2 half of that
    assert layout.amplification == pytest.approx(0.5 / (4 / 255), rel=1e-5)  # float32 inputs
    first, second = tile(png, layout, 0, 6), tile(png, layout, 1, 6)
    assert first[:, : layout.tile_width // 2].min() >= 254 and first[:, layout.tile_width // 2:].max() <= 1
    assert np.abs(second[:, : layout.tile_width // 2] - 191).max() <= 1  # 0.5 + 0.25 -> 191
    assert np.abs(second[:, layout.tile_width // 2:] - 64).max() <= 1


def test_image_grid_rejects_bad_panels(tmp_path):
    good = panel(0, torch.zeros(1, 3, H, W))
    with pytest.raises(SpecError, match="lacks defended_adv"):
        plots.image_grid([{k: v for k, v in good.items() if k != "defended_adv"}], tmp_path / "g.png")
    small = dict(good, gt=torch.zeros(1, 3, 8, 8))
    with pytest.raises(SpecError, match="another size"):
        plots.image_grid([small], tmp_path / "g.png")
    with pytest.raises(SpecError, match="at least one panel"):
        plots.image_grid([], tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()


def test_runs_are_chosen_at_the_largest_eps_one_per_defense_first(tmp_path):
    rows = grid_rows(write_grid(tmp_path / "g"))
    table = plots.runs_table(rows).set_index("run_hash")
    chosen = plots.choose_runs(rows)
    assert len(chosen) == 4 and set(table.loc[chosen, "eps"]) == {"8/255"}
    assert set(table.loc[chosen[:2], "defense"]) == {"none", "jpeg:75"}
    assert set(table.loc[plots.choose_runs(rows, limit=2), "defense"]) == {"none", "jpeg:75"}
    cw = next(h for h in table.index if h.startswith("model-b-none-cw"))
    assert plots.choose_runs(rows, ["model-b-none-cw"]) == [cw]  # a unique prefix
    with pytest.raises(SpecError, match="no run matches --run nosuch; runs in this folder: model-a"):
        plots.choose_runs(rows, ["nosuch"])
    with pytest.raises(SpecError, match="more than one"):
        plots.choose_runs(rows, ["model-a"])
    assert plots.choose_image(rows, chosen) == "img0"
    assert plots.choose_image(rows, chosen, "img2") == "img2"
    with pytest.raises(SpecError, match="available: img0, img1, img2"):
        plots.choose_image(rows, chosen, "img9")
