"""Pooled last hidden states of an encoder, fast on a CPU and exact.

Texts are sorted by token length and padded per batch (``batching``), so little compute goes
to padding; padding is masked, so a text's features do not depend on its batch companions.
The features come back as float32 in input order. This module never imports mlflow.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emotion_exp import batching, models
from emotion_exp.data import SPLITS

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from emotion_exp.data import DatasetSplits

POOLINGS = ("cls", "mean")


@dataclass(frozen=True)
class Encoder:
    """A loaded tokenizer and encoder, the precision they run in and the device they run on."""

    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    precision: str  # resolved: fp32 or bf16
    device: torch.device

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


@dataclass(frozen=True)
class Extraction:
    """One split's features and what producing them cost.

    ``seconds`` covers tokenization and the forward passes only (no loading, no plotting).
    """

    features: np.ndarray
    truncated: int
    seconds: float

    @property
    def texts_per_second(self) -> float:
        return len(self.features) / self.seconds if self.seconds > 0 else 0.0


def load_encoder(resolved: models.ResolvedModel, precision: str) -> Encoder:
    """Load tokenizer and encoder for ``precision`` (``auto`` resolved for this hardware)."""
    return encoder_from(models.load_tokenizer(resolved), models.load_encoder(resolved), precision)


def encoder_from(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, precision: str) -> Encoder:
    """Wrap an already loaded tokenizer and model (the pyfunc model loads them from its artifacts)."""
    device = batching.best_device()
    return Encoder(tokenizer, model.to(device).eval(), models.resolve_precision(precision), device)


def feature_key(resolved: models.ResolvedModel, pooling: str, max_length: int, precision: str) -> dict[str, str]:
    """What features depend on besides the data: an extract run with the same key is reused.

    A local folder counts by its absolute path (a relative spec means another folder elsewhere);
    ``auto`` precision counts as what it resolves to on this hardware.
    """
    return {
        "model": resolved.location if resolved.source == "local" else resolved.spec,
        "pooling": pooling,
        "max_length": str(max_length),
        "precision": models.resolve_precision(precision),
    }


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``cls``: the first token's state (the study's choice); ``mean``: the mean over real tokens."""
    if pooling == "cls":
        return hidden[:, 0].float()
    if pooling == "mean":
        hidden = hidden.float()
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")


def extract(
    texts: Sequence[str],
    encoder: Encoder,
    *,
    pooling: str = "cls",
    max_length: int = 128,
    batch_size: int = 32,
    description: str = "extract",
    progress: bool = True,
) -> Extraction:
    """Pooled last hidden states of ``texts`` as float32, in input order."""
    import torch

    from emotion_exp import console

    features = np.empty((len(texts), encoder.hidden_size), dtype=np.float32)
    if not texts:  # the tokenizer rejects an empty batch
        return Extraction(features, 0, 0.0)
    start = time.perf_counter()
    tokenized = batching.tokenize(texts, encoder.tokenizer, max_length)
    with (
        torch.inference_mode(),
        batching.autocast(encoder.precision, encoder.device),
        console.progress(len(texts), description, enabled=progress) as bar,
    ):
        for positions, batch in batching.sorted_batches(tokenized, encoder.tokenizer, batch_size):
            batch = batch.to(encoder.device)
            hidden = encoder.model(**batch).last_hidden_state
            features[positions] = pool(hidden, batch["attention_mask"], pooling).cpu().numpy()
            bar.update(len(positions))
    return Extraction(features, tokenized.truncated, time.perf_counter() - start)


def extract_splits(
    splits: DatasetSplits,
    encoder: Encoder,
    *,
    pooling: str,
    max_length: int,
    batch_size: int,
) -> dict[str, Extraction]:
    """Features of every split, with one progress bar per split."""
    return {
        name: extract(
            splits.split(name)["text"].tolist(),
            encoder,
            pooling=pooling,
            max_length=max_length,
            batch_size=batch_size,
            description=f"extract {name}",
        )
        for name in SPLITS
    }


@dataclass(frozen=True)
class FeatureSet:
    """Features and labels of every split, as saved with an extract run."""

    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    label_names: tuple[str, ...]


def save(path: Path, extractions: dict[str, Extraction], splits: DatasetSplits) -> Path:
    """Write all splits to one ``.npz``: float32 ``features``, ``label``, ``split`` and ``label_names``."""
    names = list(extractions)
    np.savez_compressed(
        path,
        features=np.concatenate([extractions[n].features for n in names]).astype(np.float32, copy=False),
        label=np.concatenate([splits.split(n)["label"].to_numpy(dtype=np.int64) for n in names]),
        split=np.concatenate([np.full(len(extractions[n].features), n) for n in names]),
        label_names=np.asarray(splits.label_names),
    )
    return path


def load(path: Path) -> FeatureSet:
    """Read a file written by ``save``."""
    with np.load(path, allow_pickle=False) as data:
        split = data["split"]
        return FeatureSet(
            features={n: data["features"][split == n] for n in SPLITS},
            labels={n: data["label"][split == n] for n in SPLITS},
            label_names=tuple(str(n) for n in data["label_names"]),
        )
