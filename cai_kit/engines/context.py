"""Does a conversation fit the model's context? Checked once, before anything is generated.

A conversation longer than the model's context does not fail fast on its own: the transformers engine tried to
allocate 52 GB for a 103k-character prompt, and the default model (8,192 tokens) ran for minutes past its
context on a 40k-character one. So the commands that generate (`cai generate`, `cai try`, `cai eval`) count the
longest conversation they will build for each prompt, the tokens it may generate included, and stop with one
line per prompt that does not fit.

Counting costs nothing for ordinary prompts: a text's UTF-8 bytes bound its tokens from above (a byte-level BPE
token covers at least one byte; a SentencePiece token at least one character, or one byte where it falls back
to bytes, plus the word-start marker it adds), and the chat template adds at most TEMPLATE_TOKENS plus
TOKENS_PER_MESSAGE per message. Only a conversation whose bound is over the limit loads the tokenizer and is
counted: each text with the model's tokenizer (once per distinct text), plus what its chat template adds.

The limit is the model's `max_position_embeddings` (or its equivalent) from config.json. The openai engine
is not checked: a server's limit is its own (`--max-model-len` in vllm), and it answers a request that is too
long with an error, which stops the run anyway.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError, capped
from cai_kit.core.prompt_sets import PromptRow
from cai_kit.engines import Conversation, resolve_engine_name

# Upper bounds on what a chat template adds: role markers and separators per message, and text of its own (a
# default system prompt, as SmolLM2's template writes when there is none; a date line, as Llama 3's does).
TOKENS_PER_MESSAGE = 16
TEMPLATE_TOKENS = 64
# config.json keys that hold the context length, by model family (text_config: multimodal models).
LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(engine: str, model: str) -> int | None:
    """The model's context length in tokens, or None where it is not known here (the openai engine, a hub id
    that is not cached, a config without one)."""
    if resolve_engine_name(engine) == "openai":
        return None
    from cai_kit.core.models import resolve_model

    config = _config(resolve_model(model))
    for section in (config, config.get("text_config") or {}):
        for key in LENGTH_KEYS:
            if isinstance(section.get(key), int) and section[key] > 0:
                return section[key]
    return None


def _config(source: str) -> dict[str, Any]:
    path = Path(source) / "config.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    try:  # a hub id: its config from the hub's cache, or the hub; neither is a reason to stop here
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(source).to_dict()
    except Exception:
        return {}


@functools.lru_cache(maxsize=4096)
def _utf8_bytes(text: str) -> int:
    # Cached: the few-shot prefix and the principle's requests are the same strings in every conversation.
    return len(text.encode("utf-8"))


class ContextBudget:
    """The context of one model, and token counts of conversations against it."""

    def __init__(self, engine: str, model: str, trust_remote_code: bool = False):
        self.model = model
        self.limit = context_length(engine, model)
        self._trust_remote_code = trust_remote_code
        self._tokenizer: Any = None
        self._counts: dict[str | tuple[str, ...], int] = {}

    def bound(self, conversation: Conversation) -> int:
        """At least as many tokens as the chat template makes of `conversation`; no tokenizer needed."""
        return TEMPLATE_TOKENS + sum(_utf8_bytes(m["content"]) + 1 + TOKENS_PER_MESSAGE for m in conversation)

    def exact(self, conversation: Conversation) -> int:
        """The tokens the model makes of `conversation`: each text's own, plus what the chat template adds around
        that sequence of roles (measured once per sequence, on empty texts). The tokenizer is loaded once."""
        return self._template_tokens(tuple(m["role"] for m in conversation)) + sum(
            self._text_tokens(m["content"]) for m in conversation
        )

    def over(self, conversation: Conversation, new_tokens: int) -> int | None:
        """None when `conversation` and `new_tokens` generated after it fit the context (or the limit is not
        known), else how many tokens they need."""
        if self.limit is None or self.bound(conversation) + new_tokens <= self.limit:
            return None
        needed = self.exact(conversation) + new_tokens
        return needed if needed > self.limit else None

    def _text_tokens(self, text: str) -> int:
        if text not in self._counts:  # the few-shot prefix and the requests recur in every conversation
            self._counts[text] = len(self._load_tokenizer()([text], add_special_tokens=False)["input_ids"][0])
        return self._counts[text]

    def _template_tokens(self, roles: tuple[str, ...]) -> int:
        if roles not in self._counts:
            tokenizer = self._load_tokenizer()
            try:
                text = tokenizer.apply_chat_template(
                    [{"role": role, "content": ""} for role in roles],
                    tokenize=False,
                    add_generation_prompt=roles[-1] != "assistant",
                )
                self._counts[roles] = len(tokenizer([text], add_special_tokens=False)["input_ids"][0])
            except Exception:  # no template, or one that takes no system turn: the bound's allowance
                self._counts[roles] = TEMPLATE_TOKENS + TOKENS_PER_MESSAGE * len(roles)
        return self._counts[roles]

    def _load_tokenizer(self) -> Any:
        """The folder's tokenizer read with `tokenizers` alone where it can be (no transformers or torch import,
        which the openvino engine does without), else transformers'."""
        if self._tokenizer is None:
            from cai_kit.core.models import resolve_model
            from cai_kit.engines.file_tokenizer import FileTokenizer

            source = resolve_model(self.model)
            try:
                self._tokenizer = FileTokenizer(Path(source))
            except (ValueError, OSError):
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=self._trust_remote_code)
        return self._tokenizer


def too_long(where: str, what: str, needed: int, budget: ContextBudget, generated: str) -> str:
    """The one line for a prompt (or principle) whose conversation does not fit."""
    return (
        f"{where}: {what} needs {needed:,} tokens ({generated}), more than the {budget.limit:,}-token context of "
        f"model {budget.model!r}: shorten it or leave it out"
    )


def check_prompts(
    engine: str, model: str, rows: list[PromptRow], new_tokens: int, trust_remote_code: bool = False
) -> None:
    """UsageError with one line per prompt that, asked on its own with `new_tokens` to generate (as `cai eval`
    asks), does not fit the model's context."""
    budget = ContextBudget(engine, model, trust_remote_code)
    problems = []
    for row in rows:
        needed = budget.over([{"role": "user", "content": row.prompt}], new_tokens)
        if needed:
            problems.append(
                too_long(
                    row.where or row.source,
                    f"prompt {row.id!r}",
                    needed,
                    budget,
                    f"with max_new_tokens {new_tokens} to generate",
                )
            )
    if problems:
        raise UsageError(capped(problems))
