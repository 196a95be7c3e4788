"""Chat-template helpers shared by the engines that tokenize in this process (transformers, openvino)."""

from __future__ import annotations

from typing import Any

from cai_kit.engines import Conversation


def render_chat(tokenizer: Any, conversation: Conversation) -> str:
    """The chat-template text of a conversation, ready for the model to write (or go on with) the assistant turn."""
    continuing = conversation[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=not continuing, continue_final_message=continuing
    )


def encode_rendered(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of rendered chat texts; the chat template already holds any BOS token, so none is added again."""
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def stop_token_ids(eos: int | list[int] | None, tokenizer: Any) -> list[int]:
    """The generation config's end-of-sequence id(s) and the tokenizer's, sorted and without None."""
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    ids.add(tokenizer.eos_token_id)
    return sorted(i for i in ids if i is not None)


def common_prefix_length(rows: list[list[int]]) -> int:
    """How many leading tokens all rows share: the part a prefix cache can compute once for the batch."""
    first, length = rows[0], min(len(row) for row in rows)
    for row in rows[1:]:
        length = next((k for k in range(length) if row[k] != first[k]), length)
    return length


def scoring_leads(prompts: list[list[int]], full: list[list[int]]) -> list[int]:
    """For each row to score, the row whose forward pass scores it: an earlier row with the same prompt when both
    continuations are one token after the prompt unchanged (a judge's labels, a yes and a no), else itself.

    A causal model's prediction after the prompt does not depend on what follows, so one pass gives the
    log-prob of every such one-token continuation: a judge's two labels cost one pass instead of two."""
    first: dict[tuple[int, ...], int] = {}
    leads = []
    for k, (prompt, ids) in enumerate(zip(prompts, full, strict=True)):
        one_token = len(ids) == len(prompt) + 1 and ids[: len(prompt)] == prompt
        leads.append(first.setdefault(tuple(prompt), k) if one_token else k)
    return leads
