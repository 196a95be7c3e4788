"""Generation backends behind one small contract.

An engine turns chat conversations into replies (`generate`) and scores given continuations
(`logprobs`, used by judges). Backends are chosen from a plain dict by name; each imports its
heavy dependency only when it is built, so a missing extra fails with one actionable line.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

from cai_kit.errors import UsageError

Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class GenParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # >1 discourages the loops small models fall into when greedy
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (end of turn), "length" (hit max_new_tokens) or "error" (text holds why)
    tokens: int


class Engine(Protocol):
    model_name: str

    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        """One reply per conversation, in order.

        A conversation that ends with an assistant message is continued (the reply is
        prefilled with that text); the returned text excludes the prefill.
        """
        ...

    def logprobs(self, conversations: list[Conversation], continuations: list[str]) -> list[float]:
        """Sum of the log-probabilities of each continuation as the start of the assistant's reply."""
        ...

    def close(self) -> None: ...


# name -> (module, class, pip extra that provides its dependency)
ENGINES: dict[str, tuple[str, str, str | None]] = {
    "transformers": ("cai_kit.engines.transformers", "TransformersEngine", None),
}
# Backends the contract is designed for but that are not written yet.
PLANNED = {"vllm": "in-process vllm", "openai": "any OpenAI-compatible server"}


def load_engine(name: str, model: str, **options: Any) -> Engine:
    """Build the engine `name` for `model`; options are the engine's own keyword arguments."""
    if name == "auto":
        name = "vllm" if "vllm" in ENGINES and _vllm_usable() else "transformers"
    if name in PLANNED:
        raise UsageError(f"engine {name!r} ({PLANNED[name]}) is not in this version; use transformers")
    if name not in ENGINES:
        raise UsageError(f"unknown engine {name!r}; choose one of: {', '.join(['auto', *ENGINES])}")
    module_name, class_name, extra = ENGINES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        if extra:
            raise UsageError(f'engine {name!r} needs: pip install "cai-kit[{extra}]" ({err})') from None
        raise
    return getattr(module, class_name)(model, **options)


def _vllm_usable() -> bool:
    try:
        import torch

        return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    except ImportError:
        return False
