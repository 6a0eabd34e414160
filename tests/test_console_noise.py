"""What the console shows: the whole first command, line by line; and outside the CLI's own quieting, a
served model's log and a user's mlflow.pyfunc."""

from __future__ import annotations

import io
import re
import subprocess
import time
import uuid
from pathlib import Path

import mlflow
import pytest

from emotion_exp import catalog, console
from emotion_exp.stages import finetune
from tests.helpers import (
    WITHOUT_JOB_RUNNER,
    check_study,
    mlflow_run_command,
    study_params,
    tiny_finetune_config,
)

STUDY = [name for name, spec in catalog.STAGES.items() if spec.in_study] + ["evaluate"]  # the champion, scored
PROGRESS = re.compile(r"^(\w+)(?: (?:train|validation|test))?: +\d+% \([\d,]+/[\d,]+ \w+, .+ \w+/s(?:, .+ left)?\)$")
EPOCH = re.compile(r"^epoch \d+/\d+: validation loss ")
LAUNCHER = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow\.(?:projects|store\.db)[\w.]*: ")
SUMMARY_LABELS = (
    "stage ",
    "Champion: ",
    "Store: ",
    "export MLFLOW_TRACKING_URI=",
    "Open it: ",
    "In the MLflow UI:",
    "  the study's result: http://127.0.0.1:",
    "  its stage runs, best first: http://127.0.0.1:",
    "  its models: http://127.0.0.1:",
    # The small data's 40 validation texts cannot separate the stages: one line says so.
    "40 validation texts are too few to tell stages apart: ",
)


def test_a_progress_line_gives_the_rate_and_the_time_left() -> None:
    # A Spark job's lines said how far it was ("40% (2,000/5,000 texts, 12 s)"), not when it would end.
    stream = io.StringIO()
    pause_s = 0.05  # at least this long per 100 texts: at most 2,000 texts/s
    with console.progress(1000, "predict", stream=stream) as bar:
        for _ in range(10):
            time.sleep(pause_s)
            bar.update(100)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and all(PROGRESS.match(line) for line in lines), lines
    first = re.search(r"\(100/1,000 texts, (\d+) s, ([\d,]+) texts/s, (\d+) s left\)$", lines[0])
    assert first, lines[0]
    rate = int(first.group(2).replace(",", ""))
    assert 0 < rate <= 100 / pause_s
    assert abs(int(first.group(3)) - 900 / rate) <= 1  # the 900 texts left at that rate
    assert lines[-1].startswith("predict: 100% (1,000/1,000 texts, ") and "left" not in lines[-1]


def test_durations_read_at_a_glance() -> None:
    assert [console._duration(s) for s in (0.4, 59, 61, 3599, 3600, 7805)] == [
        "0 s",
        "59 s",
        "1 min 1 s",
        "59 min 59 s",
        "1 h 0 min",
        "2 h 10 min",
    ]


@pytest.mark.slow
def test_the_first_command_runs_the_whole_study_printing_stage_lines_progress_and_the_summary_only(
    small_dataset: Path, tiny_model_dir: Path, tracking_uri: str, isolated_mlflow: str
) -> None:
    # The README's first command, `mlflow run . --env-manager local`, on a small dataset and a tiny encoder:
    # the one run of the whole study in a process of its own, so it checks what the study prints line by
    # line, its summary's layout and what it leaves in the store.
    registered_model = f"study-{uuid.uuid4().hex[:8]}"
    study = {**study_params(small_dataset, tiny_model_dir, registered_model), "epochs": "2"}
    parameters = [f"{key}={value}" for key, value in study.items()]
    command, env = mlflow_run_command("main", isolated_mlflow, tracking_uri, *parameters)
    for name in (console.VERBOSE_ENV, "EMOTION_EXP_DEBUG", *console.QUIET_ENVIRONMENT):
        env.pop(name, None)  # a user's shell has none of them
    finished = subprocess.run(  # noqa: PLW1510 - the return code is asserted with the output
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
    )
    output = finished.stdout  # both streams in the order printed, as on a terminal
    assert finished.returncode == 0, output[-3000:]
    assert "\r" not in output

    project = [line for line in output.splitlines() if not LAUNCHER.match(line)]
    # The launcher's own INFO lines come before any project code runs (docs/reliability.md: MLFLOW_LOGGING_LEVEL).
    assert len(output.splitlines()) - len(project) <= 5, output
    start = next(i for i, line in enumerate(project) if line.startswith("Study finished in "))
    stage_lines, summary = project[:start], project[start + 1 :]
    kinds: dict[str, list[str]] = {"progress": [], "closing": [], "said": [], "other": []}
    for line in stage_lines:
        progress = PROGRESS.match(line)
        if (progress and progress.group(1) in STUDY) or EPOCH.match(line):
            kinds["progress"].append(line)
        elif line.split(":")[0] in STUDY and line.endswith(")") and "(run " in line:
            kinds["closing"].append(line)
        elif line.split(":")[0] in STUDY:
            kinds["said"].append(line)  # a stage's own sentence: finetune's new head, evaluate's scores
        else:
            kinds["other"].append(line)
    assert kinds["other"] == [], output
    assert [line.split(":")[0] for line in kinds["closing"]] == STUDY, kinds["closing"]
    assert len(kinds["said"]) <= 3, kinds["said"]
    for line in summary:
        assert line == "" or line.startswith(SUMMARY_LABELS) or line.split()[0] in STUDY, line
    assert sum(line.startswith(("Champion: ", "Store: ", "Open it: ")) for line in summary) == 3, summary

    # What each line says: 120 training texts, 8 steps an epoch, the summary's table and its last lines.
    assert any(line.startswith("extract train: 100% (120/120 texts, ") for line in kinds["progress"]), output
    assert any(line.startswith("finetune: 100% (16/16 steps, ") for line in kinds["progress"])
    assert any(line.startswith("epoch 1/2: validation loss ") for line in kinds["progress"])
    assert any(line.startswith("epoch 2/2: validation loss ") for line in kinds["progress"])
    assert any("a new, randomly initialised classification head for 6 labels" in line for line in kinds["said"])
    header = ["stage", "val", "accuracy", "val", "F1", "test", "accuracy", "seconds", "val", "accuracy", "minus"]
    assert summary[1].split()[:11] == header, summary
    compared = list(catalog.compared_in_study())
    stages = ["extract", *compared, "evaluate"]  # the registry's model stages; evaluate: the new champion on test
    rows = 2 + len(stages)
    assert [line.split()[0] for line in summary[2:rows]] == stages, summary
    interval = r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]"
    paired = rf"[+-]\d\.\d{{3}} \[[+-]\d\.\d{{3}}, [+-]\d\.\d{{3}}\] vs ({'|'.join(compared)}), p=\S+"
    for line in summary[3 : rows - 1]:  # the model stages: scores with intervals and their paired difference
        assert re.fullmatch(rf"\w+\s+{interval}\s+{interval}\s+{interval}\s+\d+\s+{paired}", line), line
    assert summary[rows + 1].startswith("40 validation texts are too few to tell stages apart: "), summary
    assert summary[rows + 2].startswith("Champion: promoted ("), summary
    assert summary[rows + 2].endswith(f"(models:/{registered_model}@champion)"), summary
    assert summary[rows + 3].startswith(f"Store: {tracking_uri} "), summary
    assert summary[rows + 4] == f"export MLFLOW_TRACKING_URI={tracking_uri}"
    assert summary[rows + 5].startswith("Open it: MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false PYTHONWARNINGS=")
    assert f"mlflow ui --backend-store-uri {tracking_uri} --port " in summary[rows + 5], summary

    parent = check_study(isolated_mlflow, registered_model)
    assert parent.data.tags["mlflow.project.entryPoint"] == "main"


