"""One rule for what a model accepts, on every path into it: mlflow.pyfunc and the scoring server's formats.

The model is a real pyfunc model logged to the session's store with the project's signature;
the server cases go through the app of MLflow's scoring server (``scoring_server.init``, the app
``mlflow models serve`` runs), in process (tests/test_serve.py covers the real server process).
"""

from __future__ import annotations

import json
import uuid

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from emotion_exp import pyfunc
from emotion_exp.texts import DEFAULT_MAX_CHARS
from tests.model_server import scoring_app
from tests.pyfunc_models import LABELS, KeywordModel, log_keyword_model

PROBABILITIES = [f"prob_{label}" for label in LABELS]


@pytest.fixture(scope="module")
def model_uri(tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    mlflow.set_tracking_uri(tracking_uri)
    artifacts = tmp_path_factory.mktemp("pyfunc-input").as_uri()
    experiment_id = mlflow.create_experiment(f"pyfunc-input-{uuid.uuid4().hex[:8]}", artifact_location=artifacts)
    with mlflow.start_run(experiment_id=experiment_id):
        return log_keyword_model(input_example=False)


@pytest.fixture(scope="module")
def model(model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    return mlflow.pyfunc.load_model(model_uri)


def serve(
    model: mlflow.pyfunc.PyFuncModel, body: str | bytes, content_type: str = "application/json"
) -> tuple[int, str]:
    """What the scoring server's app answers: its status and its body (an error's message)."""
    answer = scoring_app(model).post("/invocations", content=body, headers={"Content-Type": content_type})
    if answer.status_code != 200 and answer.headers.get("content-type") == "application/json":
        return answer.status_code, answer.json()["message"]
    return answer.status_code, answer.text


@pytest.mark.parametrize(
    ("model_input", "found"),
    [
        ([None], "1 null or non-text value(s) (row 0)"),
        ([5], "1 null or non-text value(s) (row 0)"),
        (["ok", 5, None], "2 null or non-text value(s) (rows 1, 2)"),
        (pd.DataFrame({"text": ["ok", None, float("nan")]}), "2 null or non-text value(s) (rows 1, 2)"),
        ([""], "1 empty or whitespace-only text(s) (row 0)"),
        (["ok", " \n\t"], "1 empty or whitespace-only text(s) (row 1)"),
        (["ok", "\u200b\u200e \u2066\u2069"], "1 empty or whitespace-only text(s) (row 1)"),  # shows nothing
    ],
)
def test_pyfunc_refuses_nulls_non_text_and_empty_texts_naming_the_rows(model, model_input, found) -> None:
    with pytest.raises(MlflowException, match="Expected every text to be a non-empty string") as raised:
        model.predict(model_input)
    assert found in raised.value.message


def test_a_lone_surrogate_is_named_too() -> None:
    # (through pyfunc, MLflow's own schema check refuses it first, also with a 400)
    with pytest.raises(MlflowException, match=r"1 text\(s\) that are not valid Unicode.*\(row 1\)"):
        pyfunc.texts_from_input(["ok", "\ud800"])


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": [None]},
        {"inputs": [5]},
        {"inputs": [True]},
        {"inputs": ["ok", None]},
        {"instances": ["ok", None]},
        {"instances": [{"text": None}]},
        {"dataframe_records": [{"text": None}]},
        {"dataframe_records": [{"text": 5}]},
        {"dataframe_split": {"columns": ["text"], "data": [["ok"], [None]]}},
        {"inputs": [""]},
        {"dataframe_records": [{"text": "  "}]},
    ],
    ids=json.dumps,
)
def test_the_server_answers_nulls_non_text_and_empty_texts_with_a_400(model, body) -> None:
    status, message = serve(model, json.dumps(body))
    assert status == 400, message
    assert "Expected every text to be a non-empty string" in message
    assert "(row" in message


def test_the_server_labels_csv_bodies_by_their_text_column(model) -> None:
    # Without an input schema MLflow reads a CSV body as pandas does; the text column is found by name.
    status, answer = serve(model, "id,text\n1,so happy\n2,so anxious\n", "text/csv")
    assert status == 200, answer
    assert [row["label"] for row in json.loads(answer)["predictions"]] == ["joy", "fear"]
    status, message = serve(model, "text\nso happy\n\n", "text/csv")  # a blank line is no row to pandas
    assert status == 200, message
    status, message = serve(model, "id,text\n1,so happy\n2,\n", "text/csv")  # an empty cell is a null to pandas
    assert status == 400 and "1 null or non-text value(s) (row 1)" in message


