"""predict: files in, predictions out, with a real registered pyfunc model and clear errors."""

from __future__ import annotations

import json
import uuid

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from emotion_exp import registry
from emotion_exp.cli import cli
from emotion_exp.config import PredictConfig
from emotion_exp.errors import UserError
from emotion_exp.stages import predict
from tests.pyfunc_models import LABELS, KeywordModel, log_keyword_model

PROBABILITIES = [f"prob_{label}" for label in LABELS]


@pytest.fixture(scope="module")
def registered(tracking_uri: str) -> str:
    """A registered model with a champion (its own name, so other tests' registries do not matter)."""
    name = f"predict-test-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.set_experiment(f"{name}-setup")
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        uri = log_keyword_model()
    registry.set_champion(name, registry.register(uri, name, LABELS))
    return name


@pytest.fixture
def champion_uri(registered: str) -> str:
    return f"models:/{registered}@champion"


def invoke(*args: str):
    return CliRunner().invoke(cli, ["predict", *args])


def test_csv_in_csv_out_keeps_the_input_columns_and_logs_a_run(tmp_path, champion_uri, isolated_mlflow) -> None:
    source = tmp_path / "reviews.csv"
    texts = ["so happy", "anxious all day", "meh"]
    frame = pd.DataFrame({"id": [7, 8, 9], "text": texts, "label": ["joy", "fear", "x"]})
    frame.to_csv(source, index=False)
    before = source.read_bytes()

    result = invoke("--input", str(source), "--model_uri", champion_uri, "--batch_size", "2")

    assert result.exit_code == 0, result.output
    assert source.read_bytes() == before
    out = pd.read_csv(tmp_path / "reviews.predictions.csv")
    assert list(out.columns) == ["id", "text", "label_input", "label", *PROBABILITIES]
    assert out["id"].tolist() == [7, 8, 9]
    assert out["label"].tolist() == ["joy", "fear", "sadness"]
    assert out["label_input"].tolist() == ["joy", "fear", "x"]
    assert out[PROBABILITIES].sum(axis=1).round(6).tolist() == [1.0, 1.0, 1.0]

    [run] = mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "predict"
    assert run.data.params["model_uri"] == champion_uri
    assert run.data.metrics["rows"] == 3
    assert [a.path for a in MlflowClient().list_artifacts(run.info.run_id, "predictions")] == [
        "predictions/reviews.predictions.csv"
    ]


def test_plain_text_to_parquet(tmp_path, champion_uri) -> None:
    source = tmp_path / "lines.txt"
    source.write_text("i am happy\n\nscared of the dark\n")
    target = tmp_path / "out" / "labels.parquet"

    predict.run(PredictConfig(input=str(source), output=str(target), model_uri=champion_uri))

    out = pd.read_parquet(target)
    assert out["text"].tolist() == ["i am happy", "scared of the dark"]
    assert out["label"].tolist() == ["joy", "fear"]


def test_json_lines_with_another_text_column(tmp_path, champion_uri) -> None:
    source = tmp_path / "posts.jsonl"
    source.write_text("\n".join(json.dumps({"body": t, "n": i}) for i, t in enumerate(["happy", "sad"])) + "\n")

    predict.run(PredictConfig(input=str(source), text_column="body", model_uri=champion_uri))

    out = pd.read_csv(tmp_path / "posts.predictions.csv")
    assert list(out.columns) == ["body", "n", "label", *PROBABILITIES]
    assert out["label"].tolist() == ["joy", "sadness"]


def test_batches_keep_the_input_order() -> None:
    texts = [f"text {i} {'happy' if i % 3 == 0 else ''}" for i in range(11)]
    frame = predict.predict_batches(_Local(), texts, batch_size=4)
    assert frame["label"].tolist() == ["joy" if i % 3 == 0 else "sadness" for i in range(11)]


def test_the_progress_lines_carry_the_stage_that_predicts(capsys) -> None:
    predict.predict_batches(_Local(), ["so happy"] * 3, batch_size=2, stage="evaluate")
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("evaluate") for line in lines), lines


def test_the_closing_lines_count_with_thousands_separators(tmp_path, champion_uri) -> None:
    source = tmp_path / "many.txt"
    source.write_text("so happy\n" * 1_200)
    result = invoke("--input", str(source), "--model_uri", champion_uri)
    assert result.exit_code == 0, result.output
    assert "predict: wrote 1,200 predictions to" in result.output
    assert "1200" not in result.output


class _Local:
    """The keyword model called directly, without MLflow's loading."""

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return KeywordModel().predict(None, frame)


