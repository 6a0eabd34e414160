"""The evaluate stage: any logged or registered model on any labelled data, logged like a training stage.

The model is loaded through ``mlflow.pyfunc`` (so it is exactly what ``predict`` and
``mlflow models serve`` run) and scores the texts in batches. The scores are MLflow's own
evaluation of that model: ``mlflow.models.evaluate`` scores the predicted labels (accuracy, F1,
precision, recall, the confusion matrix and per-class metrics, named ``test_accuracy_score``...),
and the scores it lacks are handed to it as extra metrics (``log_evaluation``): the 95% intervals,
log loss, calibration, and the scores under the names every stage logs (``test_accuracy``,
``test_f1_weighted``: promote and the comparison go by those). So they are one evaluation,
linked to the model (its ``model_id``) and the data in MLflow's Models tab. Beside it, in the
same run: the error analysis, the reliability diagram, the classification report and the
per-text predictions that ``compare`` reads (``skeleton.log_predictions``, the one per-split
function every model stage's ``finish`` uses). MLflow predicts nothing itself here: it evaluates
the predictions made once, in batches, with their probabilities.

It does not use ``skeleton.open_stage``, which loads the three splits of a training dataset;
evaluate has one labelled set (``skeleton.log_labelled_input`` records it). The run also gets the
model URI and the registered version it resolved to, and the version is tagged
``evaluated_on_<digest prefix>_accuracy`` and ``_f1_weighted``.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import mlflow
import mlflow.data
import numpy as np
import pandas as pd
from mlflow.metrics import MetricValue
from mlflow.models import EvaluationMetric, make_metric

from emotion_exp import console, contract, data, engine, pyfunc, registry, significance, tracking
from emotion_exp.config import EvaluateConfig
from emotion_exp.data import LabelledData
from emotion_exp.errors import UserError
from emotion_exp.stages.predict import predict_batches
from emotion_exp.stages.skeleton import SPLIT_PREFIX, log_labelled_input, log_predictions, log_table

EVALUATOR_CONFIG = {"log_model_explainability": False}
"""MLflow's default evaluator without its SHAP explanations, which have no numeric features to explain here."""
LOWER_IS_BETTER = ("loss", "ece", "brier")


def model_labels(model: Any, model_uri: str) -> tuple[str, ...]:
    """The model's label names, from the ``prob_<label>`` columns of its output signature."""
    schema = model.metadata.get_output_schema()
    prefix = contract.probability_column("")
    names = tuple(
        name.removeprefix(prefix) for name in (schema.input_names() if schema else []) if name.startswith(prefix)
    )
    if not names:
        raise UserError(
            f"Model {model_uri} declares no {contract.probability_column('<label>')} output columns, so its "
            "probabilities cannot be scored; evaluate takes the text classifiers emotion-exp logs "
            "(finetune, probe, tfidf)."
        )
    return names


def match_labels(
    labels: pd.Series, label_names: Sequence[str], mapping: Mapping[str, str], model_uri: str
) -> tuple[np.ndarray, list[str]]:
    """The data's labels as ids of the model's labels, and the model's labels the data lacks.

    A label is first renamed by ``mapping`` (``--label_map``), then matched by name; an integer
    that is no label name is read as an id in the model's label order. Labels the model does
    not know are a ``UserError`` naming them.
    """
    index = {name: i for i, name in enumerate(label_names)}

    def label_id(value: Any) -> int | None:
        value = mapping.get(str(value), value)
        if str(value) in index:
            return index[str(value)]
        if isinstance(value, (int, np.integer)) and 0 <= value < len(label_names):
            return int(value)
        return None

    ids = labels.map(label_id)
    unknown = labels[ids.isna()].map(lambda value: mapping.get(str(value), value))
    if len(unknown):
        counts = unknown.astype(str).value_counts()
        found = ", ".join(f"{label!r} ({count} rows)" for label, count in counts.head(10).items())
        raise UserError(
            f"The data has label(s) that model {model_uri} does not know: {found}"
            f"{', ...' if len(counts) > 10 else ''}. Its labels are {', '.join(label_names)} (or ids 0.."
            f"{len(label_names) - 1} in that order); rename them with --label_map old=new,... or remove those rows."
        )
    ids = ids.to_numpy(dtype=np.int64)
    missing = [name for i, name in enumerate(label_names) if i not in set(ids)]
    return ids, missing


