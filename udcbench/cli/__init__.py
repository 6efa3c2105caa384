"""The `udcbench` command line: parses, calls the Python API, prints with rich. Nothing else lives here.

Each command module (general, run, data, defense, report) defines plain functions and lists them in COMMANDS; this
module builds the Typer app and registers them, each wrapped by `reports_errors`, the one place a UdcbenchError
becomes a red line on stderr and exit code 2. Only this module imports the command modules; they import the leaf
modules common and show, never this one."""

from __future__ import annotations

import typer

from udcbench.cli import data, defense, general, report, run
from udcbench.cli.common import attack_variant, parse_attack_params, reports_errors

__all__ = ["app", "attack_variant", "main", "parse_attack_params"]

app = typer.Typer(help="Adversarial robustness benchmark for under-display-camera (UDC) image restoration.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

for _module in (general, run, data, defense, report):  # the order of `udcbench --help`
    for _name, _command in _module.COMMANDS.items():
        app.command(_name)(reports_errors(_command))


def main() -> None:
    app()

