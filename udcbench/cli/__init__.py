"""The `udcbench` command line: parses, calls the Python API, prints with rich. Nothing else lives here.

Each command module (general, run, data, defense, report) defines plain functions and lists them in COMMANDS; this
module builds the Typer app and registers them, each wrapped by `reports_errors`, the one place a UdcbenchError
becomes a red line on stderr and exit code 2. Only this module imports the command modules; they import the leaf
modules common and show, never this one.

Help follows click's conventions whatever Typer's defaults: every command is a PlainCommand (plain type labels
TEXT, INTEGER, FLOAT, PATH or the choices, none for flags; a docstring's first paragraph is the command's one-line
summary in `udcbench --help`, a final `Example: udcbench …` paragraph is printed on its own under the options)."""

from __future__ import annotations

import inspect
import platform
import sys
from importlib import metadata
from pathlib import PurePath
from typing import get_args

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from udcbench.cli import data, defense, evaluate, general, report, run
from udcbench.cli.common import attack_variant, fail, parse_attack_params, reports_errors
from udcbench.version import __version__

try:  # Typer vendors its own Click (typer._click) from 0.2x on; older Typer uses Click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

__all__ = ["app", "attack_variant", "main", "parse_attack_params"]

LABELS = {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: "BOOLEAN"}


def plain_label(param) -> str | None:
    """The type label `--help` shows beside an option or argument, in click's words: none for a flag; TEXT,
    INTEGER, FLOAT, PATH; the choices as md|csv|latex|html (Typer 0.29 alone shows <str>, <list[str]>, <bool>)."""
    described = getattr(param, "type_descriptor", None)  # Typer before 0.2x: Click's own labels, already plain
    if described is None or getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    if described.is_choice:
        return "|".join(str(getattr(choice, "value", choice)) for choice in described.choices)
    annotation = get_args(described.annotation)[0] if described.is_list else described.annotation
    if described.is_path or (isinstance(annotation, type) and issubclass(annotation, PurePath)):
        return "PATH"
    return LABELS.get(annotation, getattr(annotation, "__name__", str(annotation)).upper())


class PlainOption(TyperOption):
    def display_type(self, ctx) -> str | None:  # an explicit metavar (FILE, DIR) still wins, as in click
        return plain_label(self)


class PlainArgument(TyperArgument):
    def display_type(self, ctx) -> str | None:
        return plain_label(self)


PLAIN = {TyperOption: PlainOption, TyperArgument: PlainArgument}


def plain_params(params: list) -> list:
    """Typer's parameters (its --help option included, made per call) with plain type labels; a repeatable option
    whose help does not say so gets "(repeatable)". Only methods differ, so swapping the class is safe."""
    for param in params:
        param.__class__ = PLAIN.get(type(param), type(param))
        if getattr(param, "multiple", False) and "repeat" not in (param.help or "").lower():
            param.help = f"{param.help or ''} (repeatable)".strip()
    return params


def help_parts(text: str | None) -> tuple[str, str | None, str | None]:
    """A command's docstring as (help, short help, epilog): paragraphs rejoined into single lines (rich keeps a
    docstring's line breaks otherwise), the first paragraph the short help `udcbench --help` lists, and the
    paragraphs that start with "Example" moved to the epilog, printed on their own lines after the options."""
    paragraphs = [" ".join(part.split()) for part in inspect.cleandoc(text or "").split("\n\n") if part.strip()]
    body = [part for part in paragraphs if not part.startswith("Example")]
    examples = [part for part in paragraphs if part.startswith("Example")]
    return "\n\n".join(body), body[0] if body else None, "\n\n".join(examples) or None


class PlainCommand(TyperCommand):
    """A command whose help follows click's conventions (help_parts, plain_params)."""

    def __init__(self, *args, help=None, short_help=None, epilog=None, **kwargs):
        body, summary, examples = help_parts(help)
        super().__init__(*args, help=body, short_help=short_help or summary, epilog=epilog or examples, **kwargs)

    def get_params(self, ctx):
        return plain_params(super().get_params(ctx))


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

    def get_params(self, ctx):
        return plain_params(super().get_params(ctx))


def usage_line(error) -> str:
    message = " ".join(error.format_message().split()).rstrip(".")
    context = getattr(error, "ctx", None)
    command = context.command_path if context is not None else "udcbench"
    return f"{message}; see `{command} --help`"


app = typer.Typer(help="Adversarial robustness benchmark for under-display-camera (UDC) image restoration.",
                  epilog="Example: udcbench run --model uformer --attack pgd --limit 4 --out runs/demo",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=OneLineErrors)


def version_line() -> str:
    """`udcbench --version`: this package's version, then torch's and Python's (read without importing torch)."""
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return f"udcbench {__version__} (torch {torch}, Python {platform.python_version()})"


def show_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                       help="Print the versions of udcbench, torch and Python, and exit.")) -> None:
    pass  # the options of `udcbench` itself; the help is Typer(help=...) above

for _module in (general, run, evaluate, data, defense, report):  # the order of `udcbench --help`
    for _name, _command in _module.COMMANDS.items():
        app.command(_name, cls=PlainCommand)(reports_errors(_command))


def main() -> None:
    app()

