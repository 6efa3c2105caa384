"""A defense defined in ONE file of another distribution (entry-point group `udcbench.defenses`) that has its
own setting, a network whose passes count, a calibration on the run's data and a report label: it runs end to
end with nothing added to the runner or the reports."""

import pytest
from plugin_helpers import install_plugin
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.registry import DEFENSES
from udcbench.runner.run import run_suite
from udcbench.spec import AttackSpec, DataSpec, DefenseSpec, ModelSpec, RunSpec

PLUGIN = '''"""denoise[:MIX]: a fixed 3×3 box-filter network, mixed with the input; `ready` measures the data's mean level."""
import torch

from udcbench.defenses.base import DefenseComponent, Setting
from udcbench.registry import register_defense


def mix_fraction(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


class Denoise(DefenseComponent):
    name = "denoise"
    settings = {"mix": Setting(0.5, mix_fraction, "a fraction in [0, 1]")}
    shorthand = "mix"

    def __init__(self, argument=None):
        super().__init__(argument)
        self.mix = self.configure(argument)["mix"]
        self.net = torch.nn.Conv2d(3, 3, 3, padding=1, padding_mode="replicate", groups=3, bias=False)
        torch.nn.init.constant_(self.net.weight, 1 / 9)
        self.level = None

    def networks(self):
        return [self.net]

    def ready(self, model, dataset, seed, device, defense):
        super().ready(model, dataset, seed, device, defense)
        self.level = round(float(dataset[0].degraded.mean()), 4)

    def transform(self, image, generator):
        with torch.no_grad():
            return ((1 - self.mix) * image + self.mix * self.net(image)).clamp(0, 1)

    def record(self, model_name):
        return {"mix": self.mix, "level": self.level}

    @classmethod
    def label(cls, argument, record):
        base = super().label(argument, record)
        return base if record is None else f"{base}(level={record['level']})"


register_defense("denoise", kind="transform", description="box-filter network mixed with the input")(Denoise)
'''


@pytest.fixture
def installed(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, DEFENSES, "udcbench_denoise", PLUGIN, "denoise")


def spec(defense):
    return RunSpec(model=ModelSpec("nafnet"), attack=AttackSpec.of("fgsm"), defense=DefenseSpec(defense),
                   data=DataSpec("udc-mini", limit=2))


def test_a_third_party_defense_runs_end_to_end(installed, tmp_path):
    result = CliRunner().invoke(app, ["run", "--model", "nafnet", "--attack", "fgsm", "--defense", "denoise:0.25",
                                      "--limit", "2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "denoise:0.25(level=" in board and "undefended" in board

    bare, blurred, defended = (run_suite([spec(d)]) for d in ("none", "blur:1", "denoise"))
    # as any transform, it adds the model's passes on the 2 defended clean and 2 defended attacked inputs; its
    # own network's passes on those 4 inputs are counted too (`networks`), and nothing else
    assert blurred.attrs["work"]["passes"] - bare.attrs["work"]["passes"] == 4
    assert defended.attrs["work"]["passes"] - blurred.attrs["work"]["passes"] == 4
    assert (defended["psnr_clean_gt"] != bare["psnr_clean_gt"]).all()
    assert defended["defense_params"].str.contains('"level"').all()


def test_its_settings_are_checked_like_every_defense(installed):
    with pytest.raises(Exception, match="defense 'denoise' has no setting.s. strength; its settings are mix=0.5"):
        run_suite([spec("denoise:strength=2")])
    with pytest.raises(Exception, match=r"denoise takes a fraction in \[0, 1\]"):
        run_suite([spec("denoise:3")])
