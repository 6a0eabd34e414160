"""The one batched forward loop: the same outputs as a plain forward pass, in input order, whatever the batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emotion_exp import inference

TEXTS = [
    "i feel so happy today",
    "i am scared of what comes next in my life and i cannot sleep at night because of it",
    "ok",
    "my heart is full of love for my family",
]


@pytest.fixture(scope="module")
def classifier(tiny_model_dir: Path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3).eval()
    return AutoTokenizer.from_pretrained(tiny_model_dir), model


def test_probabilities_and_cls_states_match_one_text_at_a_time_forward_passes(classifier) -> None:
    import torch

    tokenizer, model = classifier
    outputs = inference.run(
        model, tokenizer, TEXTS, max_length=128, batch_size=3, precision="fp32", probabilities=True, pooling="cls"
    )
    assert outputs.probabilities.shape == (4, 3) and outputs.pooled.shape == (4, 32)
    assert outputs.truncated == 0 and outputs.seconds > 0
    for row, text in enumerate(TEXTS):
        with torch.inference_mode():
            alone = model(**tokenizer([text], return_tensors="pt"), output_hidden_states=True)
        np.testing.assert_allclose(outputs.probabilities[row], torch.softmax(alone.logits, -1)[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(outputs.pooled[row], alone.hidden_states[-1][0, 0].numpy(), atol=1e-5)


def test_only_what_is_asked_for_is_computed_and_no_texts_give_empty_arrays(classifier) -> None:
    tokenizer, model = classifier
    only_probabilities = inference.run(
        model, tokenizer, TEXTS, max_length=4, batch_size=8, precision="fp32", probabilities=True
    )
    assert only_probabilities.pooled is None and only_probabilities.truncated == 3
    np.testing.assert_allclose(only_probabilities.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    empty = inference.run(
        model, tokenizer, [], max_length=8, batch_size=8, precision="fp32", probabilities=True, pooling="mean"
    )
    assert empty.probabilities.shape == (0, 3) and empty.pooled.shape == (0, 32) and empty.seconds == 0.0


def test_an_unknown_pooling_is_refused(classifier) -> None:
    tokenizer, model = classifier
    with pytest.raises(ValueError, match="pooling must be one of cls, mean"):
        inference.run(model, tokenizer, TEXTS, max_length=8, batch_size=8, precision="fp32", pooling="max")


def test_batches_run_by_length_longest_first(classifier) -> None:
    from emotion_exp import batching

    tokenizer, _ = classifier
    texts = ["a " * n for n in (5, 1, 9, 3, 7, 2, 8)]
    tokenized = batching.tokenize(texts, tokenizer, 128)
    batches = [positions.tolist() for positions, _ in batching.sorted_batches(tokenized, tokenizer, 2)]
    # By length, longest first: 9 8 | 7 5 | 3 2 | 1.
    assert batches == [[2, 6], [4, 0], [3, 5], [1]]


@pytest.mark.parametrize("budget", [1, 40, 100, 257, 4096])
def test_a_token_budget_bounds_every_batch_and_takes_every_text_once_longest_first(budget: int) -> None:
    from emotion_exp import batching

    lengths = np.random.default_rng(budget).integers(2, 130, size=300)
    batches = batching.batch_positions(lengths, batch_size=32, token_budget=budget)
    for positions in batches:
        padded = lengths[positions].max() * len(positions)
        assert padded <= budget or len(positions) == 1, (budget, lengths[positions].tolist())
    taken = np.concatenate(batches)
    assert sorted(taken.tolist()) == list(range(len(lengths)))
    assert (np.diff(lengths[taken]) <= 0).all()  # longest first, across batches too
    # Full batches: a batch that stopped below the budget could not take its next text.
    for positions in batches[:-1]:
        assert (len(positions) + 1) * lengths[positions].max() > budget


def test_without_a_budget_batches_hold_batch_size_texts() -> None:
    from emotion_exp import batching

    batches = batching.batch_positions(np.array([5, 1, 9, 3, 7, 2, 8]), batch_size=3)
    assert [b.tolist() for b in batches] == [[2, 6, 4], [0, 3, 5], [1]]


def test_token_batches_give_the_same_outputs_in_input_order(classifier) -> None:
    tokenizer, model = classifier
    texts = [*TEXTS, "a " * 60, "b", *TEXTS[::-1]]
    common = {"max_length": 128, "precision": "fp32", "probabilities": True, "pooling": "mean"}
    fixed = inference.run(model, tokenizer, texts, batch_size=32, **common)
    # 30 tokens: the 62-token text goes alone, the others in batches of one to six.
    budget = inference.run(model, tokenizer, texts, batch_size=32, batch_tokens=30, **common)
    np.testing.assert_allclose(budget.probabilities, fixed.probabilities, atol=1e-5)
    np.testing.assert_allclose(budget.pooled, fixed.pooled, atol=1e-5)


def test_logits_come_raw_and_probabilities_are_their_softmax_over_the_temperature(classifier) -> None:
    import torch

    tokenizer, model = classifier
    common = {"max_length": 128, "batch_size": 3, "precision": "fp32"}
    outputs = inference.run(model, tokenizer, TEXTS, **common, logits=True, probabilities=True, temperature=2.5)
    with torch.inference_mode():
        forward = model(**tokenizer(TEXTS[:1], return_tensors="pt")).logits[0]
    np.testing.assert_allclose(outputs.logits[0], forward.numpy(), atol=1e-5)
    np.testing.assert_allclose(
        outputs.probabilities, torch.softmax(torch.from_numpy(outputs.logits) / 2.5, -1), atol=1e-6
    )
    raw = inference.run(model, tokenizer, TEXTS, **common, probabilities=True)
    assert raw.logits is None
    # A temperature above 1 flattens every row; the predicted label never changes.
    assert (outputs.probabilities.max(axis=1) < raw.probabilities.max(axis=1)).all()
    np.testing.assert_array_equal(outputs.probabilities.argmax(axis=1), raw.probabilities.argmax(axis=1))
