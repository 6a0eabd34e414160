"""The champion behind the real `mlflow models serve` on a loopback port: payload shapes and errors."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest
import requests

from tests.helpers import LABELS
from tests.model_server import serving

PROBABILITIES = {f"prob_{label}" for label in LABELS}
TEXTS = ["i feel so happy today", "this waiting makes me anxious"]


@pytest.fixture(scope="module")
def server(finetuned_champion: tuple[str, str], tracking_uri: str, tmp_path_factory) -> Iterator[str]:
    """Serve the session's fine-tuned ``models:/<name>@champion``; yield the base URL."""
    name, _ = finetuned_champion
    workdir = tmp_path_factory.mktemp("serve")
    with serving(f"models:/{name}@champion", tracking_uri, workdir) as url:
        yield url


def invocations(url: str, payload: object) -> requests.Response:
    return requests.post(f"{url}/invocations", json=payload, timeout=60)


def check_predictions(response: requests.Response, rows: int) -> None:
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == rows
    for row in predictions:
        assert set(row) == {"label"} | PROBABILITIES
        assert row["label"] in LABELS
        assert sum(row[c] for c in PROBABILITIES) == pytest.approx(1.0, abs=1e-4)
        assert row["label"] == max(PROBABILITIES, key=row.get).removeprefix("prob_")


@pytest.mark.slow
@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_records": [{"text": t} for t in TEXTS]},
        {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}},
        {"inputs": TEXTS},
    ],
    ids=["dataframe_records", "dataframe_split", "inputs"],
)
def test_every_payload_shape_gets_labels_and_probabilities(server: str, payload: dict) -> None:
    check_predictions(invocations(server, payload), rows=len(TEXTS))


@pytest.mark.slow
def test_a_malformed_request_gets_a_4xx_with_a_message_and_the_server_keeps_serving(server: str) -> None:
    wrong_column = invocations(server, {"dataframe_records": [{"sentence": "hello"}]})
    assert 400 <= wrong_column.status_code < 500
    assert "text" in wrong_column.json()["message"]

    headers = {"Content-Type": "application/json"}
    not_json = requests.post(f"{server}/invocations", data="not json", headers=headers, timeout=60)
    assert 400 <= not_json.status_code < 500
    assert "JSON" in not_json.json()["message"]

    assert requests.get(f"{server}/ping", timeout=10).status_code == 200
    check_predictions(invocations(server, {"inputs": TEXTS[:1]}), rows=1)


@pytest.mark.slow
def test_nulls_non_text_and_empty_texts_get_a_400_naming_the_rows_in_every_format(server: str) -> None:
    for payload in (
        {"inputs": [None]},
        {"inputs": [5]},
        {"instances": ["ok", None]},
        {"dataframe_records": [{"text": None}]},
        {"dataframe_split": {"columns": ["text"], "data": [["ok"], [None]]}},
        {"inputs": ["ok", "  "]},
    ):
        answer = invocations(server, payload)
        assert answer.status_code == 400, (payload, answer.text)
        assert "Expected every text to be a non-empty string" in answer.json()["message"], payload
        assert "(row" in answer.json()["message"]

    skipped = invocations(server, {"inputs": ["", TEXTS[0]], "params": {"skip_empty": True}})
    assert skipped.status_code == 200, skipped.text
    empty, labelled = skipped.json()["predictions"]
    assert empty == {"label": "", **{column: None for column in PROBABILITIES}}
    assert labelled["label"] in LABELS


@pytest.mark.slow
def test_rows_of_several_texts_get_a_400_and_tables_are_read_by_their_text_column(server: str) -> None:
    import io

    for payload, said in (
        ({"inputs": [TEXTS, TEXTS]}, "rows of several values (an array of shape (2, 2))"),
        ({"dataframe_split": {"data": [TEXTS]}}, "rows of 2 values without column names"),
        ({"inputs": ["i am happy", ["i am sad"]]}, "inhomogeneous shape"),  # numpy's words, before the model
        ({"dataframe_records": [{"id": 1, "sentence": "i am happy"}]}, "found the columns ['id', 'sentence']"),
    ):
        answer = invocations(server, payload)
        assert answer.status_code == 400, (payload, answer.text[:300])
        assert said in answer.json()["message"]

    check_predictions(
        invocations(server, {"dataframe_records": [{"id": i, "text": t} for i, t in enumerate(TEXTS)]}), 2
    )
    check_predictions(invocations(server, {"inputs": {"text": TEXTS}}), rows=len(TEXTS))
    body = io.BytesIO()
    pd.DataFrame({"id": [1, 2], "text": TEXTS}).to_parquet(body)
    for data, content_type in (
        (body.getvalue(), "application/vnd.apache.parquet"),
        (pd.DataFrame({"id": [1, 2], "text": TEXTS}).to_csv(index=False), "text/csv"),
    ):
        answer = requests.post(f"{server}/invocations", data=data, headers={"Content-Type": content_type}, timeout=60)
        check_predictions(answer, rows=len(TEXTS))
