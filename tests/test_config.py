"""One source of truth: MLproject, the click options and the config dataclasses agree."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys

import pytest
import yaml

from emotion_exp import config as cfg
from emotion_exp.cli import cli
from emotion_exp.errors import UserError
from tests.conftest import REPO_ROOT

MLPROJECT = yaml.safe_load((REPO_ROOT / "MLproject").read_text())


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@pytest.mark.parametrize("stage", sorted(cfg.STAGE_CONFIGS))
def test_mlproject_click_and_dataclass_agree(stage: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(cfg.STAGE_CONFIGS[stage])}
    entry = MLPROJECT["entry_points"][stage]
    declared = entry["parameters"]
    assert list(declared) == list(fields), "MLproject declares other parameters than the dataclass"

    for name, spec in fields.items():
        declared_spec = declared[name]
        if spec.default is dataclasses.MISSING:
            assert isinstance(declared_spec, str), f"{stage}.{name} has no default, so MLproject must require it"
            continue
        assert declared_spec["type"] in ("string", "float", "path", "uri")
        assert _as_text(declared_spec["default"]) == _as_text(spec.default), f"{stage}.{name} default differs"
        assert f"--{name} {{{name}}}" in entry["command"], f"{stage} command does not pass --{name}"
    assert entry["command"].startswith(f"python -m emotion_exp {stage} ")

    command = cli.commands[stage]
    options = {p.name: p for p in command.params}
    assert set(options) == set(fields)
    for name, spec in fields.items():
        if spec.default is dataclasses.MISSING:
            assert options[name].required
        else:
            assert options[name].default == spec.default, f"click default of --{name} differs"


def test_every_stage_has_an_entry_point_and_a_command() -> None:
    assert set(MLPROJECT["entry_points"]) == set(cfg.STAGE_CONFIGS) == set(cli.commands)
    assert MLPROJECT["conda_env"] == "conda.yaml"


@pytest.mark.parametrize(
    ("config_class", "overrides", "message"),
    [
        (cfg.ExtractConfig, {"precision": "fp16"}, "--precision must be one of auto, fp32, bf16; got 'fp16'"),
        (cfg.FinetuneConfig, {"precision": "int8"}, "--precision must be one of auto, fp32, bf16; got 'int8'"),
        (cfg.FinetuneConfig, {"epochs": 0}, "--epochs must be greater than 0"),
        (cfg.FinetuneConfig, {"batch_size": 0}, "--batch_size must be at least 1"),
        (cfg.ExtractConfig, {"max_length": -3}, "--max_length must be at least 1"),
        (cfg.FinetuneConfig, {"learning_rate": 0.0}, "--learning_rate must be greater than 0"),
        (cfg.ExtractConfig, {"pooling": "max"}, "--pooling must be one of cls, mean; got 'max'"),
        (cfg.DataConfig, {"validation_fraction": 0.5, "test_fraction": 0.5}, "must leave rows for training"),
        (cfg.DummyConfig, {"strategy": "constant"}, "--strategy must be one of"),
    ],
)
def test_invalid_parameters_are_refused_with_the_allowed_values(config_class, overrides, message) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_class(**overrides)


ALLOWED_TO_IMPORT_MLFLOW = {"tracking.py", "registry.py", "pyfunc.py"}


def test_only_the_edge_modules_import_mlflow() -> None:
    offenders = []
    for path in (REPO_ROOT / "emotion_exp").rglob("*.py"):
        if path.name in ALLOWED_TO_IMPORT_MLFLOW and path.parent.name == "emotion_exp":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )
            if any(name == "mlflow" or name.startswith("mlflow.") for name in names):
                offenders.append(str(path.relative_to(REPO_ROOT)))
    assert offenders == []


def test_importing_the_cli_does_no_heavy_work() -> None:
    code = "import sys, emotion_exp.cli; print(sorted(m for m in ('torch','mlflow','transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]"
