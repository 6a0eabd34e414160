"""One source of truth: MLproject, the click options and the config dataclasses agree."""

from __future__ import annotations

import ast
import dataclasses
import math
import subprocess
import sys
import typing
from numbers import Integral, Real

import click
import pytest
import yaml

from emotion_exp import catalog, mlproject
from emotion_exp import config as cfg
from emotion_exp.catalog import MainConfig
from emotion_exp.cli import cli
from emotion_exp.errors import UserError
from tests.conftest import REPO_ROOT

MLPROJECT = yaml.safe_load((REPO_ROOT / "MLproject").read_text())
CONFIGS = {name: spec.config for name, spec in catalog.STAGES.items()}


def test_the_committed_mlproject_is_what_the_config_generates() -> None:
    assert (REPO_ROOT / "MLproject").read_text() == mlproject.render(), "run `python -m emotion_exp.mlproject`"


def test_the_committed_study_fields_are_what_the_registry_composes() -> None:
    # MainConfig's fields are written out for type checkers; they must be what the stages' configs compose today.
    assert mlproject.STUDY_FIELDS.read_text() == mlproject.render_study_fields(), (
        "run `python -m emotion_exp.mlproject`"
    )
    fields = dataclasses.fields(MainConfig)
    hints = typing.get_type_hints(MainConfig)
    options, _ = catalog.compose_study()
    assert [f.name for f in fields] == [option.name for option in options]
    for field, option in zip(fields, options, strict=True):
        source = {f.name: f for f in dataclasses.fields(option.owner)}[option.field]
        assert hints[field.name] is option.kind, field.name
        assert field.default == source.default, field.name
        assert field.metadata["help"].endswith(source.metadata["help"]), field.name
        assert field.metadata["constraints"] == source.metadata["constraints"], field.name


@pytest.mark.parametrize("stage", sorted(CONFIGS))
def test_mlproject_click_and_dataclass_agree(stage: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(CONFIGS[stage])}
    entry = MLPROJECT["entry_points"][stage]
    assert list(entry["parameters"]) == list(fields), "MLproject declares other parameters than the dataclass"
    arguments = [f"{{{n}}}" if f.metadata["positional"] else f"--{n} {{{n}}}" for n, f in fields.items()]
    assert entry["command"] == f"python -m emotion_exp {stage} " + " ".join(arguments)

    options = {p.name: p for p in cli.commands[stage].params}
    assert set(options) == set(fields)
    for name, spec in fields.items():
        if spec.default is dataclasses.MISSING:
            assert options[name].required
        else:
            assert options[name].default == spec.default, f"click default of --{name} differs"


def test_every_stage_has_an_entry_point_and_a_command() -> None:
    assert set(MLPROJECT["entry_points"]) == set(CONFIGS) == set(cli.commands)
    assert MLPROJECT["conda_env"] == "conda.yaml"


def test_main_can_set_every_parameter_of_every_stage_it_runs() -> None:
    study = MainConfig(probe_C=0.5, tfidf_C=2.0, probe_class_weight="balanced", max_iter=10, strategy="prior")
    probe, tfidf, dummy = (study.stage_config(s) for s in ("probe", "tfidf", "dummy"))
    assert (probe.C, probe.class_weight, probe.max_iter) == (0.5, "balanced", 10)
    assert (tfidf.C, tfidf.class_weight) == (2.0, "none")
    assert dummy.strategy == "prior"
    assert MainConfig(n_neighbors=3, weights="uniform").stage_config("knn").n_neighbors == 3
    _, sources = catalog.compose_study()
    for stage in catalog.in_the_study():
        spec = catalog.STAGES[stage]
        decided = set(spec.set_by_workflows())
        assert set(sources[stage]) == {f.name for f in dataclasses.fields(spec.config)} - decided
        main_fields = {f.name for f in dataclasses.fields(MainConfig)}
        assert set(sources[stage].values()) <= main_fields, f"{stage}: main lacks options; regenerate"


def test_main_names_a_clashing_field_after_its_stage_in_messages() -> None:
    with pytest.raises(UserError, match="--tfidf_C must be greater than 0"):
        MainConfig(tfidf_C=0)


# --- the constraints: a value of the wrong kind or out of range is a user error, never a TypeError ----


def declarations(*kinds: type) -> list[tuple[str, str]]:
    """(stage, field) for each declaration of a field of one of ``kinds`` in the registered stages' configs, once."""
    found: dict[int, tuple[str, str]] = {}
    for stage, config_class in CONFIGS.items():
        hints = typing.get_type_hints(config_class)
        for spec in dataclasses.fields(config_class):
            if hints[spec.name] in kinds:
                found.setdefault(id(spec), (stage, spec.name))
    return list(found.values())


def refusals(kinds: tuple[type, ...], value: object, message: str) -> list[str]:
    """The declarations of ``kinds`` that build a config with ``value`` without a ``UserError`` holding ``message``."""
    wrong = []
    for stage, name in declarations(*kinds):
        required = {f.name: "x.csv" for f in dataclasses.fields(CONFIGS[stage]) if f.default is dataclasses.MISSING}
        try:
            CONFIGS[stage](**{**required, name: value})
        except UserError as error:
            if str(error) != f"--{name} {message}; got {value!r}.":
                wrong.append(f"{stage}.{name}: {error}")
        else:
            wrong.append(f"{stage}.{name}: accepted {value!r}")
    return wrong