def test_the_input_is_never_overwritten(tmp_path, champion_uri) -> None:
    source = tmp_path / "texts.csv"
    source.write_text("text\nhappy\n")
    result = invoke("--input", str(source), "--output", str(source), "--model_uri", champion_uri)
    assert result.exit_code == 1
    assert "is the input file; predict never overwrites its input" in result.output
    assert source.read_text() == "text\nhappy\n"


def test_an_unsupported_output_format_is_refused(tmp_path, champion_uri) -> None:
    source = tmp_path / "texts.csv"
    source.write_text("text\nhappy\n")
    with pytest.raises(UserError, match=r"--output must end in \.csv or \.parquet; got 'out\.xlsx'"):
        predict.run(PredictConfig(input=str(source), output="out.xlsx", model_uri=champion_uri))


def test_a_missing_alias_names_what_the_registry_holds(tmp_path, registered) -> None:
    source = tmp_path / "texts.csv"
    source.write_text("text\nhappy\n")
    result = invoke("--input", str(source), "--model_uri", f"models:/{registered}@staging")
    assert result.exit_code == 1
    holds = "(versions: 1; aliases: @champion -> 1)"
    assert f"registered model '{registered}' has no alias @staging {holds}" in result.output
    assert "emotion-exp promote" in result.output
    assert "Traceback" not in result.output


def test_a_missing_registered_model_and_version_are_explained(tmp_path, registered) -> None:
    source = tmp_path / "texts.csv"
    source.write_text("text\nhappy\n")
    with pytest.raises(UserError, match=r"no registered model named 'no-such-model' in the MLflow store .*finetune"):
        predict.run(PredictConfig(input=str(source), model_uri="models:/no-such-model@champion"))
    with pytest.raises(UserError, match=rf"'{registered}' has no version 9 \(versions: 1;"):
        predict.run(PredictConfig(input=str(source), model_uri=f"models:/{registered}/9"))
    with pytest.raises(UserError, match=r"Model runs:/0123abcd/model was not found .*Run with id=0123abcd not found"):
        predict.run(PredictConfig(input=str(source), model_uri="runs:/0123abcd/model"))


def test_a_run_uri_with_the_old_model_name_says_where_the_run_keeps_its_model(tmp_path, registered_tfidf) -> None:
    # Models are named after their stage; runs:/<id>/model finds the models of runs from before that only.
    _, run_id = registered_tfidf
    source = tmp_path / "texts.csv"
    source.write_text("text\nhappy\n")
    with pytest.raises(UserError, match=rf"Run {run_id} logged its model as 'tfidf': runs:/{run_id}/tfidf\."):
        predict.run(PredictConfig(input=str(source), model_uri=f"runs:/{run_id}/model"))
    predict.run(PredictConfig(input=str(source), model_uri=f"runs:/{run_id}/tfidf"))


def test_a_missing_column_and_an_empty_file_are_explained(tmp_path, champion_uri) -> None:
    source = tmp_path / "texts.csv"
    source.write_text("sentence\nhappy\n")
    result = invoke("--input", str(source), "--model_uri", champion_uri)
    assert result.exit_code == 1
    assert "has no column 'text' (columns found: sentence); name the right column with --text_column" in result.output

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="is empty"):
        predict.run(PredictConfig(input=str(empty), model_uri=champion_uri))
    assert not (tmp_path / "empty.predictions.csv").exists()


def test_an_output_that_is_the_input_under_another_name_is_refused(tmp_path, champion_uri) -> None:
    source = tmp_path / "in.csv"
    source.write_text("text\nhappy\n")
    hard_link = tmp_path / "h.csv"
    hard_link.hardlink_to(source)

    result = invoke("--input", str(source), "--output", str(hard_link), "--model_uri", champion_uri, "--overwrite")

    assert result.exit_code == 1
    assert "is the input file; predict never overwrites its input" in result.output
    assert source.read_text() == "text\nhappy\n"


