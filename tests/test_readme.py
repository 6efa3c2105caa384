from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    ci_line = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert len(ci_line) == 1
    assert ci_line[0].strip() in (ROOT / "README.md").read_text()


def test_readme_install_commands_use_the_constraints_file():
    commands = [line for line in (ROOT / "README.md").read_text().splitlines() if "pip install" in line]
    assert commands and all("-c constraints.txt" in line for line in commands)
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