def test_every_number_field_has_one_interval_of_its_kind() -> None:
    kinds = {int: Integral, float: Real}
    wrong = []
    for stage, config_class in CONFIGS.items():
        hints = typing.get_type_hints(config_class)
        for spec in dataclasses.fields(config_class):
            intervals = [c for c in spec.metadata["constraints"] if isinstance(c, cfg.Interval)]
            if hints[spec.name] in kinds and [i.kind for i in intervals] != [kinds[hints[spec.name]]]:
                wrong.append(f"{stage}.{spec.name}: {intervals}")
    assert not wrong, wrong


@pytest.mark.parametrize("value", [2.5, 3.0, "3", True])
def test_a_whole_number_field_refuses_a_float_text_or_bool(value: object) -> None:
    assert declarations(int)
    assert refusals((int,), value, "must be a whole number") == []


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_number_field_refuses_nan_and_infinities(value: float) -> None:
    assert declarations(float)
    assert refusals((float,), value, "must be a finite number") == []


def test_a_number_field_refuses_text() -> None:
    assert refusals((float,), "1", "must be a number") == []


def test_a_text_or_flag_field_refuses_another_type() -> None:
    assert refusals((str,), 3, "must be text") == []
    assert refusals((bool,), 3, "must be true or false") == []


def test_the_probe_refuses_a_fractional_or_textual_max_iter_as_a_user_error() -> None:
    with pytest.raises(UserError, match=r"^--max_iter must be a whole number; got 2.5\.$"):
        cfg.ProbeConfig(max_iter=2.5)
    with pytest.raises(UserError, match=r"^--max_iter must be a whole number; got '3'\.$"):
        cfg.ProbeConfig(max_iter="3")
    assert cfg.ProbeConfig(max_iter=3).max_iter == 3


def test_the_interval_says_which_bound_a_value_crosses() -> None:
    share = cfg.Interval(Real, 0, 1, closed="neither")
    for value, message in [(0, "greater than 0"), (1, "less than 1"), (1.5, "less than 1")]:
        with pytest.raises(UserError, match=f"--x must be {message}; got {value}"):
            share.check("--x", value)
    share.check("--x", 0.5)
    closed = cfg.Interval(Integral, 1, 3, closed="both")
    for value, message in [(0, "at least 1"), (4, "at most 3")]:
        with pytest.raises(UserError, match=f"--x must be {message}; got {value}"):
            closed.check("--x", value)
    closed.check("--x", 1)
    closed.check("--x", 3)


def test_the_command_line_takes_a_whole_float_from_mlproject_and_refuses_a_fraction() -> None:
    command = cli.commands["probe"]
    assert command.make_context("probe", ["--max_iter", "3.0"]).params["max_iter"] == 3
    assert command.make_context("probe", ["--seed", "4294967295"]).params["seed"] == 2**32 - 1
    with pytest.raises(click.BadParameter, match="expected a whole number, got '2.5'"):
        command.make_context("probe", ["--max_iter", "2.5"])
    with pytest.raises(click.BadParameter, match="expected a whole number, got 'nan'"):
        command.make_context("probe", ["--max_iter", "nan"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--C", "nan"], "--C must be a finite number; got nan."),
        (["--C", "inf"], "--C must be a finite number; got inf."),
        (["--max_iter", "0"], "--max_iter must be at least 1; got 0."),
    ],
)
def test_a_bad_number_on_the_command_line_is_one_line(arguments: list[str], message: str) -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["probe", *arguments])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [f"Error: {message}"]


# Bad parameter values and their messages are listed once, in test_bad_input.py, through the CLI.

ALLOWED_TO_IMPORT_MLFLOW = {"tracking.py", "registry.py", "spark.py"}


def test_only_the_edge_modules_import_mlflow() -> None:
    """The stages, workflows and pyfunc models (their packages) and a few modules are the MLflow edge."""
    offenders = []
    for path in (REPO_ROOT / "emotion_exp").rglob("*.py"):
        if path.parent.name in ("stages", "workflows", "pyfunc") or (
            path.name in ALLOWED_TO_IMPORT_MLFLOW and path.parent.name == "emotion_exp"
        ):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            if any(name == "mlflow" or name.startswith("mlflow.") for name in names):
                offenders.append(str(path.relative_to(REPO_ROOT)))
    assert offenders == []


def test_importing_the_cli_does_no_heavy_work() -> None:
    # Optuna (and numpy under it) too: the search spaces are built when a sweep asks (sweep_space()), not for --help.
    heavy = "('torch', 'mlflow', 'transformers', 'optuna', 'sklearn', 'numpy')"
    code = f"import sys, emotion_exp.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]"


def test_a_flag_reads_as_one_in_help() -> None:
    from click.testing import CliRunner

    shown = CliRunner().invoke(cli, ["predict", "--help"]).output
    assert "--overwrite [true|false]" in shown and "BOOLEAN" not in shown
