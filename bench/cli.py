"""The `bench` command line: run methods, keep results in a database, report from it.

Each command lives beside the code it drives (`bench/<package>/cli.py`); this module mounts them
and turns user errors into one line on stderr.
"""

import logging
import sys
import warnings
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from bench.errors import BenchError, ConfigError

# Deprecation notices raised inside timm and anomalib imports; nothing a user can act on.
warnings.filterwarnings("ignore", message="Importing from timm.models.layers is deprecated")
warnings.filterwarnings("ignore", message="The anomalib.models.components.dinov2 package is deprecated")

error_console = Console(stderr=True)

app = typer.Typer(
    name="bench",
    help="Benchmark anomaly-detection methods with backbones pre-trained on fractals, ImageNet or nothing.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"bench {version('bench')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version of bench and exit.")] = False,
) -> None:
    """Benchmark anomaly-detection methods with backbones pre-trained on fractals, ImageNet or nothing."""


def _mount_commands() -> None:
    from bench.data.cli import app as data_app
    from bench.fractals.cli import app as fractals_app
    from bench.methods.cli import app as methods_app
    from bench.pretrain.cli import pretrain_command
    from bench.reports.cli import figure_app
    from bench.reports.cli import query as query_command
    from bench.reports.cli import report as report_command
    from bench.runners.cli import run as run_command
    from bench.runners.cli import sweep as sweep_command
    from bench.runners.status import status as status_command
    from bench.weights.cli import app as weights_app

    app.command("run")(run_command)
    app.command("pretrain")(pretrain_command)
    app.command("sweep")(sweep_command)
    app.command("status")(status_command)
    app.command("report")(report_command)
    app.command("query")(query_command)
    app.add_typer(figure_app, name="figure", help="Draw the study's figures (spider, layers, filters, qualitative) as PNG and PDF.")
    app.add_typer(data_app, name="data", help="Check datasets and write the embedded demo dataset.")
    app.add_typer(weights_app, name="weights", help="List and register backbone weights.")
    app.add_typer(methods_app, name="methods", help="List the anomaly-detection methods and their options.")
    app.add_typer(fractals_app, name="fractals", help="Sample IFS fractal systems, preview and render them.")


def check_repeated_options(arguments: list[str]) -> None:
    """Raise ConfigError when an option that takes one value is given more than once.

    click keeps the last value of such an option without a word, so `--image-size 64
    --image-size 96` would silently run at 96 px only. The grid axes are the options that repeat.
    """
    # typer 0.28 and later ship their own copy of click, so isinstance checks against click's
    # classes fail and parameters are recognised by their fields instead.
    command = typer.main.get_command(app)
    position = 0
    while hasattr(command, "commands") and position < len(arguments):
        subcommand = command.commands.get(arguments[position])
        if subcommand is None:
            break
        command, position = subcommand, position + 1

    options = [parameter for parameter in command.params if parameter.param_type_name == "option"]
    single = {name: parameter for parameter in options
              if not parameter.multiple and not parameter.is_flag and not parameter.count for name in parameter.opts}
    values_by_option: dict[str, list[str]] = {}
    for index, token in enumerate(arguments[position:], start=position):
        if token == "--":
            break
        name, equals, value = token.partition("=")
        if name in single:
            if not equals:
                value = arguments[index + 1] if index + 1 < len(arguments) else ""
            values_by_option.setdefault(single[name].opts[0], []).append(value)
    for option, values in values_by_option.items():
        if len(values) > 1:
            repeatable = sorted(opt for parameter in options if parameter.multiple
                                for opt in parameter.opts if opt.startswith("--"))
            hint = f" (options that repeat here: {', '.join(repeatable)})" if repeatable else ""
            raise ConfigError(f"{option} given {len(values)} times ({', '.join(values)}), but it takes one value; "
                              f"pass it once{hint}")


# typer's own copy of click also means that the base class of its usage errors is taken from the
# class hierarchy of an exception that typer exports.
ClickException = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")


def main() -> None:
    """Run the CLI; a BenchError or a usage error becomes one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_repeated_options(sys.argv[1:])
        code = app(standalone_mode=False, prog_name="bench")
    except BenchError as error:
        error_console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except ClickException as error:
        _exit_usage_error(error)
    sys.exit(code if isinstance(code, int) else 0)


def _exit_usage_error(error: Exception) -> None:
    """Print a click usage error as one line that names the command's help, then exit with its code."""
    if type(error).__name__ == "NoArgsIsHelpError":
        # A group called without a command: typer has already printed the group's help.
        sys.exit(error.exit_code)

    context = getattr(error, "ctx", None)
    hint = f" (see `{context.command_path} --help`)" if context is not None else ""
    message = " ".join(error.format_message().split())
    error_console.print(f"[red]error:[/red] {escape(message)}{hint}", highlight=False, soft_wrap=True)
    sys.exit(error.exit_code)


_mount_commands()
