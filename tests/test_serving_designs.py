"""Why the models' signature has no input schema: what each public design does to a request in MLflow's server.

docs/reliability.md ("What the public route costs") compares the designs MLflow offers for a text model; each
test here holds one row of that comparison against the installed MLflow, so a release that changes it shows.
The chosen design itself is tested in tests/test_pyfunc_input.py.
"""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType

from emotion_exp import pyfunc
from tests.helpers import LABELS
from tests.model_server import scoring_app
from tests.pyfunc_models import KeywordModel

LIST_OF_LISTS = {"inputs": [["so happy", "so sad"], ["so anxious", "so scared"]]}


class HintedModel(mlflow.pyfunc.PythonModel):
    """A type-hinted ``predict``: MLflow checks every value against ``list[str]`` itself."""

    def predict(self, model_input: list[str], params: dict | None = None) -> list[str]:
        return [json.dumps(params)] * len(model_input)


def logged(python_model: mlflow.pyfunc.PythonModel, inputs: Schema | None = None) -> mlflow.pyfunc.PyFuncModel:
    outputs = pyfunc.signature(LABELS).outputs
    params = ParamSchema([ParamSpec(pyfunc.SKIP_EMPTY, "boolean", False)])
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=python_model,
            signature=None if isinstance(python_model, HintedModel) else ModelSignature(inputs, outputs, params),
            pip_requirements=["mlflow"],
        )
    return mlflow.pyfunc.load_model(info.model_uri)


def answer(model: mlflow.pyfunc.PyFuncModel, body: dict) -> tuple[int, dict]:
    response = scoring_app(model).post("/invocations", json=body)
    return response.status_code, response.json()


def test_one_unnamed_input_column_labels_a_list_of_lists_by_its_first_value_only() -> None:
    # The design before this one: four texts in, two predictions out, with a 200.
    model = logged(KeywordModel(), Schema([ColSpec(AnyType())]))
    status, body = answer(model, LIST_OF_LISTS)
    assert (status, len(body["predictions"])) == (200, 2)
    status, body = answer(model, {"dataframe_records": [{"id": 1, "text": "so happy"}]})
    assert status == 400 and "found the columns ['id']" in body["message"]  # the first column only


def test_no_input_schema_refuses_a_list_of_lists_but_labels_a_number_among_texts() -> None:
    model = logged(KeywordModel())
    status, body = answer(model, LIST_OF_LISTS)
    assert status == 400 and "rows of several values" in body["message"]
    status, body = answer(model, {"inputs": ["so happy", 5]})
    assert (status, len(body["predictions"])) == (200, 2)  # "5" reached the model as a string


def test_a_named_text_column_refuses_a_plain_list_of_strings() -> None:
    model = logged(KeywordModel(), Schema([ColSpec("string", "text")]))
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"Model is missing inputs \['text'\]"):
        model.predict(["so happy"])


def test_a_type_hinted_predict_drops_the_params_and_the_table_formats() -> None:
    model = logged(HintedModel())
    status, body = answer(model, {"inputs": ["so happy", ""], "params": {pyfunc.SKIP_EMPTY: True}})
    assert (status, body["predictions"][0]) == (200, "{}")  # skip_empty never reached predict
    status, body = answer(model, {"dataframe_records": [{"text": "so happy"}]})
    assert status == 400 and "'inputs' key" in body["message"]
    status, body = answer(model, LIST_OF_LISTS)
    assert status == 400  # MLflow's own check of every value
