"""The ``emotion-exp`` command line: one thin command per stage, options generated from config.

Every option comes from a field of the stage's config dataclass (``config.py``), so the CLI,
the MLproject entry points and the Python API share one set of names and defaults. Stage code
is imported only when its command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from emotion_exp import catalog, console, interrupts, threads
from emotion_exp import config as cfg
from emotion_exp.errors import UserError


class _WholeNumber(click.ParamType):
    """An integer that also accepts ``3.0``: MLproject passes float-typed parameters that way.

    Only here: in Python a float for a whole-number field is refused (``config.Interval``).
    """

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)  # exact, also beyond a float's 53 bits
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"expected a whole number, got {value!r}", param, ctx)
        if not number.is_integer():
            self.fail(f"expected a whole number, got {value!r}", param, ctx)
        return int(number)


_CLICK_TYPES = {int: _WholeNumber(), float: click.FLOAT, str: click.STRING, bool: click.BOOL}


def config_options(config_class: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command with one ``--<field>`` option per field of ``config_class``."""
    hints = typing.get_type_hints(config_class)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for spec in reversed(dataclasses.fields(config_class)):
            help_text = spec.metadata.get("help", "")
            choices = cfg.choices_of(spec)
            if choices:
                help_text += f" One of: {', '.join(map(str, choices))}."
            required = spec.default is dataclasses.MISSING
            # A bool option works alone as a flag (--dry_run) and with a value (--dry_run false, from MLproject).
            # Its metavar says so in --help, where click's would read "BOOLEAN", a value it needs.
            flag = {"is_flag": False, "flag_value": True, "metavar": "[true|false]"} if hints[spec.name] is bool else {}
            if spec.metadata.get("positional"):  # documented in the command's help: click arguments have none
                command = click.argument(
                    spec.name,
                    metavar=spec.name.upper(),
                    type=_CLICK_TYPES[hints[spec.name]],
                    required=False,
                    default=spec.default,
                )(command)
                continue
            command = click.option(
                f"--{spec.name}",
                spec.name,
                type=_CLICK_TYPES[hints[spec.name]],
                default=None if required else spec.default,
                required=required,
                show_default=not required,
                help=help_text,
                **flag,
            )(command)
        return command

    return decorate


def _debug_enabled() -> bool:
    return os.environ.get("EMOTION_EXP_DEBUG", "") not in ("", "0", "false")


class _Group(click.Group):
    """Turns user errors, and any other error, into one line and a non-zero exit; ``--debug`` adds the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        store_existed = Path(DEFAULT_STORE).exists()
        try:
            with interrupts.stop_on_signals():
                return super().invoke(ctx)
        except UserError as error:
            if _debug_enabled():
                traceback.print_exc()
            _fail_launcher_run(ctx.invoked_subcommand, str(error))
            _remove_empty_store(store_existed)
            raise click.ClickException(str(error)) from None
        except click.ClickException as error:  # a typo in an option, a value of the wrong type
            _fail_launcher_run(ctx.invoked_subcommand, error.format_message())
            _remove_empty_store(store_existed)
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.exceptions.Abort):  # --help, or a prompt given up: click's own ends
            raise
        except Exception as error:  # a bug, or the environment (the store, a variable contradicting another)
            if _debug_enabled():
                traceback.print_exc()
            reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
            _fail_launcher_run(ctx.invoked_subcommand, reason)
            _remove_empty_store(store_existed)
            raise click.ClickException(f"{reason} (unexpected: --debug shows the traceback)") from error


DEFAULT_STORE = "mlflow.db"
"""MLflow's store where MLFLOW_TRACKING_URI is unset: sqlite:///mlflow.db in the working directory."""


def _remove_empty_store(existed: bool) -> None:
    """A command that failed in a folder without a store leaves none behind (an empty ``mlflow.db`` there)."""
    if not existed and Path(DEFAULT_STORE).exists():
        from emotion_exp import tracking

        tracking.remove_store_if_empty(Path(DEFAULT_STORE))


def _fail_launcher_run(stage: str | None, reason: str) -> None:
    """Under ``mlflow run``, an error before the stage opened its run still marks that run FAILED.

    The run gets the ``stage`` tag and name and the ``error`` tag, like a run that failed later.
    """
    from emotion_exp import distributed

    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id and distributed.is_main():  # under torchrun only rank 0 touches the store
        from emotion_exp import tracking

        tracking.fail_run(run_id, reason, stage=stage)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--verbose",
    is_flag=True,
    help="Show everything MLflow, transformers and the Trainer print (or set EMOTION_EXP_VERBOSE=1).",
)
@click.option(
    "--debug", is_flag=True, help="Show the full traceback on errors; implies --verbose (or set EMOTION_EXP_DEBUG=1)."
)
@click.version_option(package_name="emotion-exp")
def cli(verbose: bool, debug: bool) -> None:
    """Reproduce the emotion text-classification study as tracked MLflow runs.

    Each stage logs its parameters, dataset, metrics, plots and models to MLflow (the store in
    MLFLOW_TRACKING_URI, by default sqlite:///mlflow.db in the working directory). Browse them
    with `mlflow ui`.
    """
    if debug:
        os.environ["EMOTION_EXP_DEBUG"] = "1"
    if verbose or _debug_enabled():
        os.environ[console.VERBOSE_ENV] = "1"
    console.quiet_libraries()
    threads.prefer_passive_openmp()  # before any stage imports torch


def _stage_command(spec: catalog.StageSpec[Any]) -> None:
    @config_options(spec.config)
    def command(**params: Any) -> None:
        spec.run(spec.config(**params))

    command.__doc__ = spec.help
    cli.command(spec.name)(command)


for _spec in catalog.STAGES.values():
    _stage_command(_spec)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="emotion-exp")
