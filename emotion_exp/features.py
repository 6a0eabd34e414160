"""Pooled last hidden states of an encoder, fast on a CPU and exact.

The forward passes are ``inference.run``'s (length-sorted batches, padding masked, so a text's
features do not depend on its batch companions). The features come back as float32 in input
order. This module never imports mlflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emotion_exp import batching, inference, models, onnx_runtime, threads
from emotion_exp.data import SPLITS

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from emotion_exp.data import DatasetSplits
    from emotion_exp.engine import Engine

POOLINGS = ("cls", "mean")


@dataclass(frozen=True)
class Encoder:
    """A loaded tokenizer and encoder, the precision they run in and the device they run on."""

    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    precision: str  # resolved: fp32 or bf16
    device: torch.device
    threads: int = 1
    """The intra-op thread count it runs on (``threads.use``)."""
    session: onnx_runtime.Session | None = None
    """An ONNX Runtime session over the model's pooled export: the forward passes run there, not in torch."""

    @property
    def runtime(self) -> str:
        """``torch``, or the ONNX runtime its session's export came from."""
        if self.session is None:
            return "torch"
        return "onnx-int8" if self.session.path.stem.endswith("-int8") else "onnx"

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
    threads: int = 1
    """The intra-op thread count it ran on."""

    @property
    def texts_per_second(self) -> float:
        return len(self.features) / self.seconds if self.seconds > 0 else 0.0


def load_encoder(
    resolved: models.ResolvedModel,
    precision: str,
    threads: str | int = "auto",
    *,
    runtime: str = "torch",
    pooling: str = "cls",
) -> Encoder:
    """Load tokenizer and encoder for a resolved ``precision`` (fp32 or bf16), ``threads`` and ``runtime``."""
    encoder = encoder_from(models.load_tokenizer(resolved), models.load_encoder(resolved), precision, threads)
    return on_runtime(encoder, runtime, pooling)


def encoder_from(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, precision: str, threads_spec: str | int = "auto"
) -> Encoder:
    """Wrap an already loaded tokenizer and model (the pyfunc model loads them from its artifacts).

    ``precision`` is resolved already (``engine``, once, where the stage or the loaded model
    starts): fp32 or bf16.
    """
    device = batching.best_device()
    count = threads.use(threads_spec)
    return Encoder(tokenizer, model.to(device).eval(), models.check_resolved(precision), device, count)


def on_runtime(encoder: Encoder, runtime: str, pooling: str) -> Encoder:
    """``encoder`` on a resolved ``runtime``: torch as it is; onnx or onnx-int8 through its export with
    ``pooling`` in the graph (cached, ``onnx_runtime.export``), on the encoder's thread count."""
    if runtime == "torch":
        return dataclasses.replace(encoder, session=None)
    session = onnx_runtime.load(
        encoder.model, encoder.tokenizer, runtime=runtime, kind="pooled", pooling=pooling, threads=encoder.threads
    )
    return dataclasses.replace(encoder, session=session)


def feature_key(
    resolved: models.ResolvedModel, pooling: str, max_length: int, engine: Engine, weights: str
) -> dict[str, str]:
    """What features depend on besides the data: an extract run with the same key is reused.

    A local folder counts by its absolute path (a relative spec means another folder elsewhere);
    ``weights`` is the digest of the model's weights and tokenizer (``models.weights_digest``,
    ``models.tokenizer_digest``), so changed weights at the same path, or a packaged model upgraded
    in place, are extracted anew; precision and runtime are the resolved ones (``auto`` counts as
    what it resolved to on this hardware).
    """
    return {
        "model": resolved.location if resolved.source == "local" else resolved.spec,
        "weights": weights,
        "pooling": pooling,
        "max_length": str(max_length),
        "precision": models.check_resolved(engine.precision),
        "runtime": engine.runtime,
    }


def model_digest(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> str:
    """One digest of a model's weights and its tokenizer, for ``feature_key``."""
    return hashlib.sha256(f"{models.weights_digest(model)}:{models.tokenizer_digest(tokenizer)}".encode()).hexdigest()


def extract(
    texts: Sequence[str],
    encoder: Encoder,
    *,
    pooling: str = "cls",
    max_length: int = 128,
    batch_size: int = 32,
    batch_tokens: int = 0,
    description: str = "extract",
    progress: bool = True,
) -> Extraction:
    """Pooled last hidden states of ``texts`` as float32, in input order, on the encoder's thread count.

    Batches hold ``batch_size`` texts, or with ``batch_tokens`` about that many padded tokens each.
    """
    threads.use(encoder.threads)  # torch's count is global: another encoder may have set its own since
    if encoder.session is not None:
        if encoder.session.kind != "pooled" or pooling != encoder.session.pooling:
            raise ValueError(f"the encoder's ONNX export pools by {encoder.session.pooling}, not {pooling}")
        outputs = onnx_runtime.run(
            encoder.session,
            encoder.tokenizer,
            texts,
            max_length=max_length,
            batch_size=batch_size,
            batch_tokens=batch_tokens,
            description=description,
            progress=progress,
        )
        return Extraction(outputs.pooled, outputs.truncated, outputs.seconds, encoder.threads)
    outputs = inference.run(
        encoder.model,
        encoder.tokenizer,
        texts,
        max_length=max_length,
        batch_size=batch_size,
        batch_tokens=batch_tokens,
        precision=encoder.precision,
        pooling=pooling,
        description=description,
        progress=progress,
    )
    return Extraction(outputs.pooled, outputs.truncated, outputs.seconds, encoder.threads)


def extract_splits(
    splits: DatasetSplits,
    encoder: Encoder,
    *,
    pooling: str,
    max_length: int,
    batch_size: int,
    batch_tokens: int = 0,
) -> dict[str, Extraction]:
    """Features of every split, with one progress bar per split."""
    return {
        name: extract(
            splits.split(name)["text"].tolist(),
            encoder,
            pooling=pooling,
            max_length=max_length,
            batch_size=batch_size,
            batch_tokens=batch_tokens,
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
