"""The `udcbench` command line: parses, calls the Python API, prints with rich. Nothing else lives here.

Each command module (general, run, data, defense, report) defines plain functions and lists them in COMMANDS; this
module builds the Typer app and registers them, each wrapped by `reports_errors`, the one place a UdcbenchError
becomes a red line on stderr and exit code 2. Only this module imports the command modules; they import the leaf
modules common and show, never this one."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from udcbench.cli import data, defense, general, report, run
from udcbench.cli.common import attack_variant, fail, parse_attack_params, reports_errors

try:  # Typer vendors its own Click (typer._click) from 0.2x on; older Typer uses Click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

__all__ = ["app", "attack_variant", "main", "parse_attack_params"]


class OneLineErrors(TyperGroup):
    """Click's usage errors (an unknown command or option, a missing argument, a value not among the choices)
    as one `error:` line naming the fix, exit code 2, instead of a multi-line usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as error:  # bare `udcbench`: the help, as before
            error.show()
            code = error.exit_code
        except click_errors.ClickException as error:
            try:
                fail(Exception(usage_line(error)))
            except typer.Exit as exit_:
                code = exit_.exit_code
        except typer.Abort:
            code = 130
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def usage_line(error) -> str:
    message = " ".join(error.format_message().split()).rstrip(".")
    context = getattr(error, "ctx", None)
    command = context.command_path if context is not None else "udcbench"
    return f"{message}; see `{command} --help`"


app = typer.Typer(help="Adversarial robustness benchmark for under-display-camera (UDC) image restoration.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=OneLineErrors)

for _module in (general, run, data, defense, report):  # the order of `udcbench --help`
    for _name, _command in _module.COMMANDS.items():
        app.command(_name)(reports_errors(_command))


def main() -> None:
    app()