def test_the_server_refuses_nulls_in_parquet_too(model) -> None:
    import io

    body = io.BytesIO()
    pd.DataFrame({"text": ["ok", None]}).to_parquet(body)
    status, message = serve(model, body.getvalue(), "application/vnd.apache.parquet")
    assert status == 400
    assert "1 null or non-text value(s) (row 1)" in message


def short_json(value: object) -> str:
    return json.dumps(value)[:70]


@pytest.mark.parametrize(
    ("body", "texts"),
    [
        ({"inputs": ["so happy", "so sad"]}, 2),
        ({"inputs": "so happy"}, 1),
        ({"instances": ["so happy", "so sad"]}, 2),
        ({"instances": [{"text": "so happy"}, {"text": "so sad"}]}, 2),
        ({"instances": [{"id": 1, "text": "so happy"}, {"id": 2, "text": "so sad"}]}, 2),
        ({"dataframe_records": [{"text": "so happy", "id": 1}, {"text": "so sad", "id": 2}]}, 2),
        ({"dataframe_records": [{"id": 1, "text": "so happy"}, {"id": 2, "text": "so sad"}]}, 2),
        ({"dataframe_split": {"columns": ["text"], "data": [["so happy"], ["so sad"]]}}, 2),
        ({"dataframe_split": {"columns": ["id", "text"], "data": [[1, "so happy"], [2, "so sad"]]}}, 2),
        ({"dataframe_split": {"data": [["so happy"], ["so sad"]]}}, 2),
        ({"inputs": [["so happy"], ["so sad"]]}, 2),
        ({"inputs": {"text": ["so happy", "so sad"]}}, 2),
    ],
    ids=short_json,
)
def test_every_accepted_shape_gets_one_prediction_per_text(model, body, texts) -> None:
    status, answer = serve(model, json.dumps(body))
    assert status == 200, answer
    assert len(json.loads(answer)["predictions"]) == texts


def test_the_text_column_is_found_by_name_in_a_parquet_table(model) -> None:
    import io

    body = io.BytesIO()
    pd.DataFrame({"id": [1, 2], "text": ["so anxious", "so happy"]}).to_parquet(body)
    status, answer = serve(model, body.getvalue(), "application/vnd.apache.parquet")
    assert status == 200, answer
    assert [row["label"] for row in json.loads(answer)["predictions"]] == ["fear", "joy"]


@pytest.mark.parametrize(
    ("body", "found"),
    [
        ({"inputs": [{"text": "so happy"}]}, "a list or an object is no text"),
        ({"dataframe_records": [{"id": 1, "sentence": "so happy"}]}, "found the columns ['id', 'sentence']"),
        ({"dataframe_records": [{"text": "so happy"}, {"sentence": "so sad"}]}, "non-text value(s) (row 1)"),
        ({"instances": [{"sentence": "so happy"}]}, "found an object with the keys ['sentence']"),
        ({"inputs": {"sentence": ["so happy"]}}, "found an object with the keys ['sentence']"),
    ],
    ids=short_json,
)
def test_every_other_shape_gets_a_400_naming_the_shape_expected(model, body, found) -> None:
    status, message = serve(model, json.dumps(body))
    assert status == 400, message
    assert found in message
    assert "send" in message.rpartition("Error: ")[2]  # the model's part says what to send


@pytest.mark.parametrize(
    ("body", "found"),
    [
        (
            {"inputs": [["i am happy", "i am sad"], ["i am angry", "i am scared"]]},
            "rows of several values (an array of shape (2, 2))",
        ),
        (
            {"inputs": [["i feel fine"] * (pyfunc.DEFAULT_MAX_TEXTS + 1)]},
            "rows of several values (an array of shape (1, 10001))",
        ),
        ({"dataframe_split": {"data": [["so happy", "so sad"]]}}, "rows of 2 values without column names"),
        ({"instances": [["so happy", "so sad"]]}, "rows of several values (an array of shape (1, 2))"),
    ],
    ids=short_json,
)
def test_rows_of_several_texts_are_refused_never_cut_to_their_first(model, body, found) -> None:
    # Under the earlier signature (one unnamed input column) MLflow handed the model the first value of each row
    # only: fewer predictions than texts, with a 200 (tests/test_serving_designs.py keeps that comparison).
    status, message = serve(model, json.dumps(body))
    assert status == 400, message[:300]
    assert f"found {found}: send" in message
    assert "one text per row" in message


