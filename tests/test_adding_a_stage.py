"""CONTRIBUTING.md's "Adding a stage", executed: its code blocks make a stage that joins the study and a sweep.

The guide's three marked blocks (the config, the module, the registry entry) are run as written,
without writing into the package: each becomes a temporary module in the test's folder (the
config among ``emotion_exp.config``'s names, where the guide puts it; the module under the name
its entry gives, ``emotion_exp.stages.centroid``), and the entry joins ``catalog.STAGES``, all
for this test only.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import uuid
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from emotion_exp import catalog, mlproject
from emotion_exp import config as cfg
from emotion_exp.cli import cli
from emotion_exp.workflows import sweep
from tests.conftest import REPO_ROOT
from tests.helpers import check_study, run_contract_violations, study_params
from tests.test_docs import Block, marked

GUIDE = REPO_ROOT / "CONTRIBUTING.md"
THIS_TEST = "tests/test_adding_a_stage.py::test_the_guides_stage_joins_the_study_and_a_sweep"


def guide_blocks() -> tuple[Block, Block, Block]:
    """The guide's config, module and registry entry, in the order the guide gives them."""
    blocks = [block for block in marked(THIS_TEST) if block.page == GUIDE]
    assert [block.language for block in blocks] == ["python"] * 3, [str(block) for block in blocks]
    config_block, module_block, entry_block = blocks
    return config_block, module_block, entry_block


def temporary_module(path: Path, name: str, code: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """``code`` written to ``path`` and imported as ``name``; gone from ``sys.modules`` after the test."""
    path.write_text(code)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def add_the_guides_stage(folder: Path, monkeypatch: pytest.MonkeyPatch) -> catalog.StageSpec:
    """Run the guide's blocks as written, each as a temporary module in ``folder``; return the registered entry."""
    config_block, module_block, entry_block = guide_blocks()
    # 1. The config, "in emotion_exp/config.py": among that module's names (dataclass, option, Interval ...).
    imports = "from __future__ import annotations\n\nfrom emotion_exp.config import *  # noqa: F403\n\n"
    code = imports + config_block.code
    guide_config = temporary_module(folder / "guide_config.py", "guide_config", code, monkeypatch)
    [config_class] = [v for v in vars(guide_config).values() if getattr(v, "__module__", "") == "guide_config"]
    monkeypatch.setattr(cfg, config_class.__name__, config_class, raising=False)  # what the module imports
    # 3. The entry, "in catalog.STAGES".
    imports = f"from emotion_exp.catalog import StageSpec\nfrom guide_config import {config_class.__name__}\n\n"
    entry = temporary_module(
        folder / "guide_entry.py", "guide_entry", f"{imports}ENTRY = {entry_block.code}", monkeypatch
    ).ENTRY
    # 2. The module, under the name the entry gives it.
    temporary_module(folder / "guide_module.py", entry.module, module_block.code, monkeypatch)
    monkeypatch.setitem(catalog.STAGES, entry.name, entry)
    return entry


@pytest.mark.slow
def test_the_guides_stage_joins_the_study_and_a_sweep(
    small_dataset: Path,
    tiny_model_dir: Path,
    isolated_mlflow: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = add_the_guides_stage(tmp_path, monkeypatch)
    assert run_contract_violations(spec) == []
    assert spec.reads_features and spec.sweepable and spec.name in catalog.compared_in_study()
    # The regenerated fields of main would hold the new option (before regenerating, main runs it at its default).
    assert "shrink_threshold: float = same_field(CentroidConfig" in mlproject.render_study_fields()

    name = f"guide-{uuid.uuid4().hex[:8]}"
    arguments = ["main"] + [
        word for key, value in study_params(small_dataset, tiny_model_dir, name).items() for word in (f"--{key}", value)
    ]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    parent = check_study(isolated_mlflow, name)  # the registry's stages, the new one among them, compared
    [child] = [
        run
        for run in mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")
        if run.data.tags.get("stage") == spec.name
    ]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["features_run_id"] == parent.data.tags["features_run_id"]  # the study's extraction
    assert 0 <= parent.data.metrics[f"{spec.name}_val_accuracy"] <= 1

    config = catalog.SweepConfig(
        dataset=str(small_dataset),
        model=str(tiny_model_dir),
        stage=spec.name,
        n_trials=2,
        study_name=f"guide-{uuid.uuid4().hex[:8]}",
        max_length=32,
        umap_max_points=100,
        registered_model="",
    )
    sweep_id = sweep.run(config)
    trials = [
        run
        for run in mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{sweep_id}'", output_format="list")
        if "trial_number" in run.data.tags
    ]
    assert sorted(run.data.tags["trial_number"] for run in trials) == ["0", "1"]
    assert {run.data.tags["stage"] for run in trials} == {spec.name}
    assert all(0 <= float(run.data.params["shrink_threshold"]) <= 1 for run in trials)
    assert len({run.data.params["shrink_threshold"] for run in trials}) == 2
    assert 0 <= mlflow.get_run(sweep_id).data.metrics["best_test_accuracy"] <= 1


def test_the_guide_gives_a_config_a_module_and_an_entry_to_run() -> None:
    """The blocks the slow test runs are there and hold what the guide says (a cheap check of the marks)."""
    config_block, module_block, entry_block = guide_blocks()
    assert "(FeatureHeadConfig)" in config_block.code and "def sweep_space()" in config_block.code
    assert "feature_head.stage(" in module_block.code
    assert entry_block.code.lstrip().startswith("StageSpec(")
