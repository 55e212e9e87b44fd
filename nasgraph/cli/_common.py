"""What every command shares: the typer app, the consoles, one-line errors, and how a
model argument (a zoo name, a graph JSON file, an ONNX file or torchvision:NAME) and sizes
are read and printed."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # click, as
from typer.core import TyperGroup  # typer vendors it

from nasgraph import importers, zoo
from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph, load
from nasgraph.units import si

console = Console()
err_console = Console(stderr=True)


def error_line(message: str) -> None:
    """Print `error: message` on stderr, on one line whatever the terminal's width."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False,
                      soft_wrap=True)  # the message as text: "[1, 2]" is no markup


class OneLineUsageErrors(TyperGroup):
    """The top-level group: a usage error (an unknown option, `--batch 0` below an option's
    minimum) is one line and exit code 2, as every other bad input is, not click's box of
    usage text; Ctrl-C is exit code 130, as shells expect."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as e:
            console.print(e.ctx.get_help() if e.ctx else "", highlight=False)
            code = 0
        except UsageError as e:
            where = f"{e.ctx.command_path}: " if e.ctx else ""
            error_line(f"{where}{' '.join(e.format_message().split())} (see --help)")
            code = 2
        except ClickException as e:
            error_line(" ".join(e.format_message().split()))
            code = e.exit_code
        except (typer.Abort, KeyboardInterrupt):
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _print_version(show: bool) -> None:
    if show:
        from nasgraph import __version__

        console.print(f"nasgraph {__version__}", highlight=False)
        raise typer.Exit()


app = typer.Typer(cls=OneLineUsageErrors, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)


@app.callback(help="nasgraph: architecture search and a graph compiler for CNNs.")
def _options(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    pass


Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
F = TypeVar("F", bound=Callable[..., object])


def one_line_errors(command: F) -> F:
    """Bad input becomes one line on stderr and exit code 2 (unless --debug)."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except (NasgraphError, OSError) as e:
            if kwargs.get("debug"):
                raise
            error_line(str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def parse_shape(text: str) -> tuple[int, int, int]:
    """'3x224x224' -> (3, 224, 224)."""
    m = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*[x,]\s*(\d+)\s*", text)
    if not m or min(int(g) for g in m.groups()) <= 0:
        raise NasgraphError(f"--input {text!r}: expected CxHxW with positive sizes, "
                            "e.g. 3x224x224")
    return tuple(int(g) for g in m.groups())  # type: ignore[return-value]


def resolve_model(model: str, input_shape: str | None = None,
                  num_classes: int | None = None) -> Graph:
    """A zoo name, a graph JSON file, an ONNX file or `torchvision:NAME`, optionally at
    another input size."""
    return resolve_model_and_weights(model, input_shape, num_classes)[0]


def resolve_model_and_weights(model: str, input_shape: str | None = None,
                              num_classes: int | None = None, pretrained: bool = False
                              ) -> tuple[Graph, dict | None]:
    """`resolve_model` and the weights the source carries (an ONNX file's, torchvision's:
    random, or pretrained with `pretrained`); None for zoo names and graph files."""
    shape = parse_shape(input_shape) if input_shape else None
    if importers.is_foreign(model):
        return importers.load(model, shape, num_classes, pretrained)
    if pretrained:
        raise NasgraphError("--pretrained applies to torchvision:NAME models only")
    if model.endswith(".json") or Path(model).is_file():
        graph = load(model)
        return (graph.replace_input(*shape) if shape else graph), None
    return zoo.get(model, num_classes=num_classes, input_shape=shape), None


MODEL_HELP = ("A zoo model name, a graph JSON file, an .onnx file, or torchvision:NAME "
              "(a torchvision classifier, random weights).")


# the options a space's commands share (search, proxies)
SpaceArgument = Annotated[str, typer.Argument(
    help="A registered space (see `nasgraph spaces`) or path/file.py:function.")]
DatasetOption = Annotated[str, typer.Option(
    "--dataset", help="digits, fashion-mnist, mnist, synthetic, cifar10:PATH, mnist:PATH, "
    "imagefolder:PATH[@SIZE] (docs/search.md).")]
BudgetOption = Annotated[str | None, typer.Option(
    "--budget", help="Most MACs per image: 300k, 5M, 1.2G.")]


def human(n: float, unit: str = "") -> str:
    """12_345_678 -> '12.35M': two decimals, for tables."""
    return si(n, ".2f", unit)
