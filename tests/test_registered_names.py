"""Registered model names follow the data, and one registered model never mixes label sets."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner

from emotion_exp import registry
from emotion_exp.cli import cli
from emotion_exp.config import TfidfConfig
from emotion_exp.errors import UserError
from emotion_exp.stages import tfidf
from tests.helpers import LABELS as EMOTIONS


@pytest.mark.parametrize(
    ("requested", "dataset_name", "labels", "expected"),
    [
        ("auto", "emotion-sample", EMOTIONS, "emotion-classifier"),
        ("auto", "dair-ai/emotion", EMOTIONS, "emotion-classifier"),
        ("auto", "reviews", ("complaint", "praise", "question"), "reviews-classifier"),
        ("auto", "my tickets", ("bug", "feature"), "my-tickets-classifier"),
        ("auto", "someone/support", ("bug", "feature"), "support-classifier"),
        ("mine", "reviews", ("complaint", "praise"), "mine"),
    ],
)
def test_the_default_name_follows_the_data(requested, dataset_name, labels, expected) -> None:
    assert registry.registered_name(requested, dataset_name, labels) == expected


@pytest.fixture
def reviews_csv(tmp_path: Path) -> Path:
    """A user's own data with other labels than the emotion study's."""
    rows = [
        (f"{word} number {i}", label)
        for i in range(12)
        for word, label in (("broken again", "complaint"), ("love it", "praise"), ("how do i", "question"))
    ]
    path = tmp_path / "reviews.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_own_data_registers_under_its_own_name_and_never_next_to_other_labels(small_dataset, reviews_csv) -> None:
    name = f"shared-{uuid.uuid4().hex[:8]}"
    tfidf.run(TfidfConfig(dataset=str(small_dataset), registered_model=name))

    with pytest.raises(UserError) as refused:
        tfidf.run(TfidfConfig(dataset=str(reviews_csv), registered_model=name))
    message = str(refused.value)
    assert f"Registered model {name!r} holds models for the labels sadness, joy, love, anger, fear, surprise" in message
    assert "this model's labels are complaint, praise, question" in message
    assert "--registered_model" in message
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{name}'")) == 1

    run_id = tfidf.run(TfidfConfig(dataset=str(reviews_csv), registered_model="auto"))
    assert mlflow.get_run(run_id).data.tags["registered_model"] == "reviews-classifier"
    mlflow.MlflowClient().delete_registered_model("reviews-classifier")


@pytest.mark.slow
def test_registering_says_in_plain_words_what_happened(small_dataset) -> None:
    name = f"plain-{uuid.uuid4().hex[:8]}"
    arguments = ["tfidf", "--dataset", str(small_dataset), "--registered_model", name]

    first = CliRunner().invoke(cli, arguments)
    second = CliRunner().invoke(cli, arguments)

    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert f"registered as version 1 of {name!r} (run " in first.output
    assert f"registered as version 2 of {name!r} (run " in second.output
    assert "already exists" not in first.output + second.output


@pytest.mark.slow  # whole stages logged and read back: seconds
def test_every_registry_step_on_own_data_says_what_it_did_in_the_datas_words(reviews_csv: Path) -> None:
    runner = CliRunner()
    alone = runner.invoke(cli, ["tfidf", "--dataset", str(reviews_csv)])
    assert alone.exit_code == 0, alone.output
    # It registers nothing by default, and says so and how; its 4 validation texts get one line of caution.
    closing = alone.output.strip().splitlines()[-1]
    assert "; not registered: --registered_model auto registers it as 'reviews-classifier' (run " in closing
    assert "validation texts are too few to tell stages apart" in alone.output

    registered = runner.invoke(cli, ["tfidf", "--dataset", str(reviews_csv), "--registered_model", "auto"])
    promoted = runner.invoke(cli, ["promote", "--dataset", str(reviews_csv)])

    assert registered.exit_code == 0 and promoted.exit_code == 0, registered.output + promoted.output
    assert "registered as version 1 of 'reviews-classifier'" in registered.output
    assert promoted.output.strip().splitlines()[-1].startswith("promote: promoted for 'reviews-classifier': ")
    client = mlflow.MlflowClient()
    described = client.get_registered_model("reviews-classifier").description
    assert described.startswith("Text classifier into 3 labels: complaint, praise, question (pyfunc).")
    card = client.get_model_version("reviews-classifier", "1").description
    assert card.startswith("# reviews classifier: tfidf\n") and "emotion" not in card.lower()