def test_a_list_holding_a_list_is_refused_by_mlflow_before_the_model(model) -> None:
    status, message = serve(model, json.dumps({"inputs": ["so happy", ["so sad"]]}))
    assert status == 400
    assert "inhomogeneous shape" in message  # numpy's words: MLflow makes the list an array first


def test_numbers_and_booleans_among_texts_in_a_json_list_are_labelled_as_their_text(model) -> None:
    # The cost of the signature without an input schema (docs/reliability.md): MLflow makes a JSON list an array
    # before the model sees it, and numpy writes a number or boolean among strings as a string.
    for body in ({"inputs": ["so happy", 5]}, {"inputs": ["so happy", True]}, {"instances": ["so happy", 5.5]}):
        status, answer = serve(model, json.dumps(body))
        assert status == 200, answer
        assert len(json.loads(answer)["predictions"]) == 2
    with pytest.raises(MlflowException, match=r"1 null or non-text value\(s\) \(row 1\)"):
        model.predict(["so happy", 5])  # a Python list reaches the model as it is


def test_an_error_answer_copies_the_request_as_mlflow_parsed_it(model) -> None:
    # MLflow puts "Failed to predict data '<the request>'" in front of the model's message. A table is copied as
    # pandas prints it (rows and cells cut short); a list of texts is copied whole (docs/reliability.md).
    huge = "so happy " * 20_000
    status, table = serve(model, json.dumps({"dataframe_records": [{"text": huge}] * 100 + [{"text": None}]}))
    assert status == 400 and "1 null or non-text value(s) (row 100)" in table
    assert len(table) < 10_000
    status, listed = serve(model, json.dumps({"inputs": [huge, None]}))
    assert status == 400 and "1 null or non-text value(s) (row 1)" in listed
    assert len(listed) > len(huge)


def test_skip_empty_keeps_empty_rows_with_an_empty_label_and_empty_probabilities(model) -> None:
    frame = model.predict(["so happy", "", "  ", "anxious", "\ufeff\u200d"], params={pyfunc.SKIP_EMPTY: True})
    assert frame["label"].tolist() == ["joy", "", "", "fear", ""]
    assert frame.loc[[1, 2, 4], PROBABILITIES].isna().all().all()
    # Skipped rows' None makes the columns object, which pandas 2.1 (numpy 1.26) cannot round: sum as floats.
    assert frame.loc[[0, 3], PROBABILITIES].astype(float).sum(axis=1).round(6).tolist() == [1.0, 1.0]

    status, body = serve(model, json.dumps({"inputs": ["", "so happy"], "params": {pyfunc.SKIP_EMPTY: True}}))
    assert status == 200, body
    first, second = json.loads(body)["predictions"]
    assert first == {"label": "", **{column: None for column in PROBABILITIES}}
    assert second["label"] == "joy"


def test_skip_empty_still_refuses_nulls(model) -> None:
    with pytest.raises(MlflowException, match=r"1 null or non-text value\(s\) \(row 1\)") as raised:
        model.predict(["ok", None, ""], params={pyfunc.SKIP_EMPTY: True})
    assert 'labels empty strings, not nulls: send "" for a missing text' in raised.value.message


def test_the_message_offers_skip_empty_only_where_it_helps(model) -> None:
    status, null = serve(model, json.dumps({"inputs": ["ok", None]}))
    assert status == 400 and "skip_empty" not in null.rpartition("Error: ")[2]
    status, empty = serve(model, json.dumps({"inputs": ["ok", ""]}))
    assert status == 400 and 'pass the param {"skip_empty": true}' in empty
    status, skipped = serve(model, json.dumps({"inputs": ["ok", ""], "params": {pyfunc.SKIP_EMPTY: True}}))
    assert status == 200, skipped  # the fix the message offered works


def test_every_text_skipped_still_gives_the_columns(model) -> None:
    frame = model.predict([""], params={pyfunc.SKIP_EMPTY: True})
    assert list(frame.columns) == ["label", *PROBABILITIES]
    assert frame["label"].tolist() == [""]


