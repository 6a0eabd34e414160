"""One batched forward loop for every inference: extraction, the pyfunc models and the fine-tuned model's scores.

Texts are tokenized once, sorted by length and padded per batch (``batching``), run under
``torch.inference_mode`` in the requested precision, and come back in input order as float32:
class logits, class probabilities (softmax of the logits divided by a temperature, computed in fp32)
and/or the pooled last hidden state.
Padding is masked, so a text's outputs do not depend on its batch companions. This module never
imports mlflow.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from emotion_exp import batching

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


POOLINGS = ("cls", "mean")


@dataclass(frozen=True)
class Outputs:
    """What one pass over the texts produced, in input order, and what it cost.

    ``seconds`` covers tokenization and the forward passes (no loading).
    """

    logits: np.ndarray | None
    """The classifier's logits in fp32, ``(texts, labels)``; None unless asked for."""
    probabilities: np.ndarray | None
    """Softmax of the logits divided by the temperature, ``(texts, labels)``; None unless asked for."""
    pooled: np.ndarray | None
    """Pooled last hidden state, ``(texts, hidden size)``; None unless a pooling was asked for."""
    truncated: int
    """Texts that ``max_length`` cut."""
    seconds: float


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``cls``: the first token's state (the study's choice); ``mean``: the mean over real tokens."""
    if pooling == "cls":
        return hidden[:, 0].float()
    if pooling == "mean":
        hidden = hidden.float()
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")


def run(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int,
    precision: str,
    batch_tokens: int = 0,
    logits: bool = False,
    probabilities: bool = False,
    temperature: float = 1.0,
    pooling: str | None = None,
    description: str = "",
    progress: bool = False,
) -> Outputs:
    """Run ``model`` over ``texts`` in length-sorted batches; return the outputs asked for.

    Batches hold ``batch_size`` texts, or with ``batch_tokens`` about that many padded tokens each
    (``batching.batch_positions``).
    ``logits`` and ``probabilities`` need a sequence classifier; the probabilities are the softmax of
    the logits divided by ``temperature`` (1 = the raw softmax; calibration fits it). ``pooling`` (``cls`` or ``mean``)
    pools the last hidden state of a bare encoder or of a classifier's encoder. torch's current
    intra-op thread count holds (``threads.use``).
    """
    import torch

    from emotion_exp import console

    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
    count = len(texts)
    raw = np.empty((count, model.config.num_labels), dtype=np.float32) if logits else None
    probs = np.empty((count, model.config.num_labels), dtype=np.float32) if probabilities else None
    pooled = np.empty((count, model.config.hidden_size), dtype=np.float32) if pooling else None
    if not count:  # the tokenizer rejects an empty batch
        return Outputs(raw, probs, pooled, 0, 0.0)
    device = next(model.parameters()).device
    # A classifier's last hidden state comes only with all of them; a bare encoder returns it as such.
    all_hidden = bool((logits or probabilities) and pooling)
    start = time.perf_counter()
    tokenized = batching.tokenize(texts, tokenizer, max_length)
    with (
        torch.inference_mode(),
        batching.autocast(precision, device),
        console.progress(count, description, enabled=progress) as bar,
    ):
        for positions, batch in batching.sorted_batches(tokenized, tokenizer, batch_size, batch_tokens):
            batch = batch.to(device)
            output = model(**batch, output_hidden_states=True) if all_hidden else model(**batch)
            if raw is not None:
                raw[positions] = output.logits.float().cpu().numpy()
            if probs is not None:
                probs[positions] = torch.softmax(output.logits.float() / temperature, dim=-1).cpu().numpy()
            if pooled is not None:
                hidden = output.hidden_states[-1] if all_hidden else output.last_hidden_state
                pooled[positions] = pool(hidden, batch["attention_mask"], pooling).cpu().numpy()
            bar.update(len(positions))
    return Outputs(raw, probs, pooled, tokenized.truncated, time.perf_counter() - start)