def test_a_symbolic_link_at_output_is_never_followed(tmp_path, champion_uri) -> None:
    source = tmp_path / "in.csv"
    source.write_text("text\nhappy\n")
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    link = tmp_path / "out.csv"
    link.symlink_to(precious)

    result = invoke("--input", str(source), "--output", str(link), "--model_uri", champion_uri, "--overwrite")

    assert result.exit_code == 1
    assert "is a symbolic link; predict does not write through links" in result.output
    assert precious.read_text() == "keep me"
    assert link.is_symlink()


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path, champion_uri) -> None:
    source = tmp_path / "in.csv"
    source.write_text("text\nso happy\n")
    target = tmp_path / "out.csv"
    target.write_text("earlier results")

    refused = invoke("--input", str(source), "--output", str(target), "--model_uri", champion_uri)
    assert refused.exit_code == 1
    assert "already exists; pass --overwrite to replace it" in refused.output
    assert target.read_text() == "earlier results"

    replaced = invoke("--input", str(source), "--output", str(target), "--model_uri", champion_uri, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert pd.read_csv(target)["label"].tolist() == ["joy"]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_write_that_fails_midway_leaves_the_existing_output_whole(tmp_path, monkeypatch) -> None:
    target = tmp_path / "out.csv"
    target.write_text("earlier results")

    def half_then_fail(self, stream, **kwargs):
        stream.write(b"label\n")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        predict.write_atomically(pd.DataFrame({"label": ["joy"]}), target)

    assert target.read_text() == "earlier results"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_a_folder_as_output_is_refused(tmp_path, champion_uri) -> None:
    source = tmp_path / "in.csv"
    source.write_text("text\nhappy\n")
    (tmp_path / "out.csv").mkdir()
    with pytest.raises(UserError, match=r"--output '.*out\.csv' is a folder; pass a file name"):
        predict.run(PredictConfig(input=str(source), output=str(tmp_path / "out.csv"), model_uri=champion_uri))


def test_empty_texts_are_refused_by_default_and_skipped_with_skip_empty(tmp_path, champion_uri) -> None:
    source = tmp_path / "in.csv"
    # line 6 holds a zero-width space and a right-to-left mark: it shows nothing, so it is empty too
    source.write_text('id,text\n1,so happy\n2,"  "\n3,\n4,anxious\n5,\u200b\u200f\n', encoding="utf-8")

    refused = invoke("--input", str(source), "--model_uri", champion_uri)
    assert refused.exit_code == 1
    assert "3 empty or whitespace-only text(s) (lines 3, 4, 6)" in refused.output
    assert "--skip_empty" in refused.output

    skipped = invoke("--input", str(source), "--model_uri", champion_uri, "--skip_empty")
    assert skipped.exit_code == 0, skipped.output
    out = pd.read_csv(tmp_path / "in.predictions.csv", keep_default_na=False)
    assert out["label"].tolist() == ["joy", "", "", "fear", ""]
    assert out.loc[[1, 2, 4], PROBABILITIES].eq("").all().all()
    assert out.loc[[0, 3], PROBABILITIES].astype(float).sum(axis=1).round(6).tolist() == [1.0, 1.0]


def test_every_text_empty_with_skip_empty(tmp_path, champion_uri) -> None:
    source = tmp_path / "in.csv"
    source.write_text("text\n   \n")
    predict.run(PredictConfig(input=str(source), model_uri=champion_uri, skip_empty=True))
    out = pd.read_csv(tmp_path / "in.predictions.csv", keep_default_na=False)
    assert list(out.columns) == ["text", "label", *PROBABILITIES]
    assert out["label"].tolist() == [""]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_file_that_already_has_prediction_columns_keeps_them_under_new_names(tmp_path, champion_uri, suffix) -> None:
    source = tmp_path / f"in{suffix}"
    frame = pd.DataFrame({"text": ["so happy"], "label": ["x"], "label_input": ["y"], "prob_joy": [0.5]})
    frame.to_csv(source, index=False) if suffix == ".csv" else frame.to_parquet(source, index=False)
    target = tmp_path / f"out{suffix}"

    predict.run(PredictConfig(input=str(source), output=str(target), model_uri=champion_uri))

    out = pd.read_csv(target) if suffix == ".csv" else pd.read_parquet(target)
    assert list(out.columns) == ["text", "label_input_2", "label_input", "prob_joy_input", "label", *PROBABILITIES]
    assert out[["label_input_2", "label_input", "label"]].iloc[0].tolist() == ["x", "y", "joy"]


def test_a_predict_run_records_the_version_the_alias_pointed_to(
    tmp_path, registered, champion_uri, isolated_mlflow
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("text\nso happy\n")
    version = MlflowClient().get_model_version_by_alias(registered, "champion")

    run_id = predict.run(PredictConfig(input=str(source), model_uri=champion_uri))

    tags = mlflow.get_run(run_id).data.tags
    assert (tags["model_name"], tags["model_version"], tags["model_run_id"]) == (
        registered,
        str(version.version),
        version.run_id,
    )
