"""Model resolution offline, clear errors for unknown models, and bf16 detection by CPU flags."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from emotion_exp import models
from emotion_exp.config import DEFAULT_MODEL
from emotion_exp.errors import UserError


def test_the_default_model_resolves_to_the_packaged_copy() -> None:
    resolved = models.resolve(DEFAULT_MODEL)
    assert resolved.source == "packaged"
    assert (Path(resolved.location) / "config.json").is_file()


def test_a_local_folder_loads_as_it_is(tiny_model_dir: Path) -> None:
    resolved = models.resolve(str(tiny_model_dir))
    assert resolved.source == "local"
    encoder = models.load_encoder(resolved)
    assert encoder.config.hidden_size == 32
    assert not encoder.training
    assert models.load_tokenizer(resolved)("i feel fine")["input_ids"][0] == 101


def test_an_unknown_model_offline_fails_at_once_and_names_the_download_command() -> None:
    started = time.monotonic()
    with pytest.raises(UserError) as error:
        models.resolve("nobody/no-such-model")
    assert time.monotonic() - started < 3
    message = str(error.value)
    assert message.startswith("Model 'nobody/no-such-model' could not be loaded: it is not a local folder")
    assert "HF_HUB_OFFLINE is set" in message and "`hf download nobody/no-such-model`" in message
    assert "--model" in message and "huggingface-cli" not in message


def test_an_unreachable_hub_fails_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    started = time.monotonic()
    with pytest.raises(UserError, match=r"asking the hub failed: \w+, and it is not in the Hugging Face cache"):
        models.resolve("distilbert-base-uncased-not-cached")
    assert time.monotonic() - started < models.HUB_TIMEOUT_S + 2


def test_the_download_command_named_in_messages_is_the_one_huggingface_hub_installs() -> None:
    from importlib.metadata import entry_points

    commands = {script.name: script.value for script in entry_points(group="console_scripts")}
    assert commands["hf"].startswith("huggingface_hub.")


def test_a_folder_without_weights_says_what_a_model_folder_needs(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="save_pretrained"):
        models.load_encoder(models.resolve(str(tmp_path)))


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ({"avx2", "avx512f"}, False),
        ({"avx2", "avx512f", "avx512_bf16"}, True),
        ({"amx_bf16", "avx2"}, True),
        (set(), False),
    ],
)
def test_bf16_is_native_only_with_the_cpu_flags(monkeypatch: pytest.MonkeyPatch, flags: set[str], native: bool) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "cpu_flags", lambda: flags)
    models.native_bf16.cache_clear()
    try:
        assert models.native_bf16() is native
        assert models.resolve_precision("auto") == ("bf16" if native else "fp32")
        assert models.resolve_precision("fp32") == "fp32"
    finally:
        models.native_bf16.cache_clear()
