"""Temperature scaling end to end: an over-confident model is calibrated on validation, and the
pyfunc model returns the calibrated probabilities in process and behind `mlflow models serve`."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import torch

from emotion_exp import analysis, contract, engine, inference, pyfunc
from tests.helpers import LABELS, tiny_finetune_config
from tests.model_server import serving

PROBABILITIES = [contract.probability_column(n) for n in LABELS]
# The tiny model's head, scaled up this much, is sure of labels it barely knows.
OVERCONFIDENCE = 3.0


@pytest.fixture(scope="module")
def overconfident_dir(tiny_model_dir: Path, small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with a head fitted on train (a logistic regression on its pooled output), scaled up.

    A random head predicts one label for every text; the fitted one tells texts apart a little,
    and multiplied by ``OVERCONFIDENCE`` it is sure of every answer.
    """
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    ).eval()
    train = pd.read_csv(small_dataset / "train.csv")
    with torch.no_grad():
        batch = tokenizer(train["text"].tolist(), padding=True, truncation=True, max_length=64, return_tensors="pt")
        pooled = model.bert(**batch).pooler_output.numpy()
        mean, scale = pooled.mean(axis=0), pooled.std(axis=0) + 1e-12
        head = LogisticRegression(C=0.05, max_iter=5000).fit((pooled - mean) / scale, train["label"].map(LABELS.index))
        # The standardisation folded into the head: w / scale, b - (w / scale) . mean.
        weight = head.coef_ / scale
        model.classifier.weight.copy_(torch.tensor(weight * OVERCONFIDENCE))
        model.classifier.bias.copy_(torch.tensor((head.intercept_ - weight @ mean) * OVERCONFIDENCE))
    folder = tmp_path_factory.mktemp("overconfident")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def logits_of(folder: Path, texts: list[str]) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    return inference.run(model, tokenizer, texts, max_length=64, batch_size=16, precision="fp32", logits=True).logits


@pytest.fixture(scope="module")
def calibrated(overconfident_dir: Path, small_dataset: Path) -> dict:
    validation = pd.read_csv(small_dataset / "validation.csv")
    test = pd.read_csv(small_dataset / "test.csv")
    gold = {
        "validation": validation["label"].map(LABELS.index).to_numpy(),
        "test": test["label"].map(LABELS.index).to_numpy(),
    }
    logits = {
        "validation": logits_of(overconfident_dir, validation["text"].tolist()),
        "test": logits_of(overconfident_dir, test["text"].tolist()),
    }
    fit = analysis.fit_temperature(logits["validation"], gold["validation"])
    return {"logits": logits, "gold": gold, "fit": fit, "texts": test["text"].tolist()}


def test_temperature_scaling_lowers_the_validation_ece_of_an_overconfident_model_and_keeps_accuracy(
    calibrated: dict,
) -> None:
    logits, gold, fit = calibrated["logits"]["validation"], calibrated["gold"]["validation"], calibrated["fit"]
    raw = analysis.scaled_probabilities(logits)
    scaled = analysis.scaled_probabilities(logits, fit.temperature)
    accuracy = (raw.argmax(axis=1) == gold).mean()
    assert raw.max(axis=1).mean() > accuracy + 0.3  # over-confident indeed
    assert fit.temperature > 2
    assert analysis.expected_calibration_error(gold, scaled) < analysis.expected_calibration_error(gold, raw) / 2
    assert analysis.mean_loss(gold, scaled) < analysis.mean_loss(gold, raw)
    assert np.array_equal(raw.argmax(axis=1), scaled.argmax(axis=1))


def log_calibrated_model(folder: Path, temperature: float) -> str:
    with mlflow.start_run():
        return pyfunc.log_model(
            pyfunc.TransformerClassifier(max_length=64, batch_size=16, precision="fp32", temperature=temperature),
            LABELS,
            artifacts={pyfunc.TransformerClassifier.ARTIFACT: str(folder)},
            packages=("torch", "transformers"),
        )


def test_the_pyfunc_model_returns_the_calibrated_probabilities(overconfident_dir: Path, calibrated: dict) -> None:
    model_uri = log_calibrated_model(overconfident_dir, calibrated["fit"].temperature)
    # The expected probabilities come from torch fp32 logits: ask the model for that engine (auto may be ONNX).
    torch_fp32 = engine.loading_config("torch", "fp32")
    predictions = mlflow.pyfunc.load_model(model_uri, model_config=torch_fp32).predict(calibrated["texts"])
    expected = analysis.scaled_probabilities(calibrated["logits"]["test"], calibrated["fit"].temperature)
    np.testing.assert_allclose(predictions[PROBABILITIES].to_numpy(), expected, atol=1e-5)
    assert predictions["label"].tolist() == [LABELS[i] for i in expected.argmax(axis=1)]


@pytest.mark.slow
def test_served_probabilities_equal_the_in_process_calibrated_ones(
    overconfident_dir: Path, calibrated: dict, tracking_uri: str, tmp_path: Path
) -> None:
    model_uri = log_calibrated_model(overconfident_dir, calibrated["fit"].temperature)
    texts = calibrated["texts"][:10]
    in_process = mlflow.pyfunc.load_model(model_uri).predict(texts)
    with serving(model_uri, tracking_uri, tmp_path) as url:
        response = requests.post(f"{url}/invocations", json={"inputs": texts}, timeout=60)
    assert response.status_code == 200, response.text
    served = pd.DataFrame(response.json()["predictions"])
    assert served["label"].tolist() == in_process["label"].tolist()
    np.testing.assert_allclose(served[PROBABILITIES].to_numpy(), in_process[PROBABILITIES].to_numpy(), atol=1e-6)
    raw = analysis.scaled_probabilities(calibrated["logits"]["test"][:10])
    assert served[PROBABILITIES].max(axis=1).mean() < raw.max(axis=1).mean() - 0.2  # calibrated, not the raw softmax


@pytest.mark.slow
def test_no_calibrate_keeps_the_raw_softmax(tiny_model_dir: Path, small_dataset: Path, tmp_path: Path) -> None:
    from emotion_exp.stages import finetune

    config = tiny_finetune_config(small_dataset, tiny_model_dir, tmp_path, registered_model="", calibrate=False)
    run = mlflow.get_run(finetune.run(config))
    assert run.data.params["calibrate"] == "False"
    assert "temperature" not in run.data.metrics and "val_ece_uncalibrated" not in run.data.metrics
    assert run.data.metrics["val_ece"] >= 0
    [model] = mlflow.search_logged_models(filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list")
    assert mlflow.pyfunc.load_model(model.model_uri).unwrap_python_model().temperature == 1.0


def test_float32_probabilities_come_out_as_doubles_that_sum_to_one_without_a_sklearn_warning(
    recwarn: pytest.WarningsRecorder,
) -> None:
    logits = torch.from_numpy(np.random.default_rng(0).normal(scale=4, size=(500, len(LABELS))).astype(np.float32))
    probabilities = torch.softmax(logits, dim=-1).numpy()

    frame = pyfunc.predictions_frame(probabilities, LABELS)
    analysis.brier_score(np.zeros(len(frame), dtype=int), frame[PROBABILITIES].to_numpy())

    np.testing.assert_allclose(frame[PROBABILITIES].sum(axis=1), 1.0, rtol=np.sqrt(np.finfo(np.float64).eps))
    np.testing.assert_allclose(frame[PROBABILITIES].to_numpy(), probabilities, rtol=1e-6)
    assert not [w for w in recwarn if "sum to one" in str(w.message)]
