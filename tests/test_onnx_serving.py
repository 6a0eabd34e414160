"""The fine-tuned model's runtime, chosen where it loads, and its ONNX export serving where torch is not installed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import tomllib

from emotion_exp import batching, engine, models, onnx_runtime, pyfunc
from emotion_exp.serving import local_server, model_server_command
from tests.helpers import LABELS, sample_texts

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBABILITIES = [f"prob_{label}" for label in LABELS]
# What a torch-free environment lacks, made so in a subprocess of this one: importing them fails.
WITHOUT_TORCH = "import sys\nfor name in ('torch', 'transformers'):\n    sys.modules[name] = None\n"


@pytest.fixture(scope="module")
def classifier_folder(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny encoder with a seeded six-label head, saved with its tokenizer (``save_pretrained``)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=len(LABELS), id2label=dict(enumerate(LABELS))
    )
    folder = tmp_path_factory.mktemp("tiny-classifier") / "classifier"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def logged(classifier_folder: Path, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny classifier logged as the finetune stage logs it (torch weights and ONNX serving folder); its URI."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))  # the export cache
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment("onnx-serving")
        with mlflow.start_run():
            yield pyfunc.log_model(
                pyfunc.TransformerClassifier(max_length=32, batch_size=16, precision="fp32"),
                LABELS,
                artifacts=pyfunc.TransformerClassifier.serving_artifacts(classifier_folder),
                packages=("torch", "transformers", "onnxruntime"),
            )


def predictions(uri: str, texts: list[str], runtime: str) -> tuple[pd.DataFrame, object]:
    """``uri``'s predictions on ``runtime`` in fp32: torch fp32 is the reference (a model logged with precision auto
    runs bf16 where the CPU has it)."""
    model = mlflow.pyfunc.load_model(uri, model_config={pyfunc.RUNTIME: runtime, pyfunc.PRECISION: "fp32"})
    return model.predict(pd.DataFrame({"text": texts})), pyfunc.python_model_of(model)


def assert_same_predictions(theirs: pd.DataFrame, torch_fp32: pd.DataFrame) -> None:
    """Labels equal on at least 99.9% of texts, probabilities within 1e-4 (issue 25's exactness)."""
    assert len(theirs) == len(torch_fp32)
    assert float((theirs["label"] == torch_fp32["label"]).mean()) >= 0.999
    assert np.abs(theirs[PROBABILITIES].to_numpy() - torch_fp32[PROBABILITIES].to_numpy()).max() <= 1e-4


def test_the_onnx_serve_extra_names_what_the_served_model_logs() -> None:
    extra = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {requirement.split(">")[0].split("=")[0] for requirement in extra["onnx-serve"]}
    assert names == set(pyfunc.ONNX_SERVE_PACKAGES)


def test_the_tokenizer_json_batches_as_the_transformers_tokenizer(classifier_folder: Path, logged: str) -> None:
    from transformers import AutoTokenizer

    serving = Path(mlflow.artifacts.download_artifacts(logged)) / "artifacts" / "onnx"
    transformers_tokenizer = AutoTokenizer.from_pretrained(classifier_folder)
    fast = onnx_runtime.FastTokenizer(serving)
    texts = [*sample_texts(200), "so " * 300, "ok"]
    ours, theirs = batching.tokenize(texts, fast, 32), batching.tokenize(texts, transformers_tokenizer, 32)
    assert ours == theirs and ours.truncated >= 1
    assert fast.label_names == list(LABELS)
    for (positions, batch), (their_positions, their_batch) in zip(
        batching.sorted_batches(ours, fast, 16, tensors="np"),
        batching.sorted_batches(theirs, transformers_tokenizer, 16, tensors="np"),
    ):
        assert positions.tolist() == their_positions.tolist()
        for name in ("input_ids", "attention_mask"):
            np.testing.assert_array_equal(batch[name], their_batch[name])


def test_the_runtime_is_chosen_at_load_and_onnx_predicts_as_torch(logged: str) -> None:
    texts = sample_texts(1000)
    torch_fp32, torch_model = predictions(logged, texts, "torch")
    assert (torch_model.runtime, torch_model.runtime_reason) == ("torch", "asked for")
    onnx, onnx_model = predictions(logged, texts, "onnx")
    assert onnx_model.runtime == "onnx" and onnx_model._session is not None
    assert_same_predictions(onnx, torch_fp32)
    int8, int8_model = predictions(logged, texts[:50], "onnx-int8")
    assert int8_model.runtime == "onnx-int8" and int8_model._session.path.name.endswith("-int8.onnx")
    assert set(int8["label"]) <= set(LABELS)


def test_a_model_keeps_the_precision_it_was_logged_with_and_auto_resolves_where_it_loads(
    classifier_folder: Path, logged: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "native_bf16", lambda: True)  # a CPU with native bf16, as far as the engine can tell
    with mlflow.start_run():
        auto = pyfunc.log_model(
            pyfunc.TransformerClassifier(max_length=32),
            LABELS,
            artifacts={pyfunc.TransformerClassifier.ARTIFACT: str(classifier_folder)},
        )
    fp32 = mlflow.pyfunc.load_model(logged)  # logged with precision fp32
    assert fp32.model_config[pyfunc.PRECISION] == "fp32"
    chosen = pyfunc.python_model_of(fp32).engine
    assert (chosen.runtime, chosen.precision, chosen.reason) == ("onnx", "fp32", "fp32 asked for: ONNX Runtime fp32")

    loaded = mlflow.pyfunc.load_model(auto)
    assert loaded.model_config[pyfunc.PRECISION] == "auto"
    chosen = pyfunc.python_model_of(loaded).engine
    assert (chosen.runtime, chosen.precision) == ("torch", "bf16")
    asked = mlflow.pyfunc.load_model(auto, model_config=engine.loading_config("torch", "fp32"))
    assert pyfunc.python_model_of(asked).engine.precision == "fp32"


def test_a_model_logged_without_its_export_is_exported_at_load(classifier_folder: Path, logged: str) -> None:
    with mlflow.start_run():
        uri = pyfunc.log_model(
            pyfunc.TransformerClassifier(max_length=32, batch_size=16, precision="fp32"),
            LABELS,
            artifacts={pyfunc.TransformerClassifier.ARTIFACT: str(classifier_folder)},
        )
    texts = sample_texts(100)
    onnx, model = predictions(uri, texts, "onnx")
    assert model.runtime == "onnx" and model._session is not None
    assert_same_predictions(onnx, predictions(logged, texts, "torch")[0])


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_without_torch_the_logged_export_serves_and_asking_for_torch_is_one_clear_error(
    logged: str, tracking_uri: str, tmp_path: Path
) -> None:
    texts = sample_texts(300)
    script = WITHOUT_TORCH + (
        "import json, mlflow, pandas as pd\n"
        "from emotion_exp import pyfunc\n"
        f"model = mlflow.pyfunc.load_model({logged!r})\n"
        f"model.predict(pd.DataFrame({{'text': {texts!r}}})).to_parquet('served.parquet')\n"
        "served = pyfunc.python_model_of(model)\n"
        "try:\n"
        f"    mlflow.pyfunc.load_model({logged!r}, model_config={{'runtime': 'torch'}})\n"
        "    refused = ''\n"
        "except Exception as error:\n"
        "    refused = f'{type(error).__name__}: {error}'\n"
        "print(json.dumps({'runtime': served.runtime, 'reason': served.runtime_reason, 'refused': refused,\n"
        "    'torch_loaded': sys.modules.get('torch') is not None}))\n"
    )
    environment = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["runtime"] == "onnx" and "torch is not installed" in report["reason"]
    assert not report["torch_loaded"]
    assert report["refused"] == (
        "UserError: runtime torch needs torch and transformers, not installed here: pass runtime auto or onnx."
    )
    assert_same_predictions(pd.read_parquet(tmp_path / "served.parquet"), predictions(logged, texts, "torch")[0])


def onnx_serve_venv(requirements: Path) -> Path:
    """A virtual environment with only ``requirements`` (the model's pinned ``[onnx-serve]``), built once.

    Kept under ``~/.cache/emotion-exp/venvs`` by the requirements' digest, so CI pays the install once;
    a build that did not finish (no ``complete`` marker) is built again.
    """
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    venv = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "emotion-exp" / "venvs" / digest
    if (venv / "complete").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(requirements)]
    subprocess.run(pip, check=True, timeout=1200)
    (venv / "complete").write_text(requirements.read_text())
    return venv


