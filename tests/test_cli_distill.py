"""`udcbench distill` end to end, its refusals (exit 2, one `error:` line, nothing written), and the transfer
attack from a distilled surrogate file."""

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from udcbench.attacks import make_attack
from udcbench.cli import app
from udcbench.errors import SpecError
from udcbench.models import WEIGHTS_DIR
from udcbench.models.distill import SURROGATE_FILE, save_canonical, surrogate_info
from udcbench.runner.prepare import prepare
from udcbench.spec import AttackSpec, DataSpec, RunSpec

runner = CliRunner()
TINY = ["--target", "nafnet-nano", "--queries", "5", "--crop", "32", "--steps", "2", "--batch-size", "2",
        "--eval-limit", "1"]
BUNDLED = WEIGHTS_DIR / SURROGATE_FILE


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, message):
    lines = [line for line in result.output.splitlines() if line.strip()]
    return result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_distill_writes_a_surrogate_file(tmp_path):
    out = tmp_path / "deep" / "s.safetensors"
    result = invoke("distill", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    assert "saved" in result.output and "from 5 queries" in result.output and "query 5/5" in result.output
    header = surrogate_info(out)
    assert header["queries"] == "5" and header["eval_queries"] == "1" and header["target"] == "nafnet-nano"


@pytest.mark.parametrize("change, message", [
    ({"--queries": "0"}, "--queries must be a positive"),
    ({"--queries": "-5"}, "--queries must be a positive"),
    ({"--arch": "nosuch"}, "unknown model 'nosuch'"),
    ({"--target": "nosuch"}, "unknown model 'nosuch'"),
    ({"--out": "{tmp}"}, "is a folder"),
    ({"--out": "{tmp}/a-file.txt/s.safetensors"}, "is a file, not a folder"),
    ({"--out": "{tmp}/s.pth"}, "must end in .safetensors"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, change, message):
    (tmp_path / "a-file.txt").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    args = dict(zip(TINY[::2], TINY[1::2]), **{"--out": str(tmp_path / "new" / "s.safetensors")})
    args.update({key: value.format(tmp=tmp_path) for key, value in change.items()})
    result = invoke("distill", *[item for pair in args.items() for item in pair])
    assert one_error_line(result, message), result.output
    assert sorted(tmp_path.rglob("*")) == before


def test_transfer_from_a_surrogate_file_runs_and_its_digest_enters_the_run_hash(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", "--model", "uformer", "--attack", "transfer", "--surrogate", BUNDLED, "--limit", "1",
                    "--steps", "1", "--out", out)
    assert result.exit_code == 0, result.output
    assert "surrogate=nafnet-nano" in result.output and (out / "results.db").exists()
    copy = tmp_path / "s.safetensors"
    copy.write_bytes(BUNDLED.read_bytes())
    spec = RunSpec(attack=AttackSpec.of("transfer", surrogate=str(copy), steps=1), data=DataSpec(limit=1))
    first = prepare(spec).run_hash
    state = {key: value + 1e-3 if value.is_floating_point() else value for key, value in load_file(str(copy)).items()}
    save_canonical(state, copy, surrogate_info(copy))  # same path, other weights
    assert prepare(spec).run_hash != first


def test_transfer_refuses_a_wrong_kind_file_before_writing(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", "--model", "uformer", "--attack", "transfer", "--surrogate",
                    WEIGHTS_DIR / "nafnet-nano.safetensors", "--limit", "1", "--out", out)
    assert one_error_line(result, "plain model checkpoint"), result.output
    assert not out.exists()
    with pytest.raises(SpecError, match="drop surrogate_weights"):
        make_attack("transfer", surrogate=str(BUNDLED), surrogate_weights=str(BUNDLED))
    attack = make_attack("transfer", surrogate=str(BUNDLED))
    assert attack.params["surrogate"] == "nafnet-nano" and attack.params["surrogate_weights"] == str(BUNDLED)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert attack.surrogate(image).shape == image.shape