def log_evaluation(
    scores: dict[str, float],
    *,
    labelled: LabelledData,
    gold: np.ndarray,
    predicted: np.ndarray,
    label_names: Sequence[str],
    model_id: str | None,
) -> None:
    """Log a split's ``scores`` (``skeleton.log_predictions``'s) as MLflow's evaluation of the model ``model_id``.

    ``mlflow.models.evaluate`` scores the predicted label names against the gold ones over all the
    model's labels (``<prefix>_accuracy_score``, ``_f1_score``, ``_precision_score``,
    ``_recall_score`` weighted by support, ``_example_count``, ``<prefix>_confusion_matrix.png``,
    ``per_class_metrics.csv``) and logs ``scores`` with them as its extra metrics.
    """
    prefix = f"{SPLIT_PREFIX[labelled.split]}_"
    names = np.asarray(label_names, dtype=object)
    frame = pd.DataFrame(
        {"text": labelled.frame["text"].tolist(), "label": names[gold], "prediction": names[predicted]}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # as in log_labelled_input: a local file is a local file
        dataset = mlflow.data.from_pandas(
            frame,
            source=labelled.source,
            targets="label",
            predictions="prediction",
            name=labelled.dataset_name,
            digest=labelled.digest[:16],
        )
    config = {**EVALUATOR_CONFIG, "metric_prefix": prefix, "label_list": list(label_names)}
    from sklearn.exceptions import UndefinedMetricWarning

    with warnings.catch_warnings():
        # A label the data lacks scores 0 there, and scikit-learn warns once per metric: `run` says it in one line.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        mlflow.models.evaluate(
            data=dataset,
            model_type="classifier",
            model_id=model_id,
            evaluators=["default"],
            evaluator_config={"default": config},
            extra_metrics=[reported(name.removeprefix(prefix), value) for name, value in scores.items()],
        )


def reported(name: str, value: float) -> EvaluationMetric:
    """A score computed beside MLflow's evaluator (an interval, the calibration), handed to its evaluation as it is."""

    def score(predictions: pd.Series, targets: pd.Series) -> MetricValue:
        return MetricValue(aggregate_results={name: value})

    return make_metric(eval_fn=score, greater_is_better=not name.endswith(LOWER_IS_BETTER), name=name)


def run(config: EvaluateConfig, *, labelled: LabelledData | None = None) -> str:
    """Score ``config.model_uri`` on the labelled data and log everything; return the run id.

    ``labelled`` is data a caller has loaded already (``main`` passes its test split);
    otherwise ``config.dataset`` is read: a file whole, a folder or hub dataset by ``--split``.
    """
    if labelled is None:
        labelled = data.load_labelled(config.dataset, config.split, config.text_column, config.label_column)
    model = registry.load_model(config.model_uri, engine.loading_config(config.runtime, config.precision)).model
    label_names = model_labels(model, config.model_uri)
    gold, missing = match_labels(labelled.frame["label"], label_names, config.label_mapping(), config.model_uri)
    version = registry.resolve_version(config.model_uri)
    tracking.require_edit("evaluate", registered_model=version[0] if version else None)  # before the scoring
    texts = labelled.frame["text"].tolist()
    with tracking.stage_run("evaluate", config) as evaluate_run:
        log_labelled_input(labelled)
        tags = {"model_uri": config.model_uri, "evaluated_split": labelled.split, "whole_file": labelled.whole_file}
        if version:
            tags |= {"registered_model": version[0], "registered_version": version[1]}
        if missing:
            note = (
                f"The data holds {len(label_names) - len(missing)} of the model's {len(label_names)} labels "
                f"(none of: {', '.join(missing)}); the scores cover the labels present, and the model may still "
                "predict the others."
            )
            tags |= {"labels_missing": ",".join(missing), "note": note}
            console.say(f"evaluate: {note}")
        mlflow.set_tags({key: str(value) for key, value in (tags | pyfunc.engine_tags(model)).items()})
        started = time.perf_counter()
        predictions = predict_batches(model, texts, config.batch_size, stage="evaluate")
        seconds = time.perf_counter() - started
        probabilities = predictions[[contract.probability_column(name) for name in label_names]].to_numpy()
        as_mlflow_evaluation = functools.partial(
            log_evaluation,
            labelled=labelled,
            gold=gold,
            predicted=probabilities.argmax(axis=1),
            label_names=label_names,
            model_id=model.model_id,
        )
        evaluation = log_predictions(
            labelled.split,
            texts,
            gold,
            probabilities,
            label_names,
            error_analysis=True,
            log_scores=as_mlflow_evaluation,
        )
        # Per-text predictions as the model stages keep them: `compare` sets two evaluations of the same data side
        # by side (one model under two runtimes, say onnx and onnx-int8).
        log_table(
            significance.predictions_table(labelled.split, gold, probabilities, label_names),
            significance.PREDICTIONS_ARTIFACT,
        )
        mlflow.log_metric("texts_per_second", len(texts) / max(seconds, 1e-9))
        if version:
            key = f"evaluated_on_{labelled.digest[:12]}"
            registry.set_version_tags(
                *version,
                {
                    f"{key}_accuracy": evaluation.shown("accuracy"),
                    f"{key}_f1_weighted": evaluation.shown("f1_weighted"),
                },
            )
        resolved = f" (version {version[1]} of {version[0]})" if version else ""
        console.say(
            f"evaluate: {config.model_uri}{resolved} on {len(texts)} texts of {labelled.name} "
            f"({'whole file' if labelled.whole_file else labelled.split}): accuracy {evaluation.shown('accuracy')}, "
            f"weighted F1 {evaluation.shown('f1_weighted')} (95% intervals)."
        )
        return evaluate_run.info.run_id
