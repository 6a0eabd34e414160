"""One source of truth: MLproject, the click options and the config dataclasses agree."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
import typing

import pytest
import yaml

from emotion_exp import config as cfg
from emotion_exp import mlproject
from emotion_exp.cli import cli
from emotion_exp.errors import UserError
from tests.conftest import REPO_ROOT

MLPROJECT = yaml.safe_load((REPO_ROOT / "MLproject").read_text())


def test_the_committed_mlproject_is_what_the_config_generates() -> None:
    assert (REPO_ROOT / "MLproject").read_text() == mlproject.render(), "run `python -m emotion_exp.mlproject`"


@pytest.mark.parametrize("stage", sorted(cfg.STAGE_CONFIGS))
def test_mlproject_click_and_dataclass_agree(stage: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(cfg.STAGE_CONFIGS[stage])}
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
    assert set(MLPROJECT["entry_points"]) == set(cfg.STAGE_CONFIGS) == set(cli.commands)
    assert MLPROJECT["conda_env"] == "conda.yaml"


def test_main_can_set_every_parameter_of_every_stage_it_runs() -> None:
    study = cfg.MainConfig(probe_C=0.5, tfidf_C=2.0, probe_class_weight="balanced", max_iter=10, strategy="prior")
    probe, tfidf, dummy = (study.stage_config(s) for s in ("probe", "tfidf", "dummy"))
    assert (probe.C, probe.class_weight, probe.max_iter) == (0.5, "balanced", 10)
    assert (tfidf.C, tfidf.class_weight) == (2.0, "none")
    assert dummy.strategy == "prior"
    for stage, config_class in cfg.STUDY_STAGES.items():
        set_by_study = set(cfg.SET_BY_THE_STUDY.get(stage, {}))
        assert set(cfg.STUDY_SOURCES[stage]) == {f.name for f in dataclasses.fields(config_class)} - set_by_study


def test_main_config_spells_out_exactly_the_study_s_composition() -> None:
    # MainConfig is written out for type checkers; it must stay what the stages' configs compose.
    fields = dataclasses.fields(cfg.MainConfig)
    hints = typing.get_type_hints(cfg.MainConfig)
    assert [f.name for f in fields] == [name for name, _, _ in cfg.STUDY_FIELDS]
    for field, (name, hint, source) in zip(fields, cfg.STUDY_FIELDS, strict=True):
        assert hints[name] == hint, name
        assert field.default == source.default, name
        assert field.metadata["help"].endswith(source.metadata["help"]), name
        for key in ("choices", "minimum", "maximum", "check"):
            assert field.metadata[key] == source.metadata[key], (name, key)


def test_main_names_a_clashing_field_after_its_stage_in_messages() -> None:
    with pytest.raises(UserError, match="--tfidf_C must be greater than 0"):
        cfg.MainConfig(tfidf_C=0)


# Bad parameter values and their messages are listed once, in test_bad_input.py, through the CLI.

# names.py borrows MLflow's name rules (mlflow.utils.validation) only, never the store.
ALLOWED_TO_IMPORT_MLFLOW = {"tracking.py", "registry.py", "spark.py", "names.py"}


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
    code = (
        "import sys, emotion_exp.cli; print(sorted(m for m in ('torch','mlflow','transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]"


def test_a_flag_reads_as_one_in_help() -> None:
    from click.testing import CliRunner

    shown = CliRunner().invoke(cli, ["predict", "--help"]).output
    assert "--overwrite [true|false]" in shown and "BOOLEAN" not in shown