@pytest.fixture
def loud_transformers(monkeypatch: pytest.MonkeyPatch):
    """transformers as a fresh process without emotion-exp's CLI has it: bars on, warnings shown."""
    from transformers.utils import logging as transformers_logging

    monkeypatch.delenv("EMOTION_EXP_VERBOSE", raising=False)
    bar, verbosity = transformers_logging.is_progress_bar_enabled(), transformers_logging.get_verbosity()
    transformers_logging.enable_progress_bar()
    transformers_logging.set_verbosity_warning()
    yield transformers_logging
    transformers_logging.set_verbosity(verbosity)
    (transformers_logging.enable_progress_bar if bar else transformers_logging.disable_progress_bar)()


@pytest.mark.slow
def test_loading_a_transformer_model_prints_no_weight_loading_bar(
    small_dataset: Path, tiny_model_dir: Path, isolated_mlflow: str, tmp_path: Path, loud_transformers, capfd
) -> None:
    run_id = finetune.run(tiny_finetune_config(small_dataset, tiny_model_dir, tmp_path, registered_model=""))
    capfd.readouterr()

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/finetune")

    printed = capfd.readouterr()
    assert "Loading weights" not in printed.err + printed.out
    assert loud_transformers.is_progress_bar_enabled(), "transformers' own setting is restored after loading"
    assert len(model.predict(["i feel so happy today"])) == 1


@pytest.mark.slow
def test_a_stage_on_a_tracking_server_prints_its_closing_line_and_nothing_else(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from emotion_exp.serving import local_server

    def server(port: int) -> list[str]:
        store = f"sqlite:///{tmp_path / 'server.db'}"
        return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host", "127.0.0.1"] + [
            "--port",
            str(port),
        ]

    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "EMOTION_EXP_"))}
    server_env = {**env, **WITHOUT_JOB_RUNNER}
    with local_server(server, "/health", tmp_path / "server.log", env=server_env, cwd=tmp_path) as url:
        finished = subprocess.run(
            [sys.executable, "-m", "emotion_exp", "dummy"],
            env={**env, "MLFLOW_TRACKING_URI": url},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    assert finished.returncode == 0, finished.stderr[-3000:]
    lines = finished.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dummy: val accuracy "), lines  # no "🏃 View run" pair


@pytest.mark.slow  # a Python process per snippet, each importing MLflow's server app
def test_the_docs_admin_snippets_print_no_starlette_deprecation_warning() -> None:
    # Their client imports MLflow's fastapi_app, which imports starlette.middleware.wsgi: a warning to every admin.
    import sys

    from tests.conftest import REPO_ROOT

    snippets = re.findall(r"python -c '(from mlflow\.server[^']+)'\n", (REPO_ROOT / "docs/team-server.md").read_text())
    assert len(snippets) >= 2, "docs/team-server.md has no admin snippets"
    for snippet in snippets:
        # Up to the client, which needs no server (the calls after it do).
        client = snippet[: snippet.index("\n", snippet.index('u = app("basic-auth"'))]
        done = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0 and done.stderr == "", done.stderr
