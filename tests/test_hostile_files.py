"""Hostile and broken files (issue 15). Every kind of file udcbench reads — checkpoints for --weights and
`udcbench load`, diffusers and ADM priors, ft:FILE, distilled surrogates, LPIPS weights, suite YAML — is written
here carrying a payload that would create a marker file if it were ever unpickled (or constructed); the CLI must
refuse each with exactly one `error:` line and exit code 2, print no traceback and no warning, write nothing to
--out, and leave no marker. Broken files (empty, truncated, garbage, NaN weights, misnamed safetensors) get one
line too."""

import os
import pathlib
import pickle
import re
import warnings

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.models import bundled_weights
from udcbench.models.checkpoints import read_state_dict

FAST = ["--limit", "1", "--steps", "1"]
PICKLED = r"refusing .*: it carries pickled code.*; udcbench never runs code from files"


class Touch:
    """Unpickling this creates `marker` (what a hostile checkpoint would do with os.system, harmlessly)."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


class System:
    """The classic payload: os.system runs a shell command while the file is unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def state(name="uformer-nano"):
    return read_state_dict(bundled_weights(name))[0]


def hostile_torch_file(path, marker, payload=Touch):
    """A real state dict with a payload beside it, saved as torch.save saves everything."""
    torch.save({"params_ema": state(), "hook": payload(marker)}, path)
    return path


def hostile_diffusers_dir(root, marker):
    """A tiny diffusers UNet2DModel + DDPMScheduler folder whose diffusion_pytorch_model.bin carries the payload."""
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    unet.save_pretrained(root / "unet", safe_serialization=False)
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    weights = root / "unet" / "diffusion_pytorch_model.bin"
    torch.save({**unet.state_dict(), "hook": Touch(marker)}, weights)
    return root