def documented_download(model_uri: str) -> str:
    """docs/serving.md's commands that copy the torch-free part of a model, for ``model_uri``."""
    lines = (REPO_ROOT / "docs/serving.md").read_text().splitlines()
    start = lines.index(f"<!-- run by: tests/test_onnx_serving.py::{FRESH_ENVIRONMENT_TEST} -->") + 2
    end = lines.index("```", start)
    return "\n".join(lines[start:end]).replace("models:/emotion-classifier@champion", model_uri)


FRESH_ENVIRONMENT_TEST = "test_a_fresh_environment_without_torch_serves_the_finetuned_model"


@pytest.mark.slow
def test_a_fresh_environment_without_torch_serves_the_finetuned_model(
    finetuned_champion: tuple[str, str], tracking_uri: str, tmp_path: Path
) -> None:
    name, _ = finetuned_champion
    uri = f"models:/{name}@champion"
    environment = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"  # this mlflow
    subprocess.run(["bash", "-e", "-c", documented_download(uri)], cwd=tmp_path, env=environment, check=True)
    model_folder = tmp_path / "served"
    assert (model_folder / "artifacts" / "onnx" / "model.onnx").is_file()
    assert not (model_folder / "artifacts" / "classifier").exists(), "the torch weights were downloaded"
    venv = onnx_serve_venv(model_folder / "requirements.txt")
    python = str(venv / "bin" / "python")
    missing = subprocess.run([python, "-c", "import torch"], check=False, capture_output=True, text=True)
    assert missing.returncode != 0 and "No module named 'torch'" in missing.stderr
    texts = sample_texts(200)
    # The folder, not the registry: the served environment knows nothing of this one (no emotion-exp installed).
    command = model_server_command(str(model_folder))
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "PYTHON"))}
    log = tmp_path / "server.log"
    with local_server(command, "/ping", log, env=environment, cwd=tmp_path, bin_dir=venv / "bin") as url:
        answer = requests.post(f"{url}/invocations", json={"inputs": texts}, timeout=120)
        nested = requests.post(f"{url}/invocations", json={"inputs": [texts[:2], texts[2:4]]}, timeout=120)
    assert answer.status_code == 200, answer.text
    # mlflow-skinny's server, too, hands the model a list of lists whole, and the model refuses it (not 2 labels).
    assert nested.status_code == 400 and "rows of several values" in nested.json()["message"], nested.text[:300]
    # No torch in that environment: the answer came from the logged ONNX export.
    assert_same_predictions(pd.DataFrame(answer.json()["predictions"]), predictions(uri, texts, "torch")[0])
    assert "mismatches between the model's dependencies" not in log.read_text()


