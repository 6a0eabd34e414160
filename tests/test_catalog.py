"""The stage registry is the one place that lists stages: everything else reads it."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import sys
import types
from numbers import Real
from pathlib import Path

import pytest

from emotion_exp import catalog, mlproject
from emotion_exp import config as cfg
from emotion_exp.cli import cli
from emotion_exp.errors import UserError
from emotion_exp.workflows import search_space
from tests.conftest import REPO_ROOT
from tests.helpers import run_contract_violations

PACKAGE = REPO_ROOT / "emotion_exp"
NAMES = set(catalog.STAGES)


def stage_names_in(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and n.value in NAMES]


def declarations(path: Path) -> list[str]:
    """Lists of two or more stage names, and comparisons of a stage with another stage's name, in one module.

    A stage's own module may name itself (``stage != 'extract'`` in extract.py).
    """
    module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts) if path.is_relative_to(PACKAGE) else ""
    own = {name for name, spec in catalog.STAGES.items() if spec.module == module}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            names = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in NAMES]
        elif isinstance(node, ast.Dict):
            names = [k.value for k in node.keys if isinstance(k, ast.Constant) and k.value in NAMES]
        elif isinstance(node, ast.Compare) and "stage" in ast.unparse(node.left).lower():
            names = [n for comparator in node.comparators for n in stage_names_in(comparator) if n not in own] * 2
        else:
            continue
        if len(names) >= 2:
            found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {ast.unparse(node)[:100]}")
    return found


def test_no_module_but_the_registry_lists_stages() -> None:
    found = [line for path in sorted(PACKAGE.rglob("*.py")) if path.name != "catalog.py" for line in declarations(path)]
    assert not found, "stages named outside catalog.STAGES:\n" + "\n".join(found)


def test_the_check_finds_a_stage_declared_in_an_extra_place(tmp_path: Path) -> None:
    # The test above can fail: the old declarations it replaced are found.
    extra = tmp_path / "extra.py"
    extra.write_text('SWEPT = ("tfidf", "probe")\nif stage == "probe":\n    pass\nCONFIGS = {"main": 1, "sweep": 2}\n')
    extra = extra.rename(PACKAGE.parent / "tests" / f"_extra_{tmp_path.name}.py")
    try:
        assert len(declarations(extra)) == 3
    finally:
        extra.unlink()


@pytest.mark.parametrize("name", sorted(catalog.STAGES))
def test_every_stage_has_its_command_config_module_and_closing(name: str) -> None:
    spec = catalog.STAGES[name]
    assert cli.commands[name].help == spec.help
    assert dataclasses.is_dataclass(spec.config)
    assert importlib.util.find_spec(spec.module) is not None
    line = catalog.closing_line(name, "abc", {}, {})
    assert line is None if spec.closing is None else line.startswith(f"{name}: ") and line.endswith("(run abc)")


@pytest.mark.parametrize("name", [name for name, spec in catalog.STAGES.items() if spec.model_stage])
def test_every_model_stage_runs_on_the_contract_the_workflows_rely_on(name: str) -> None:
    assert run_contract_violations(catalog.STAGES[name]) == []


@pytest.mark.parametrize("name", catalog.sweepable())
def test_a_declared_search_space_names_fields_and_values_of_its_config(name: str) -> None:
    config_class = catalog.STAGES[name].config
    declared = cfg.search_space_of(config_class)
    assert declared is not None and declared.searched
    assert set(declared.names()) <= {f.name for f in dataclasses.fields(config_class)}
    assert search_space.search_space(name).keys() == declared.searched.keys()  # every value passes the config


def test_the_contract_check_finds_a_run_that_misses_an_argument() -> None:
    # The check above can fail: a stage whose run lacks what the learning curve passes is caught.
    def run(config: object, *, splits: object = None, score_test: bool = True, labels: object = None) -> str:
        return ""

    module = types.ModuleType("emotion_exp_test_stage")
    module.run = run  # type: ignore[attr-defined]
    spec = catalog.StageSpec("x", cfg.TfidfConfig, module.__name__, "x", learning_curve=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, module.__name__, module)
        assert run_contract_violations(spec) == ["x: run takes no train_rows (keyword, default None)"]


# A stage the registry did not have: a config with a search space, on the learning curve and in the study.
@dataclasses.dataclass(frozen=True)
class ExtraConfig(cfg.FeatureHeadConfig):
    """A throw-away feature head."""

    shrink: float = cfg.option(0.0, "Shrink.", cfg.Interval(Real, 0, 1, closed="both"))

    @staticmethod
    def sweep_space() -> cfg.SearchSpace:
        from optuna.distributions import FloatDistribution

        return cfg.SearchSpace({"shrink": FloatDistribution(0.0, 1.0)})


def test_a_new_stage_in_the_registry_is_swept_curved_compared_and_set_from_main(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = catalog.StageSpec(
        "extra", ExtraConfig, "emotion_exp.stages.knn", "x", learning_curve=True, in_study=True, compared=True
    )
    with pytest.raises(UserError, match="--stage must be one of"):
        catalog.SweepConfig(stage="extra")
    monkeypatch.setitem(catalog.STAGES, "extra", spec)

    assert catalog.SweepConfig(stage="extra").stage == "extra"
    assert search_space.search_space("extra", "shrink=0.2|0.4")["shrink"].choices == (0.2, 0.4)
    assert catalog.LearningCurveConfig(stages="extra,probe").stage_list == ["extra", "probe"]
    assert "extra" in catalog.LearningCurveConfig().stage_list
    assert catalog.compared_in_study()[-1] == "extra" and spec.reads_features
    options, sources = catalog.compose_study()
    assert "shrink" in [option.name for option in options] and sources["extra"]["shrink"] == "shrink"
    assert 'shrink: float = same_field(ExtraConfig, "shrink")' in mlproject.render_study_fields()
    study = catalog.MainConfig(pooling="mean").stage_config("extra")  # before regenerating: its own default
    assert (study.pooling, study.shrink, study.features_run_id, study.registered_model) == ("mean", 0.0, "", "")
