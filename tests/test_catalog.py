"""The stage registry is the one place that lists stages: everything else reads it."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from emotion_exp import catalog
from emotion_exp import config as cfg
from emotion_exp.cli import cli
from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "emotion_exp"
NAMES = set(catalog.STAGES)


def stage_names_in(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and n.value in NAMES]


def declarations(path: Path) -> list[str]:
    """Lists of two or more stage names, and comparisons of a stage with another stage's name, in one module.

    A stage's own module may name itself (``stage != 'extract'`` in extract.py).
    """
    module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts) if path.is_relative_to(PACKAGE) else ""
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
    assert dataclasses.is_dataclass(cfg.STAGE_CONFIGS[name]) and cfg.STAGE_CONFIGS[name].__name__ == spec.config
    assert (PACKAGE / f"{spec.module.replace('.', '/')}.py").is_file()
    assert spec.search_space == "" or set(dict(item.split("=") for item in spec.search_space.split(","))) <= set(
        spec.searchable
    )
    line = catalog.closing_line(name, "abc", {}, {})
    assert line is None if spec.closing is None else line.startswith(f"{name}: ") and line.endswith("(run abc)")


def test_the_workflows_read_their_stages_from_the_registry() -> None:
    assert cfg.SWEPT_STAGES == catalog.sweepable() == ("probe", "tfidf", "finetune")
    assert cfg.LEARNING_CURVE_STAGES == catalog.on_the_learning_curve()
    assert list(cfg.STUDY_STAGES) == ["extract", "dummy", "probe", "tfidf", "finetune", "promote"]
    assert catalog.compared_in_study() == ("dummy", "probe", "tfidf", "finetune")