def test_texts_per_call_are_capped_by_the_model_config(model_uri) -> None:
    capped = mlflow.pyfunc.load_model(model_uri, model_config={pyfunc.MAX_TEXTS: 3})
    assert len(capped.predict(["a", "b", "c"])) == 3
    with pytest.raises(MlflowException, match="Expected at most 3 texts in one call; got 4") as raised:
        capped.predict(["a", "b", "c", "d"])
    assert raised.value.get_http_status_code() == 400
    status, message = serve(capped, json.dumps({"inputs": ["a"] * 4}))
    assert (status, "Expected at most 3 texts" in message) == (400, True)


def test_a_text_over_max_chars_is_refused_naming_its_row_before_the_model_predicts(model_uri, model) -> None:
    capped = mlflow.pyfunc.load_model(model_uri, model_config={pyfunc.MAX_CHARS: 10})
    assert len(capped.predict(["so happy", "x" * 10])) == 2
    with pytest.raises(MlflowException, match=r"1 text\(s\) longer than 10 characters \(row 1\)") as raised:
        capped.predict(["so happy", "x" * 11])
    assert raised.value.get_http_status_code() == 400

    huge = "so happy " * (DEFAULT_MAX_CHARS // 9 + 1)  # over the default logged with the model
    for body in ({"inputs": ["ok", huge]}, {"dataframe_records": [{"text": "ok"}, {"text": huge}]}):
        status, message = serve(model, json.dumps(body))
        assert status == 400, message[:300]
        assert "1 text(s) longer than 100,000 characters (row 1)" in message


def test_the_default_cap_is_logged_with_the_model(model) -> None:
    too_many = [f"text {i}" for i in range(pyfunc.DEFAULT_MAX_TEXTS + 1)]
    with pytest.raises(MlflowException, match=f"Expected at most {pyfunc.DEFAULT_MAX_TEXTS} texts"):
        model.predict(too_many)


class _CountingModel(KeywordModel):
    """The keyword model, counting the texts it was asked to predict."""

    seen = 0

    @pyfunc.text_input
    def predict(self, context, model_input, params=None):
        type(self).seen += len(model_input)
        return KeywordModel.predict.__wrapped__(self, context, model_input, params)


def test_a_served_request_past_its_timeout_stops_between_parts(monkeypatch) -> None:
    texts = ["so happy"] * (2 * pyfunc.SERVED_PART + 1)
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "0")  # mlflow models serve sets it (--timeout)

    with pytest.raises(MlflowException, match=f"Stopped after {pyfunc.SERVED_PART} of {len(texts)} texts") as raised:
        _CountingModel().predict(None, texts)

    assert raised.value.get_http_status_code() == 504
    assert _CountingModel.seen == pyfunc.SERVED_PART

    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "60")
    assert _CountingModel().predict(None, texts)["label"].eq("joy").all()
    monkeypatch.delenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT")
    assert pyfunc.limits.deadline() is None  # where no server set it, no call stops


def test_loaded_for_mlflows_evaluator_a_model_answers_with_its_labels_alone(model_uri) -> None:
    labels = mlflow.pyfunc.load_model(model_uri, model_config={pyfunc.OUTPUT: pyfunc.LABEL})
    answer = labels.predict(pd.DataFrame({"text": ["so happy", "so anxious", ""]}), params={pyfunc.SKIP_EMPTY: True})
    assert isinstance(answer, pd.Series)
    assert answer.tolist() == ["joy", "fear", ""]
    with pytest.raises(MlflowException, match='model_config "output" to be "table"') as raised:
        mlflow.pyfunc.load_model(model_uri, model_config={pyfunc.OUTPUT: "probabilities"}).predict(["so happy"])
    assert raised.value.get_http_status_code() == 400


@pytest.mark.parametrize(
    ("model_input", "found"),
    [
        ({"text": {"text": ["so happy"]}}, "1 null or non-text value(s) (row 0)"),
        ({"text": 5}, "1 null or non-text value(s) (row 0)"),
        (pd.DataFrame([["so happy", "so sad"]], columns=["text", "text"]), "found 2 columns named 'text'"),
    ],
    ids=["an object in an object", "a number in an object", "two text columns"],
)
def test_odd_shapes_are_refused_with_a_message_not_an_error_of_ours(model, model_input, found) -> None:
    with pytest.raises(MlflowException, match="Expected") as raised:
        model.predict(model_input)
    assert found in raised.value.message
    assert raised.value.get_http_status_code() == 400
