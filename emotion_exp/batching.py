"""Length-sorted dynamic batching and precision contexts, shared by extraction and prediction.

Padding every text to the longest of its split (as the study did) makes most of the compute
attend to padding; sorting texts by token length and padding per batch removes that waste.
Results are put back in input order, and a text's output does not depend on its batch
companions (padding is masked).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from transformers import BatchEncoding, PreTrainedTokenizerBase


@dataclass(frozen=True)
class TokenizedTexts:
    """Token ids of every text (unpadded), truncated to ``max_length``, and how many were cut."""

    input_ids: list[list[int]]
    truncated: int

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def tokenize(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int) -> TokenizedTexts:
    """Tokenize without padding; count the texts that ``max_length`` truncates.

    The tokenizer cuts at ``max_length + 1`` tokens, so a text longer than ``max_length`` comes back
    one token too long and is counted and cut here; texts far longer than the model's limit are
    never tokenized in full (which also made transformers warn of indexing errors we never run into).
    """
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length + 1, add_special_tokens=True)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in encoded)
    if truncated:
        encoded = [ids if len(ids) <= max_length else _truncate(ids, max_length, tokenizer) for ids in encoded]
    return TokenizedTexts(encoded, truncated)


def _truncate(ids: list[int], max_length: int, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Cut to ``max_length`` and keep the closing special token where the tokenizer adds one."""
    if tokenizer.sep_token_id is not None and ids and ids[-1] == tokenizer.sep_token_id:
        return ids[: max_length - 1] + [ids[-1]]
    return ids[:max_length]


def batch_positions(lengths: np.ndarray, batch_size: int, token_budget: int = 0) -> list[np.ndarray]:
    """Positions of each batch, longest texts first: ``batch_size`` texts each, or, with a ``token_budget``,
    as many as keep the padded batch (its longest text's length times its count) within the budget.

    A budget spends the same compute on every batch, so short texts come in big batches (fewer, larger
    matrix multiplies) and long ones in small ones; a text longer than the budget goes alone. The
    longest first so that an out-of-memory batch fails at once rather than at the end.
    """
    order = np.argsort(-lengths, kind="stable")
    if not token_budget:
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    batches = []
    start = 0
    while start < len(order):
        count = max(1, token_budget // max(1, int(lengths[order[start]])))
        batches.append(order[start : start + count])
        start += count
    return batches


def sorted_batches(
    tokenized: TokenizedTexts,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    token_budget: int = 0,
    tensors: str = "pt",
) -> Iterator[tuple[np.ndarray, BatchEncoding]]:
    """Yield ``(positions, padded batch)`` of texts of similar length, longest first (``batch_positions``).

    ``tensors`` is ``pt`` (torch) or ``np``: ONNX Runtime takes numpy, where torch may not be installed.
    """
    for positions in batch_positions(tokenized.lengths, batch_size, token_budget):
        batch = tokenizer.pad(
            {"input_ids": [tokenized.input_ids[i] for i in positions]},
            padding="longest",
            return_tensors=tensors,
        )
        yield positions, batch


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision == "bf16"``, a no-op otherwise."""
    import torch

    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def best_device() -> torch.device:
    """The first CUDA device where one is present, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