def _stage_run(*args: str) -> mlflow.entities.Run:
    from click.testing import CliRunner

    from emotion_exp.cli import cli

    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return mlflow.search_runs(output_format="list", order_by=["attributes.start_time DESC"], max_results=1)[0]


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_predict_and_evaluate_run_the_runtime_asked_for_and_tag_it(logged: str, small_dataset: Path) -> None:
    source = small_dataset / "test.csv"
    outputs = {}
    for runtime in ("torch", "onnx"):
        target = Path(f"{runtime}.csv")
        run = _stage_run("predict", "--input", str(source), "--output", str(target), "--model_uri", logged,
                         "--runtime", runtime, "--precision", "fp32")  # fmt: skip
        assert (run.data.tags["runtime"], run.data.tags["runtime_reason"]) == (runtime, "asked for")
        assert run.data.tags["resolved_precision"] == "fp32"
        outputs[runtime] = pd.read_csv(target)
    assert_same_predictions(outputs["onnx"], outputs["torch"])
    scores = {}
    for runtime in ("torch", "onnx"):
        run = _stage_run("evaluate", "--model_uri", logged, "--dataset", str(small_dataset), "--runtime", runtime)
        assert run.data.tags["runtime"] == runtime
        scores[runtime] = run.data.metrics["test_accuracy"]
    assert scores["onnx"] == scores["torch"]


def test_the_probe_model_runs_its_encoder_on_the_runtime_asked_for(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.linear_model import LogisticRegression

    from emotion_exp import features, models

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the export cache
    texts = sample_texts(300)
    encoder = features.load_encoder(models.resolve(str(tiny_model_dir)), "fp32", 1)
    train = features.extract(texts, encoder, pooling="mean", max_length=32, progress=False).features
    labels = np.arange(len(texts)) % len(LABELS)
    with mlflow.start_run():
        uri = pyfunc.log_model(
            pyfunc.ProbeClassifier(
                LogisticRegression(max_iter=200).fit(train, labels), LABELS, pooling="mean", max_length=32,
                precision="fp32",
            ),
            LABELS,
            artifacts={pyfunc.ProbeClassifier.ARTIFACT: str(tiny_model_dir)},
        )  # fmt: skip
    by_runtime = {}
    for runtime in ("torch", "onnx"):
        frame, model = predictions(uri, texts, runtime)
        assert (model.runtime, model._encoder.runtime) == (runtime, runtime)
        by_runtime[runtime] = frame
    assert_same_predictions(by_runtime["onnx"], by_runtime["torch"])


def test_two_loads_of_a_probe_model_export_its_encoder_once(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.linear_model import LogisticRegression

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the export cache
    features = np.random.default_rng(0).normal(size=(60, 32))
    probe = pyfunc.ProbeClassifier(
        LogisticRegression(max_iter=200).fit(features, np.arange(60) % len(LABELS)), LABELS, pooling="cls",
        max_length=32,
    )  # fmt: skip
    with mlflow.start_run():
        uri = pyfunc.log_model(probe, LABELS, artifacts={pyfunc.ProbeClassifier.ARTIFACT: str(tiny_model_dir)})

    # Two downloads, as from a tracking server (each load of a runs:/ or models:/ URI gets a new folder).
    downloads = [tmp_path / "first", tmp_path / "second"]
    for folder in downloads:
        folder.mkdir()
    config = {pyfunc.RUNTIME: "onnx"}
    loaded = [mlflow.pyfunc.load_model(uri, model_config=config, dst_path=str(folder)) for folder in downloads]
    loads = [pyfunc.python_model_of(model) for model in loaded]

    assert len({model._encoder.model.config.name_or_path for model in loads}) == 2
    assert {model._encoder.session.path for model in loads} == set(onnx_runtime.cache_dir().glob("*.onnx"))
    assert len(list(onnx_runtime.cache_dir().iterdir())) == 1