def invoke(args, env=None):
    """The CLI as a user runs it, with every warning recorded (pytest would otherwise swallow them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    shown = [w for w in caught if issubclass(w.category, (UserWarning, FutureWarning))]
    return result, shown


def assert_one_line_refusal(result, shown, pattern, out=None):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert result.exc_info[0] is SystemExit and "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert re.search(pattern, lines[0]), lines[0]
    assert not shown, [str(w.message)[:200] for w in shown]
    if out is not None:
        assert not out.exists(), f"{out} was written before the refusal"
    return lines[0]


# --- every loadable kind, carrying a payload ----------------------------------------------------------------------

def weights(suffix, command="run", payload=Touch):
    def case(tmp, marker, out):
        path = hostile_torch_file(tmp / f"evil{suffix}", marker, payload)
        if command == "load":
            return ["load", "uformer-nano", "--weights", path], {}
        return ["run", "--model", "uformer-nano", "--weights", path, *FAST, "--out", out], {}
    return case


def diffusers_prior(tmp, marker, out):
    pytest.importorskip("diffusers")
    folder = hostile_diffusers_dir(tmp / "ddpm", marker)
    return ["run", "--model", "uformer-nano", "--defense", f"purify:prior={folder},steps=1", *FAST, "--out", out], {}


def adm_prior(tmp, marker, out):
    path = tmp / "256x256_diffusion_uncond.pt"
    torch.save({"time_embed.0.weight": torch.zeros(2), "hook": Touch(marker)}, path)
    return ["run", "--model", "uformer-nano", "--defense", f"purify:prior={path},config=adm-256-uncond", *FAST,
            "--out", out], {}


def ft_weights(tmp, marker, out):
    path = hostile_torch_file(tmp / "uformer-nano-ft.pth", marker)
    return ["run", "--model", "uformer-nano", "--defense", f"ft:{path}", *FAST, "--out", out], {}


def surrogate(suffix):
    def case(tmp, marker, out):
        path = hostile_torch_file(tmp / f"surrogate{suffix}", marker)
        return ["run", "--model", "uformer-nano", "--attack", "transfer", "--surrogate", path, *FAST, "--out", out], {}
    return case


def lpips_backbone(tmp, marker, out):
    from lpips_files import BACKBONE_FILES, official_backbone, write_weights

    folder = write_weights(tmp / "lpips", "alex")
    torch.save({**official_backbone("alex", 0), "hook": Touch(marker)}, folder / BACKBONE_FILES["alex"])
    return (["run", "--model", "uformer-nano", "--metrics", "lpips-alex", *FAST, "--out", out],
            {"UDCBENCH_LPIPS_DIR": str(folder)})


def suite_yaml(tmp, marker, out):
    path = tmp / "evil.yaml"
    path.write_text(f"models: [uformer-nano]\nattacks: [pgd]\n"
                    f"seeds: !!python/object/apply:os.system [\"touch '{marker}'\"]\n")
    return ["run", "--suite", path, "--limit", "1", "--out", out], {}


# each case: (build, what its one line says besides PICKLED, or the whole of what it says for the suite)
CASES = {
    "run --weights .pth": (weights(".pth"), r"\(GLOBAL getattr\)"),
    "run --weights .pth (os.system)": (weights(".pth", payload=System), r"\(GLOBAL posix\.system\)"),
    "run --weights .pt": (weights(".pt"), r"evil\.pt:"),
    "run --weights .bin": (weights(".bin"), r"evil\.bin:"),
    "run --weights .ckpt": (weights(".ckpt"), r"evil\.ckpt:"),
    "run --weights .safetensors (a pickle)": (weights(".safetensors"), r"evil\.safetensors:"),
    "load --weights .pth": (weights(".pth", "load"), r"evil\.pth:"),
    "load --weights .pt": (weights(".pt", "load"), r"evil\.pt:"),
    "purify:prior=DIR (diffusers .bin)": (diffusers_prior, r"refusing \S+/unet/diffusion_pytorch_model\.bin:"),
    "purify:prior=FILE.pt,config=": (adm_prior, r"256x256_diffusion_uncond\.pt:"),
    "ft:FILE": (ft_weights, r"uformer-nano-ft\.pth:"),
    "--surrogate FILE.pt": (surrogate(".pt"), r"surrogate\.pt:"),
    "--surrogate FILE.safetensors (a pickle)": (surrogate(".safetensors"), r"surrogate\.safetensors:"),
    "UDCBENCH_LPIPS_DIR backbone": (lpips_backbone, r"^error: LPIPS \(alex\) backbone: refusing \S+/alexnet-owt"),
    "--suite with a python tag": (suite_yaml, r"evil\.yaml:3: .*python/object/apply:os\.system"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_files_are_refused_in_one_line_and_never_run(tmp_path, monkeypatch, case):
    from udcbench.metrics import lpips as lpips_module

    monkeypatch.setattr(lpips_module, "_CACHE", {})
    build, pattern = CASES[case]
    marker, out = tmp_path / "MARKER", tmp_path / "out"
    args, env = build(tmp_path, marker, out)
    result, shown = invoke(args, env)
    assert not marker.exists(), "the payload ran"
    line = assert_one_line_refusal(result, shown, pattern, out)
    if "--suite" not in case:  # YAML has no pickles: the tag is named instead (runner/suite.py)
        assert re.search(PICKLED, line), line


def test_diffusers_folders_are_checked_by_udcbench_before_diffusers_reads_them(tmp_path, monkeypatch):
    """The refusal does not depend on the installed diffusers passing weights_only=True to torch.load."""
    diffusers = pytest.importorskip("diffusers")
    from udcbench.defenses.diffusion import load_prior
    from udcbench.errors import CheckpointError

    folder = hostile_diffusers_dir(tmp_path / "ddpm", tmp_path / "MARKER")

    def reached(*args, **kwargs):
        raise AssertionError("diffusers read the folder before udcbench checked it")

    monkeypatch.setattr(diffusers.UNet2DModel, "from_pretrained", reached)
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.bin: it carries pickled code"):
        load_prior(folder)
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("payload", [Touch, System])
def test_the_payloads_are_live(tmp_path, payload):
    """The files above are really hostile: plain unpickling runs the payload."""
    marker = tmp_path / "MARKER"
    pickle.loads(pickle.dumps(payload(marker)))
    assert marker.exists()


# --- broken files ---------------------------------------------------------------------------------------------------

def test_pickle_refusals_quote_a_clean_summary(tmp_path):
    path = hostile_torch_file(tmp_path / "evil.pth", tmp_path / "MARKER", System)
    result, shown = invoke(["load", "uformer-nano", "--weights", path])
    line = assert_one_line_refusal(result, shown, PICKLED)
    assert "(GLOBAL posix.system)" in line and "Weights only load failed" not in line
    assert "safetensors" in line  # the way out


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_safetensors_content_under_a_torch_name_loads(tmp_path, suffix):
    path = tmp_path / f"uformer-nano{suffix}"
    save_file(state(), str(path))
    result, _ = invoke(["load", "uformer-nano", "--weights", path])
    assert result.exit_code == 0, result.output
    assert "carries pickled code" not in result.output


def test_a_surrogate_in_safetensors_under_a_torch_name_says_rename(tmp_path):
    from udcbench.models.surrogates import bundled_surrogate

    path = tmp_path / "surrogate.pth"
    path.write_bytes(bundled_surrogate().read_bytes())
    result, shown = invoke(["run", "--model", "uformer-nano", "--attack", "transfer", "--surrogate", path, *FAST,
                            "--out", tmp_path / "out"])
    assert_one_line_refusal(result, shown, r"safetensors file named \.pth; rename it to surrogate\.safetensors",
                            tmp_path / "out")


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".safetensors"])
@pytest.mark.parametrize("command", ["run", "load"])
def test_empty_weights_files_are_one_line(tmp_path, suffix, command):
    path = tmp_path / f"w{suffix}"
    path.write_bytes(b"")
    out = tmp_path / "out"
    args = (["run", "--model", "uformer-nano", "--weights", path, *FAST, "--out", out] if command == "run"
            else ["load", "uformer-nano", "--weights", path])
    result, shown = invoke(args)
    assert_one_line_refusal(result, shown, r"is empty \(0 bytes\); re-download or re-export it", out)


@pytest.mark.parametrize("content", ["garbage", "truncated zip", "truncated safetensors", "truncated legacy"])
def test_garbage_and_truncated_weights_are_one_line(tmp_path, content):
    path = tmp_path / ("w.safetensors" if "safetensors" in content else "w.pth")
    if content == "garbage":
        path.write_bytes(b"not a checkpoint at all\n" * 10)
    elif content == "truncated safetensors":
        save_file(state(), str(path))
        path.write_bytes(path.read_bytes()[:5000])
    else:
        torch.save(state(), path, _use_new_zipfile_serialization=content == "truncated zip")
        path.write_bytes(path.read_bytes()[:5000])
    out = tmp_path / "out"
    result, shown = invoke(["run", "--model", "uformer-nano", "--weights", path, *FAST, "--out", out])
    assert_one_line_refusal(result, shown, r"cannot read .*(truncated|neither)", out)


def nan_weights(tmp_path):
    tensors = state()
    tensors["input_proj.proj.0.weight"][0, 0, 0, 0] = float("nan")
    tensors["output_proj.proj.0.bias"][0] = float("inf")
    path = tmp_path / "nan.safetensors"
    save_file(tensors, str(path))
    return path


def test_non_finite_weights_are_refused_by_run_and_load_alike(tmp_path):
    path, out = nan_weights(tmp_path), tmp_path / "out"
    ran, shown = invoke(["run", "--model", "uformer-nano", "--weights", path, *FAST, "--out", out])
    line = assert_one_line_refusal(ran, shown, r"non-finite", out)
    loaded, shown = invoke(["load", "uformer-nano", "--weights", path])
    assert assert_one_line_refusal(loaded, shown, r"non-finite") == line
    assert "input_proj.proj.0.weight" in line


def test_non_finite_ft_weights_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    result, shown = invoke(["run", "--model", "uformer-nano", "--defense", f"ft:{nan_weights(tmp_path)}", *FAST,
                            "--out", out])
    assert_one_line_refusal(result, shown, r"non-finite", out)


def test_ft_weights_of_another_model_are_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "nafnet.safetensors"
    save_file(state("nafnet-nano"), str(path))
    out = tmp_path / "out"
    result, shown = invoke(["run", "--model", "uformer-nano", "--defense", f"ft:{path}", *FAST, "--out", out])
    assert_one_line_refusal(result, shown, r"nafnet\.safetensors does not fit Uformer", out)
