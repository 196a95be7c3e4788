"""Generation backends behind one small contract.

An engine turns chat conversations into replies (`generate`) and scores given continuations
(`logprobs`, used by judges). Backends are chosen from a plain dict by name; each imports its
heavy dependency only when it is built, so a missing extra fails with one actionable line.

Outside the contract, the transformers engine also has `token_logprobs` (each continuation token's
log-prob): `cai eval` measures answer retention with it, and says "not measured" for an engine without it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from typing import Any, Protocol

from cai_kit.core.errors import UsageError

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
    "vllm": ("cai_kit.engines.vllm", "VLLMEngine", "vllm"),
    "openai": ("cai_kit.engines.openai", "OpenAIEngine", None),  # plain HTTP from the standard library
    "openvino": ("cai_kit.engines.openvino", "OpenVINOEngine", "openvino"),
}


AUTO_REASONS = {
    "vllm": "vllm is installed and a CUDA GPU is visible",
    "openvino": "no CUDA GPU, and the openvino extra is installed",
    "transformers": "no CUDA GPU with vllm, and no openvino extra",
}


def resolve_engine_name(name: str) -> str:
    """`auto` is vllm where it is installed and a GPU is present, else openvino where it is installed
    (a CPU), else transformers."""
    if name == "auto":
        if _vllm_usable():
            return "vllm"
        return "openvino" if _openvino_usable() else "transformers"
    return name


def engine_problems(name: str, options: dict[str, Any]) -> list[str]:
    """What is wrong with an engine name and its options, checked without loading anything heavy.

    Each engine module imports its backend lazily, so reading its constructor's signature is cheap.
    """
    name = resolve_engine_name(name)
    if name not in ENGINES:
        return [f"unknown engine {name!r}; choose one of: {', '.join(['auto', *ENGINES])}"]
    module_name, class_name, _ = ENGINES[name]
    parameters = dict(
        list(inspect.signature(getattr(importlib.import_module(module_name), class_name)).parameters.items())[1:]
    )
    problems = []
    for key, value in options.items():
        if key not in parameters:
            problems.append(f"engine {name!r} has no option {key!r}; its options: {', '.join(parameters)}")
            continue
        default = parameters[key].default  # a bool or int default: the value must be one too
        if isinstance(default, bool) and not isinstance(value, bool):
            problems.append(f"engine {name!r} option {key!r}: expected true or false, got {value!r}")
        elif type(default) is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"engine {name!r} option {key!r}: expected a whole number, got {value!r}")
    return problems


def load_engine(name: str, model: str, **options: Any) -> Engine:
    """Build the engine `name` for `model`; options are the engine's own keyword arguments."""
    if name == "auto":
        name = resolve_engine_name(name)
        print(f"cai: --engine auto: using the {name} engine ({AUTO_REASONS[name]})", file=sys.stderr)
    problems = engine_problems(name, options)
    if problems:
        raise UsageError(problems)
    module_name, class_name, extra = ENGINES[name]
    engine_class = getattr(importlib.import_module(module_name), class_name)
    try:
        return engine_class(model, **options)
    except ImportError as err:  # the backend itself is imported when the engine is built
        if extra:
            raise UsageError(f'engine {name!r} needs: pip install "cai-kit[{extra}]" ({err})') from None
        raise


def parse_engine_options(pairs: list[str] | tuple[str, ...], base_urls: list[str] | tuple[str, ...] = ()) -> dict:
    """`--engine-option KEY=VALUE` (VALUE read as YAML: numbers, booleans, lists) and `--base-url URL`."""
    import yaml

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--engine-option {pair!r}: write KEY=VALUE, e.g. max_concurrency=32")
        try:
            options[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            options[key.strip()] = value
    if base_urls:
        options["base_urls"] = list(base_urls)
    return options


def _vllm_usable() -> bool:
    try:
        import torch

        return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    except ImportError:
        return False


def _openvino_usable() -> bool:
    return importlib.util.find_spec("openvino_genai") is not None
