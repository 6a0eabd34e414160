"""`.ci/compat`, the check of the declared lower bounds: what it pins, and what it refuses before building."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / ".ci" / "compat"


def load_script():
    loader = importlib.machinery.SourceFileLoader("compat_script", str(SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    sys.modules[loader.name] = module  # its dataclass looks itself up there
    loader.exec_module(module)
    return module


compat = load_script()


def write_pyproject(folder: Path, dependencies: list[str], test: list[str], docs: list[str]) -> Path:
    def listed(items: list[str]) -> str:
        return "[" + ", ".join(f'"{item}"' for item in items) + "]"

    path = folder / "pyproject.toml"
    path.write_text(
        f'[project]\nname = "x"\ndependencies = {listed(dependencies)}\n'
        f"[project.optional-dependencies]\ntest = {listed(test)}\ndocs = {listed(docs)}\nother = {listed(['y'])}\n"
    )
    return path


def test_lowest_pins_every_declared_bound_of_the_dependencies_and_the_tested_extras(tmp_path: Path) -> None:
    pyproject = write_pyproject(
        tmp_path,
        ["mlflow>=3.11.1", "Scikit_Learn[x] >= 1.7, <2", "torch>=2.4", "tabulate~=0.9; python_version >= '3.10'"],
        ["ruff==0.17.6"],
        ["mkdocs>=1.6"],
    )
    dependencies = compat.direct_dependencies(pyproject)

    lowest = compat.pins("lowest", dependencies, "2.13.0+cpu", ["mlflow==3.12.0"])
    newest = compat.pins("newest", dependencies, "2.13.0+cpu", [])

    assert lowest == {
        "mlflow": "mlflow==3.12.0",  # --pin wins
        "scikit-learn": "Scikit_Learn==1.7",
        "torch": "torch==2.13.0+cpu",  # the local build, never PyPI's CUDA 2.13.0 nor the bound
        "tabulate": "tabulate==0.9",
        "ruff": "ruff==0.17.6",
        "mkdocs": "mkdocs==1.6",
    }  # the `other` extra (y, unbounded) is not the fast tests' and is left out
    assert newest == {"torch": "torch==2.13.0+cpu"}


def test_a_dependency_without_a_lower_bound_is_refused_by_name(tmp_path: Path) -> None:
    pyproject = write_pyproject(tmp_path, ["mlflow>=3.11.1", "pandas<3"], [], [])
    with pytest.raises(compat.BuildError, match=r"'pandas<3' declares no lower bound"):
        compat.direct_dependencies(pyproject)


def test_the_projects_own_dependencies_each_declare_a_lower_bound() -> None:
    names = {dependency.key for dependency in compat.direct_dependencies(REPO_ROOT / "pyproject.toml")}
    assert {"mlflow", "transformers", "torch", "pytest", "mkdocs"} <= names


def test_torch_comes_from_a_local_cpu_wheel_lowest_or_newest_above_the_bound(tmp_path: Path) -> None:
    for version in ("2.11.0+cpu", "2.13.0+cpu", "2.14.1+cpu"):
        (tmp_path / f"torch-{version}-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    (tmp_path / "torch-2.15.0-cp311-cp311-manylinux_2_28_x86_64.whl").touch()  # a CUDA build: never chosen
    (tmp_path / "torch-2.16.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl").touch()  # another Python
    bound = compat.Dependency("torch", ">=2.12", "2.12")

    assert compat.choose_torch("lowest", bound, "cp311", [tmp_path]) == "2.13.0+cpu"
    assert compat.choose_torch("newest", bound, "cp311", [tmp_path]) == "2.14.1+cpu"
    with pytest.raises(compat.BuildError, match=r"no CPU torch wheel for cp313 .*--torch VERSION"):
        compat.choose_torch("lowest", bound, "cp313", [tmp_path, tmp_path / "missing"])


def test_the_wheel_folders_are_pips_find_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # not this machine's config files
    monkeypatch.setenv("PIP_FIND_LINKS", f"{tmp_path / 'a'} {tmp_path / 'b'}")
    assert tmp_path / "b" in compat.find_links()


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["oldest"], "invalid choice: 'oldest'"),
        (["lowest", "--reuse"], "--reuse needs --venv DIR"),
        (["lowest", "--pin", "mlflow"], "expected NAME==VERSION"),
        (["lowest", "--venv", "{full}"], "is not empty: pass --reuse"),
    ],
)
def test_usage_mistakes_exit_2_before_anything_is_built(arguments: list[str], error: str, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").touch()
    arguments = [argument.format(full=tmp_path / "full") for argument in arguments]
    done = subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert error in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["full"]
