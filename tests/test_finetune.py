"""finetune on the tiny model and small data: one run with everything, a registered model that
predicts, Ctrl-C then resume into the same run, and clear refusals of resumes that cannot work."""

from __future__ import annotations

import dataclasses
import os
import signal
import uuid
import weakref
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from transformers import TrainerCallback, TrainerState

from emotion_exp import data, models, pyfunc, registry, tracking
from emotion_exp.config import DataConfig, FinetuneConfig, subset
from emotion_exp.errors import UserError
from emotion_exp.finetune import TrainingInterrupted
from emotion_exp.stages import finetune as stage
from tests.helpers import LABELS, artifacts, assert_analysis_logged, scores_of_the_model

PROBABILITIES = [f"prob_{label}" for label in LABELS]
TRAIN_ROWS = 120


def make_config(tiny_model_dir: Path, small_dataset: Path, tmp_path: Path, **overrides) -> FinetuneConfig:
    values = {
        "dataset": str(small_dataset),
        "model": str(tiny_model_dir),
        "epochs": 1,
        "batch_size": 16,
        "output_dir": str(tmp_path / "checkpoints"),
        "registered_model": "",
        "umap_max_points": 100,
    }
    return FinetuneConfig(**{**values, **overrides})


def steps(run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, metric))


@pytest.mark.slow
def test_finetune_fp32_predicts_in_fp32_on_a_cpu_with_native_bf16(
    tiny_model_dir: Path, small_dataset: Path, tmp_path: Path, isolated_mlflow: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = stage.run(make_config(tiny_model_dir, small_dataset, tmp_path, precision="fp32", max_length=32))
    monkeypatch.setattr(models, "native_bf16", lambda: True)  # what a CPU with AVX-512 BF16 or AMX answers

    model = mlflow.pyfunc.load_model(registry.model_of_run(run_id))

    assert model.model_config[pyfunc.PRECISION] == "fp32"
    assert pyfunc.python_model_of(model).engine.precision == "fp32"


class CtrlCAt(TrainerCallback):
    """Sends this process SIGINT at the end of a given optimizer step, as Ctrl-C would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            signal.raise_signal(signal.SIGINT)


@pytest.mark.slow
def test_one_epoch_logs_everything_in_one_run_and_registers_a_model_that_predicts(
    tiny_model_dir: Path, small_dataset: Path, tmp_path: Path, isolated_mlflow: str
) -> None:
    name = f"finetune-test-{uuid.uuid4().hex[:8]}"
    config = make_config(tiny_model_dir, small_dataset, tmp_path, registered_model=name)

    run_id = stage.run(config)

    [run] = mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")  # no stray runs
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "finetune"
    assert run.data.params["learning_rate"] == "0.00015"
    assert run.data.params["resolved_precision"] in ("bf16", "fp32")
    splits = data.load_splits(subset(config, DataConfig))
    expected = {
        **scores_of_the_model(f"models:/{name}/1", splits, "validation"),
        **scores_of_the_model(f"models:/{name}/1", splits, "test"),
    }
    assert {m: run.data.metrics[m] for m in expected} == pytest.approx(expected)
    assert run.data.metrics["train_samples_per_second"] > 0
    assert run.data.metrics["train_seconds"] > 0
    assert 1 <= int(run.data.tags["threads_used"]) <= len(os.sched_getaffinity(0))
    steps_per_epoch = -(-TRAIN_ROWS // config.batch_size)
    assert steps(run_id, "train_loss")[0] == 1 and steps(run_id, "train_loss")[-1] == steps_per_epoch
    for metric in ("eval_loss", "eval_accuracy", "eval_f1_weighted"):
        assert steps(run_id, metric) == [steps_per_epoch]
    assert {
        "plots/label_distribution.png",
        "plots/umap_finetuned_overlay.png",
        "plots/umap_finetuned_per_label.png",
        "plots/confusion_matrix_validation.png",
        "plots/confusion_matrix_test.png",
        "reports/classification_report_validation.json",
        "reports/classification_report_test.json",
        "model_card.md",
    } <= artifacts(run_id)
    assert len(run.inputs.dataset_inputs) == 3
    assert_analysis_logged(run_id)
    assert run.data.metrics["temperature"] > 0 and 0 <= run.data.metrics["val_ece_uncalibrated"] <= 1
    # A finished run cannot be resumed and MLflow holds its model: its checkpoint folder is gone.
    assert not (Path(config.output_dir) / run_id).exists()

    version = run.data.tags["registered_version"]
    model_version = MlflowClient().get_model_version(name, version)
    assert model_version.run_id == run_id
    assert "## Scores" in model_version.description and "validation" in model_version.description
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    predictions = model.predict(pd.DataFrame({"text": ["i feel so happy today", "im scared", "meh"]}))
    assert list(predictions.columns) == ["label", *PROBABILITIES]
    assert set(predictions["label"]) <= set(LABELS)
    assert predictions[PROBABILITIES].sum(axis=1).round(5).tolist() == [1.0, 1.0, 1.0]
    assert model.metadata.signature.outputs.input_names() == ["label", *PROBABILITIES]
    assert model.predict(["i am glad", "so lonely tonight"])["label"].isin(LABELS).all()
    assert model.unwrap_python_model().temperature == pytest.approx(run.data.metrics["temperature"])

    with pytest.raises(UserError, match="already FINISHED"):
        stage.run(make_config(tiny_model_dir, small_dataset, tmp_path, resume=run_id))


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_continues_the_same_run_as_if_never_stopped(
    tiny_model_dir: Path, small_dataset: Path, tmp_path: Path, isolated_mlflow: str, capsys: pytest.CaptureFixture
) -> None:
    config = make_config(tiny_model_dir, small_dataset, tmp_path, epochs=2)
    steps_per_epoch = -(-TRAIN_ROWS // config.batch_size)
    stop_at = steps_per_epoch + 3  # in the middle of the second epoch
    handler_before = signal.getsignal(signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        stage.run(config, callbacks=[CtrlCAt(stop_at)])

    [run] = mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")
    run_id = run.info.run_id
    assert run.info.status == "KILLED"
    assert [p.name for p in (Path(config.output_dir) / run_id).iterdir()] == [f"checkpoint-{stop_at}"]
    assert f"emotion-exp finetune --resume {run_id}" in capsys.readouterr().err
    assert steps(run_id, "train_loss") == list(range(1, stop_at + 1))
    assert steps(run_id, "eval_loss") == [steps_per_epoch]
    # The stop handler is gone again: whatever handled Ctrl-C before handles it now. (Once in a full CI run an
    # earlier test had left SIGINT ignored, which this test then saw; not reproduced since.)
    assert signal.getsignal(signal.SIGINT) is handler_before

    with pytest.raises(UserError, match=r"pass them unchanged \(--learning_rate was 0.00015, now 0.001\)"):
        stage.run(make_config(tiny_model_dir, small_dataset, tmp_path, epochs=2, learning_rate=1e-3, resume=run_id))
    assert tracking.find_run(run_id).status == "KILLED"

    assert stage.run(make_config(tiny_model_dir, small_dataset, tmp_path, epochs=2, resume=run_id)) == run_id

    reference_id = stage.run(config)
    runs = {r.info.run_id: r for r in mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")}
    assert set(runs) == {run_id, reference_id}
    resumed, reference = runs[run_id], runs[reference_id]
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed_from"].endswith(f"checkpoint-{stop_at}")
    assert steps(run_id, "train_loss") == list(range(1, 2 * steps_per_epoch + 1))
    assert steps(run_id, "eval_accuracy") == [steps_per_epoch, 2 * steps_per_epoch]
    # Optimizer, schedule, RNG and data order all continue: the result is the uninterrupted run's.
    for metric in ("eval_loss", "val_accuracy", "val_f1_weighted", "test_accuracy", "temperature", "val_ece"):
        assert resumed.data.metrics[metric] == pytest.approx(reference.data.metrics[metric], abs=1e-5)


def test_resume_refuses_an_unknown_run_and_a_run_without_checkpoints(
    tiny_model_dir: Path, small_dataset: Path, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="--resume 0123abcd: no such run in the MLflow store"):
        stage.run(make_config(tiny_model_dir, small_dataset, tmp_path, resume="0123abcd"))

    with mlflow.start_run() as run:
        mlflow.set_tag("stage", "finetune")
    MlflowClient().set_terminated(run.info.run_id, "KILLED")
    with pytest.raises(UserError, match="no checkpoint-<step> folder in .*Start a new run without --resume"):
        stage.run(make_config(tiny_model_dir, small_dataset, tmp_path, resume=run.info.run_id))


def test_the_logging_callback_logs_only_on_the_main_process() -> None:
    with mlflow.start_run() as run:
        callback = stage.MlflowMetricsCallback(run.info.run_id)
        callback.on_log(None, TrainerState(global_step=5, is_world_process_zero=False), None, logs={"loss": 1.0})
        callback.on_log(
            None, TrainerState(global_step=7), None, logs={"loss": 0.5, "eval_accuracy": 0.25, "epoch": 1.0}
        )
        callback.on_log(None, TrainerState(global_step=7), None, logs={"train_runtime": 3.0, "train_loss": 0.7})
    history = {
        m: [(x.step, x.value) for x in MlflowClient().get_metric_history(run.info.run_id, m)]
        for m in ("train_loss", "eval_accuracy")
    }
    assert history == {"train_loss": [(7, 0.5)], "eval_accuracy": [(7, 0.25)]}


def test_a_stop_request_landing_during_the_processes_vote_stops_them_all_at_the_next_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch
    from transformers import TrainerControl

    from emotion_exp import distributed, finetune

    stopper = finetune._StopOnRequest()
    votes = []

    def all_reduce(vote: torch.Tensor, op: object) -> None:  # the other process asked for nothing
        votes.append(int(vote.item()))
        if len(votes) == 1:
            stopper.requested = True  # SIGTERM handled just after the first vote, before its result is read

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)

    first = stopper.on_step_end(None, None, TrainerControl())
    second = stopper.on_step_end(None, None, TrainerControl())

    assert votes == [0, 1]
    assert not first.should_training_stop  # the vote said go on: every process takes the next step
    assert second.should_training_stop and second.should_save  # the request was kept for the next vote


def test_training_arguments_are_our_set_up(tmp_path: Path) -> None:
    from emotion_exp.finetune import training_arguments

    args = training_arguments(FinetuneConfig(), tmp_path, "bf16", steps_per_epoch=500)
    assert (args.train_sampling_strategy, args.warmup_steps, args.lr_scheduler_type.value) == (
        "group_by_length",
        0.1,
        "linear",
    )
    assert (args.eval_strategy.value, args.save_strategy.value, args.report_to) == ("epoch", "epoch", [])
    assert args.bf16 and not args.load_best_model_at_end and args.logging_steps == 25
    stopping = training_arguments(FinetuneConfig(early_stopping_patience=2), tmp_path, "fp32", steps_per_epoch=3)
    assert stopping.load_best_model_at_end and stopping.metric_for_best_model == "eval_f1_weighted"
    assert not stopping.bf16 and stopping.logging_steps == 1


def test_the_phases_prepare_sorted_rows_resume_only_from_a_complete_checkpoint_and_free_the_optimizer(
    tiny_model_dir: Path, small_dataset: Path, tmp_path: Path
) -> None:
    from emotion_exp import data, finetune, models
    from emotion_exp.config import DataConfig

    config = make_config(tiny_model_dir, small_dataset, tmp_path)
    splits = data.load_splits(DataConfig(dataset=str(small_dataset)))
    prepared = finetune.prepare(splits, models.resolve(str(tiny_model_dir)), config)
    assert len(prepared.train_rows) == TRAIN_ROWS and prepared.truncated_train == 0
    assert [len(r["input_ids"]) for r in prepared.eval_rows] == sorted(len(r["input_ids"]) for r in prepared.eval_rows)
    assert prepared.model.config.id2label == dict(enumerate(LABELS))

    assert finetune.resume_point(tmp_path, resume=False) is None
    (tmp_path / "checkpoint-7").mkdir()  # cut short: no trainer_state.json
    with pytest.raises(UserError, match="No checkpoint to resume from in .*start a new run without --resume"):
        finetune.resume_point(tmp_path, resume=True)
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    assert finetune.resume_point(tmp_path, resume=True) == str(tmp_path / "checkpoint-3")

    args = finetune.training_arguments(config, tmp_path / "out", "fp32", steps_per_epoch=8)
    trainer = finetune.make_trainer(
        prepared.model, prepared.tokenizer, args, prepared.train_rows[:16], eval_rows=prepared.eval_rows[:16],
        label_names=LABELS,
    )  # fmt: skip
    trainer.train()  # a step an epoch: the optimizer has its state, and the callback handler holds it too
    state = next(iter(trainer.optimizer.optimizer.state.values()))["exp_avg"]
    freed = weakref.finalize(state, lambda: None)
    del state
    model, steps = finetune.save_and_release(trainer, tmp_path / "model")
    assert (tmp_path / "model" / "config.json").is_file() and steps > 0 and not model.training
    assert trainer.optimizer is None and trainer.accelerator._optimizers == []
    assert not freed.alive, "the optimizer's state outlived save_and_release"


def test_training_batches_are_length_grouped_in_an_order_seeded_by_the_epoch(
    tiny_model_dir: Path, small_dataset: Path, tmp_path: Path
) -> None:
    """The same seed and epoch give the same batches in any process (DDP's ranks, a resumed run), and a resumed
    epoch replays its own order from where it stopped."""
    from accelerate import skip_first_batches

    from emotion_exp import data, finetune, models
    from emotion_exp.config import DataConfig

    config = make_config(tiny_model_dir, small_dataset, tmp_path)
    splits = data.load_splits(DataConfig(dataset=str(small_dataset)))
    prepared = finetune.prepare(splits, models.resolve(str(tiny_model_dir)), config)
    args = finetune.training_arguments(config, tmp_path / "out", "fp32", steps_per_epoch=8)

    def batches(epoch: int, skip: int = 0, seed: int = config.seed) -> list[list[list[int]]]:
        trainer = finetune.make_trainer(
            prepared.model,
            prepared.tokenizer,
            dataclasses.replace(args, seed=seed),
            prepared.train_rows,
            eval_rows=prepared.eval_rows,
        )
        loader = trainer.get_train_dataloader()
        if skip:  # what the Trainer does on resuming mid-epoch (its get_resumed_dataloader, new in 5.x, calls it)
            loader = skip_first_batches(loader, skip)
        loader.set_epoch(epoch)
        return [batch["input_ids"].tolist() for batch in loader]

    first = batches(0)
    assert first == batches(0)  # another trainer (another process) draws the same
    assert batches(1) != first and batches(0, seed=config.seed + 7) != first
    assert batches(1, skip=3) == batches(1)[3:]  # a resumed epoch continues its own order
    assert sum(len(batch) for batch in first) == TRAIN_ROWS
    lengths = [[sum(token != 0 for token in row) for row in batch] for batch in first]
    assert all(batch == sorted(batch, reverse=True) for batch in lengths[1:])  # grouped: longest first in each


@pytest.mark.parametrize(("warmup", "bound"), [(1.0, "less than 1"), (2.5, "less than 1"), (-0.1, "at least 0")])
def test_warmup_must_be_a_fraction(warmup: float, bound: str) -> None:
    with pytest.raises(UserError, match=f"--warmup must be {bound}; got {warmup}"):
        FinetuneConfig(warmup=warmup)


@pytest.mark.slow
def test_without_registered_model_a_fine_tune_registers_only_a_new_best_version(
    small_dataset: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from emotion_exp import registry
    from tests.helpers import tiny_finetune_config

    # A store of its own: the registry (and its champion) is shared by every test of the session otherwise.
    store, before = f"sqlite:///{tmp_path / 'own.db'}", mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "own")
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("own")
    try:
        config = tiny_finetune_config(small_dataset, tiny_model_dir, tmp_path)  # registered_model: auto
        first = stage.run(config)
        name = mlflow.get_run(first).data.tags["registered_model"]
        assert "has no champion yet" in capsys.readouterr().out
        registry.set_champion(name, "1")
        MlflowClient().log_metric(first, "val_f1_weighted", 1.0)  # a champion no tiny fine-tune can beat

        second = stage.run(config)

        printed = capsys.readouterr().out
        assert f"finetune: not registered in {name!r}: val_f1_weighted " in printed
        assert "does not beat its champion's 1.0000 (version 1)" in printed
        assert f"Pass --registered_model {name} to register it anyway." in printed
        assert "registered_version" not in mlflow.get_run(second).data.tags
        assert [str(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'")] == ["1"]
    finally:
        mlflow.set_tracking_uri(before)
