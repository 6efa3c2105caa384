"""The command line follows the ecosystem's conventions: `--version`, shell completion, one name for output
options (`--out/-o`), `check` without a relative default baseline, plain type labels and one example per
command in `--help`, and a one-sentence summary per command in `udcbench --help`."""

import re

import pytest
import typer.main
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.version import __version__

try:  # the Click that Typer builds its commands with
    from typer._click import Context
except ImportError:  # pragma: no cover
    from click import Context

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*m")
WIDTH = {"COLUMNS": "80", "TERMINAL_WIDTH": "80"}
# every command that writes files; each must take --out with the short -o
WRITERS = {"run", "train", "train-prior", "train-guide", "distill", "finetune", "synth", "psf", "plot", "leaderboard"}
# names an output option could be given instead of --out/-o
OUTPUT_NAMES = re.compile(r"^(-o|--(out|output|outdir|out-?dir|out-?file|output-?(dir|file|folder|path)|dest|"
                          r"destination|save|save-?(to|dir)|write-?to|target-?dir))$")
DEPRECATED = {("leaderboard", "--output")}  # hidden old names kept working
TYPE_LABEL = re.compile(r"<(bool|str|int|float|path|list\[|[a-z]+\|)")


def invoke(*args, env=None):
    result = runner.invoke(app, [str(arg) for arg in args], prog_name="udcbench", env=env)
    return result, ANSI.sub("", result.output)


def commands() -> dict:
    return typer.main.get_command(app).commands


def params(name: str) -> list:
    command = commands()[name]
    return command.get_params(Context(command, info_name=name))


def error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    return lines[0]


def test_version_prints_udcbench_torch_and_python_and_exits_0():
    result, output = invoke("--version")
    assert result.exit_code == 0, output
    assert re.fullmatch(r"udcbench \S+ \(torch \S+, Python \d+\.\d+\.\d+\S*\)\n", output), output
    assert output.startswith(f"udcbench {__version__} ")


def test_show_completion_prints_a_bash_script(monkeypatch):
    # the shell named on the command line, not detected (read when the command is built, before invoke's env)
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    result, output = invoke("--show-completion", "bash")
    assert result.exit_code == 0, output
    assert "_udcbench_completion()" in output and "_UDCBENCH_COMPLETE=complete_bash" in output
    assert "complete -o default -F _udcbench_completion udcbench" in output


@pytest.mark.parametrize("words, cword, present, absent", [
    ("udcbench ", "1", {"run", "leaderboard", "check", "train-prior"}, {"--output"}),
    ("udcbench le", "1", {"leaderboard"}, {"run", "load"}),
    ("udcbench leaderboard runs --o", "3", {"--out"}, {"--output"}),  # the deprecated name is not offered
])
def test_the_completion_protocol_returns_command_and_option_names(words, cword, present, absent):
    env = {"_UDCBENCH_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword}
    result, output = invoke(env=env)
    assert result.exit_code == 0, output
    offered = set(output.split())
    assert present <= offered and not absent & offered, offered


def test_bare_udcbench_prints_help_and_usage_errors_stay_one_line():
    result, output = invoke()
    assert "Usage: udcbench" in output and "leaderboard" in output and "error:" not in output
    assert "--version" in output and "--install-completion" in output
    for args, fragment in ((["--nosuch"], "--nosuch"), (["leaderboard"], "directory"), (["nosuch"], "nosuch")):
        result, output = invoke(*args)
        assert result.exit_code == 2 and fragment in error_line(output)


def test_every_output_option_is_out_with_short_o():
    registered = commands()
    with_out = set()
    for name in registered:
        for param in params(name):
            names = [n for n in (*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ()))
                     if OUTPUT_NAMES.match(n)]
            if not names or param.param_type_name != "option":
                continue
            if param.hidden:
                assert (name, *names) in DEPRECATED, f"{name}: hidden output option {names}"
                continue
            assert sorted(param.opts) == ["--out", "-o"] and not param.secondary_opts, f"{name}: {param.opts}"
            with_out.add(name)
    assert WRITERS <= with_out, f"writers without --out/-o: {WRITERS - with_out}"


@pytest.mark.parametrize("name", [None, *commands()])
def test_help_has_plain_type_labels_and_one_intact_example(name):
    args = ["--help"] if name is None else [name, "--help"]
    result, output = invoke(*args, env=WIDTH)
    assert result.exit_code == 0, output
    assert not TYPE_LABEL.search(output), TYPE_LABEL.search(output).group(0)
    assert "BOOLEAN" not in output  # flags show no label
    command = typer.main.get_command(app) if name is None else commands()[name]
    prefix = f"Example: udcbench {name} " if name else "Example: udcbench "
    assert command.epilog and command.epilog.startswith(prefix) and "\n" not in command.epilog, command.epilog
    assert len(command.epilog) <= 76, f"keep the example within 76 characters (an 80-column terminal): {command.epilog}"
    assert command.epilog in [line.strip() for line in output.splitlines()], output  # on one line, whole


@pytest.mark.parametrize("name", list(commands()))
def test_the_summary_is_one_sentence_and_repeatable_options_say_so(name):
    command = commands()[name]
    summary = command.short_help
    assert summary and "\n" not in summary and summary.endswith("."), summary
    assert not re.search(r"[a-z)]\. [A-Z]", summary), f"more than one sentence: {summary}"
    assert all("\n" not in part for part in command.help.split("\n\n")), "a paragraph keeps a line break"
    for param in params(name):
        if getattr(param, "multiple", False):
            assert "repeat" in param.help.lower(), f"{name} {param.opts}: {param.help}"


def test_root_help_lists_each_command_on_its_summary_alone():
    result, output = invoke("--help", env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0
    for name, command in commands().items():
        row = [line for line in output.splitlines() if re.match(rf"\W*{re.escape(name)}\s", line)]
        assert row and command.short_help in row[0], (name, row)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("conventions") / "run"
    result, output = invoke("run", "--model", "wiener", "--attack", "fgsm", "--limit", "1", "-o", out)  # fast
    assert result.exit_code == 0, output
    return out


def test_leaderboard_out_o_and_the_hidden_output_alias(run_folder, tmp_path):
    result, output = invoke("leaderboard", run_folder, "--format", "csv", "-o", tmp_path / "short.csv")
    assert result.exit_code == 0, output
    old, _ = invoke("leaderboard", run_folder, "--format", "csv", "--output", tmp_path / "old.csv")
    assert old.exit_code == 0
    assert (tmp_path / "short.csv").read_bytes() == (tmp_path / "old.csv").read_bytes() != b""
    result, output = invoke("leaderboard", "--help", env=WIDTH)
    assert "--out" in output and "--output" not in output
    both, output = invoke("leaderboard", run_folder, "-o", tmp_path / "a.md", "--output", tmp_path / "b.md")
    assert both.exit_code == 2 and "--out" in error_line(output)
    assert not (tmp_path / "a.md").exists() and not (tmp_path / "b.md").exists()


def test_check_requires_a_baseline_and_names_the_fix(run_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no leaderboards/ci.csv here: the old relative default could not be meant
    before = sorted(p.name for p in run_folder.iterdir())
    result, output = invoke("check", run_folder)
    line = error_line(output)
    assert result.exit_code == 2 and "--baseline FILE" in line and "leaderboards/ci.csv" in line
    assert sorted(p.name for p in run_folder.iterdir()) == before and not list(tmp_path.iterdir())
    passed, output = invoke("check", run_folder, "--baseline", run_folder / "leaderboard.csv")
    assert passed.exit_code == 0, output
