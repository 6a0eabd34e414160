"""ONNX Runtime as a second engine for the encoder: export once, cache on disk, run exactly.

On a CPU without native bf16 torch runs fp32, and ONNX Runtime's fp32 is about twice as fast on
the same texts with the same features (``benchmarks.engines``). A model is exported with
``torch.onnx.export`` (TorchScript exporter: dynamic batch and token axes, exact to ~1e-6),
pooling (extraction) or logits (a sequence classifier) inside the graph, and cached under the
user's cache folder by what determines the export (``export_key``: the weights' digest, the same
for every copy of the weights, kind, pooling, opset, torch and transformers); ``onnx-int8`` is
``quantize_dynamic`` of that fp32 export, cached the same way. Files land by ``os.replace``, so
two processes exporting the same model at once never leave a half-written file, and the cache
keeps at most ``cache_limit_bytes``, the least recently used exports removed first (``evict``).
This module never imports mlflow.

A fine-tuned classifier is logged with a serving folder (``write_serving_folder``: its logits
export, tokenizer.json and settings); ``open_serving_folder`` and ``run`` serve it with
onnxruntime, tokenizers and numpy only, so this module imports torch and transformers only
inside the functions that export.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emotion_exp import batching, inference, models
from emotion_exp.errors import UserError
from emotion_exp.threads import WAIT_POLICY

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

KINDS = ("pooled", "logits")
OPSET = 17
INSTALL_HINT = "pip install onnxruntime onnx"


def available() -> bool:
    """Whether onnxruntime and onnx import here."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cache_dir() -> Path:
    """Where exports are kept: ``$XDG_CACHE_HOME/emotion-exp/onnx`` (``~/.cache`` by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "emotion-exp" / "onnx"


CACHE_LIMIT = "EMOTION_EXP_ONNX_CACHE_MB"
DEFAULT_CACHE_MB = 2048
"""The cache keeps at most this many MB of exports (``CACHE_LIMIT`` sets another): the least recently used go first."""
EXPORT_FORMAT = 2
"""Bumped when what ``export`` writes changes (the graph, the exporter's options), so older files are not reused."""
STALE_PARTIAL_S = 3600
"""A half-written export older than this was left by a process that died while exporting: it is removed."""


def export_key(model: PreTrainedModel, kind: str, pooling: str) -> str:
    """What determines an export, as a digest: the weights (``models.weights_digest``, the same for every copy of
    them, wherever it was loaded from), kind and pooling, the opset, this module's format, torch and transformers."""
    import torch
    import transformers

    parts = (
        models.weights_digest(model),
        kind,
        pooling if kind == "pooled" else "none",
        f"opset {OPSET}",
        f"format {EXPORT_FORMAT}",
        f"torch {torch.__version__}",
        f"transformers {transformers.__version__}",
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def cache_limit_bytes() -> int:
    """The cache's size limit (``CACHE_LIMIT`` in MB, default ``DEFAULT_CACHE_MB``); a bad value is a UserError."""
    text = os.environ.get(CACHE_LIMIT, "").strip() or str(DEFAULT_CACHE_MB)
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0 or megabytes == float("inf"):
        raise UserError(f"{CACHE_LIMIT} must be a number of MB, 0 or more; got {text!r}.")
    return int(megabytes * 1024 * 1024)


def _used(path: Path) -> Path:
    """Mark ``path`` as just used (its modification time), so that eviction keeps it longest."""
    os.utime(path)
    return path


def evict(folder: Path, keep: Path, limit: int | None = None) -> list[Path]:
    """Remove the least recently used exports in ``folder`` until it holds at most ``limit`` bytes
    (``cache_limit_bytes`` by default).

    ``keep`` (the export about to be opened) always stays, even alone over the limit; so does every
    file another process is writing (a partial export younger than ``STALE_PARTIAL_S``). Returns
    what was removed.
    """
    limit = cache_limit_bytes() if limit is None else limit
    now = time.time()
    removed, exports = [], []
    for path in folder.glob("*.onnx"):
        with contextlib.suppress(FileNotFoundError):  # another process may remove it at the same time
            status = path.stat()
            if path.name.startswith("."):
                if now - status.st_mtime > STALE_PARTIAL_S:
                    path.unlink()
                    removed.append(path)
            elif path != keep:
                exports.append((status.st_mtime, status.st_size, path))
    total = sum(size for _, size, _ in exports) + (keep.stat().st_size if keep.exists() else 0)
    for _, size, path in sorted(exports):
        if total <= limit:
            break
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
        total -= size
    return removed


def _graph(model: PreTrainedModel, kind: str, pooling: str) -> torch.nn.Module:
    """The exported module: the model with pooling (or fp32 logits) inside the graph."""
    import torch

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            if kind == "logits":
                return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
            # A classifier's encoder is its base model; a bare encoder is its own.
            output = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)
            return inference.pool(output.last_hidden_state, attention_mask, pooling)

    return Graph().eval()


def export(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    kind: str,
    pooling: str = "cls",
    quantized: bool = False,
    folder: Path | None = None,
) -> Path:
    """The cached ONNX file of ``model`` (``kind``: pooled hidden states or logits), exported on a miss.

    ``quantized`` gives the int8 dynamic quantisation of the fp32 export (cached too).
    """
    import torch

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    limit = cache_limit_bytes()  # a bad setting fails before minutes of exporting
    folder = folder or cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    key = export_key(model, kind, pooling)
    path = folder / f"{key}-{kind}-fp32.onnx"
    if path.exists():
        _used(path)
    else:
        sample = tokenizer(["a first text", "and a second, longer one"], padding=True, return_tensors="pt")
        axes = {0: "batch", 1: "tokens"}
        with _landing(path) as partial, torch.inference_mode(False), warnings.catch_warnings():
            # The tracer's notes on Python branches and advanced indexing, printed at every export (a finetune
            # run's console): the export is checked against torch on varying batch and token counts instead.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(
                _graph(_fp32_cpu(model), kind, pooling),
                (sample["input_ids"], sample["attention_mask"]),
                str(partial),
                input_names=["input_ids", "attention_mask"],
                output_names=[kind],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, kind: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        evict(folder, keep=path, limit=limit)
    if not quantized:
        return path
    return quantize(path, folder / f"{_quantized_key(key)}-{kind}-int8.onnx")


def _quantized_key(source: str) -> str:
    """The digest of the int8 quantisation of the export ``source`` names, by this onnxruntime."""
    from importlib.metadata import version

    return hashlib.sha256(f"{source}\nint8\nonnxruntime {version('onnxruntime')}".encode()).hexdigest()[:32]


def quantize(path: Path, target: Path | None = None) -> Path:
    """The int8 dynamic quantisation of the fp32 export at ``path``, written to ``target`` once.

    ``target`` defaults to the cache, named by the export file's digest (a logged model's folder may
    be read-only).
    """
    if target is None:
        target = cache_dir() / f"{_quantized_key(hashlib.sha256(path.read_bytes()).hexdigest())}-file-int8.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return _used(target)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _landing(target) as partial:
        quantize_dynamic(str(path), str(partial), weight_type=QuantType.QInt8)
    evict(target.parent, keep=target)
    return target


def _fp32_cpu(model: PreTrainedModel) -> PreTrainedModel:
    """``model`` itself where it is fp32 on the CPU, else an fp32 CPU copy (the caller's stays as it is)."""
    import copy

    import torch

    parameter = next(model.parameters())
    if parameter.dtype == torch.float32 and parameter.device.type == "cpu":
        return model
    return copy.deepcopy(model).float().cpu()


class _landing:
    """A temporary name next to ``path``, moved onto it only when the block succeeds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".onnx")
        os.close(handle)
        self.partial = Path(name)

    def __enter__(self) -> Path:
        return self.partial

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


@dataclass(frozen=True)
class Session:
    """An ONNX Runtime session over one export and what it outputs."""

    session: Any  # onnxruntime.InferenceSession
    kind: str
    pooling: str
    path: Path
    threads: int


def open_session(path: Path, kind: str, pooling: str = "cls", threads: int = 1) -> Session:
    """A CPU session with all graph optimisations on ``threads`` intra-op threads.

    Pass the count torch got (``features.Encoder.threads``, resolved once by the ``threads`` module),
    so both engines run on the same count.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # ONNX Runtime's idle threads spin by default, as OpenMP's did: follow the one wait policy the
    # project sets (threads.prefer_passive_openmp), so they sleep unless OMP_WAIT_POLICY=ACTIVE.
    spinning = os.environ.get(WAIT_POLICY, "").upper() == "ACTIVE"
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Session(session, kind, pooling, path, threads)


def load(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    runtime: str,
    kind: str,
    pooling: str = "cls",
    threads: int = 1,
    folder: Path | None = None,
) -> Session:
    """Export (or find) ``model`` for a resolved ONNX ``runtime`` and open a session on it."""
    if runtime not in ("onnx", "onnx-int8"):
        raise ValueError(f"expected a resolved ONNX runtime, onnx or onnx-int8; got {runtime!r}")
    path = export(model, tokenizer, kind=kind, pooling=pooling, quantized=runtime == "onnx-int8", folder=folder)
    return open_session(path, kind, pooling, threads)


def run(
    session: Session,
    tokenizer: PreTrainedTokenizerBase | FastTokenizer,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int,
    batch_tokens: int = 0,
    temperature: float = 1.0,
    description: str = "",
    progress: bool = False,
) -> inference.Outputs:
    """The session's outputs over ``texts`` in ``inference.run``'s length-sorted batches, in input order.

    A pooled export fills ``pooled``; a logits export fills ``logits`` and ``probabilities``
    (softmax of logits / ``temperature`` in fp32, as torch's). ``progress`` shows a bar (or lines)
    named ``description``, as ``inference.run`` does.
    """
    from emotion_exp import console

    start = time.perf_counter()
    count = len(texts)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    truncated = 0
    if count:
        tokenized = batching.tokenize(texts, tokenizer, max_length)
        truncated = tokenized.truncated
        batches = batching.sorted_batches(tokenized, tokenizer, batch_size, batch_tokens, tensors="np")
        with console.progress(count, description, enabled=progress) as bar:
            for positions, batch in batches:
                feeds = {name: np.asarray(batch[name], dtype=np.int64) for name in ("input_ids", "attention_mask")}
                parts.append((np.asarray(positions), session.session.run(None, feeds)[0]))
                bar.update(len(positions))
    width = parts[0][1].shape[1] if parts else 0
    result = np.empty((count, width), dtype=np.float32)
    for positions, values in parts:
        result[positions] = values
    seconds = time.perf_counter() - start
    if session.kind == "pooled":
        return inference.Outputs(None, None, result, truncated, seconds)
    scaled = result / temperature
    exp = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return inference.Outputs(result, exp / exp.sum(axis=1, keepdims=True), None, truncated, seconds)


# A logged classifier's serving folder: what a served model needs to run without torch and transformers.
SERVING_EXPORT = "model.onnx"
SERVING_TOKENIZER = "tokenizer.json"
SERVING_SETTINGS = "serving.json"


def importable(name: str) -> bool:
    """Whether ``name`` can be imported here, without importing it (torch alone takes seconds)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def write_serving_folder(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> Path:
    """Write ``model``'s fp32 logits export, its tokenizer.json and the settings a torch-free load needs.

    The export comes from the cache (``export``); the settings are the padding and truncation the
    transformers tokenizer applies and the label names, so ``FastTokenizer`` batches as torch does.
    """
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(export(model, tokenizer, kind="logits"), folder / SERVING_EXPORT)
    tokenizer.backend_tokenizer.save(str(folder / SERVING_TOKENIZER))
    settings = {
        "pad_token_id": tokenizer.pad_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
        "label_names": [model.config.id2label[i] for i in range(model.config.num_labels)],
    }
    (folder / SERVING_SETTINGS).write_text(json.dumps(settings, indent=2))
    return folder


class FastTokenizer:
    """A saved tokenizer.json run by the ``tokenizers`` package: what ``batching`` asks of a transformers tokenizer.

    Same truncation (``max_length`` counting the special tokens) and padding (the pad id, the side)
    as the transformers tokenizer it was saved from, so a served model needs no transformers.
    """

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        settings = json.loads((folder / SERVING_SETTINGS).read_text())
        self._tokenizer = Tokenizer.from_file(str(folder / SERVING_TOKENIZER))
        self._tokenizer.no_padding()
        self._truncation_side = settings["truncation_side"]
        self._padding_side = settings["padding_side"]
        self.pad_token_id: int = settings["pad_token_id"]
        self.sep_token_id: int | None = settings["sep_token_id"]
        self.label_names: list[str] = settings["label_names"]

    def __call__(
        self, texts: list[str], *, truncation: bool, max_length: int, add_special_tokens: bool
    ) -> dict[str, list[list[int]]]:
        if truncation:
            self._tokenizer.enable_truncation(max_length, direction=self._truncation_side)
        else:
            self._tokenizer.no_truncation()
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        return {"input_ids": [encoding.ids for encoding in encodings]}

    def pad(self, encoded: dict[str, list[list[int]]], *, padding: str, return_tensors: str) -> dict[str, np.ndarray]:
        """Pad to the longest (the only ``padding`` batching asks for) as numpy arrays."""
        if padding != "longest" or return_tensors != "np":
            raise ValueError(f"FastTokenizer pads to the longest as numpy only; got {padding!r}, {return_tensors!r}")
        rows = encoded["input_ids"]
        width = max((len(ids) for ids in rows), default=0)
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for row, ids in enumerate(rows):
            span = slice(width - len(ids), width) if self._padding_side == "left" else slice(0, len(ids))
            input_ids[row, span] = ids
            attention_mask[row, span] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}


def open_serving_folder(folder: Path, runtime: str, threads: int) -> tuple[Session, FastTokenizer]:
    """A session on a serving folder's export (``onnx-int8``: its quantisation, cached) and its tokenizer."""
    path = folder / SERVING_EXPORT
    if runtime == "onnx-int8":
        path = quantize(path)
    return open_session(path, "logits", threads=threads), FastTokenizer(folder)
