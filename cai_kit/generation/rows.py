"""The pieces every pair mode builds with: chat turns, the cleaned reply, and one row of generations.jsonl."""

from __future__ import annotations

from typing import Any

from cai_kit.core.constitution import Constitution
from cai_kit.core.prompt_sets import PromptRow
from cai_kit.engines import Conversation, GenParams
from cai_kit.generation.filters import clean_answer, first_sentences, trim_to_sentence
from cai_kit.generation.options import GenerateOptions
from cai_kit.licensing.licence_guard import model_roles


def finish_reply(
    completion_text: str, finish_reason: str, opening: str | None = None, max_sentences: int = 0
) -> tuple[str, str]:
    """Clean a reply, put back its prefilled opening (keeping at most `max_sentences` sentences after it), and
    cut a reply that hit the limit to its last full sentence ("trimmed"); a reply with no full sentence
    keeps finish_reason "length" (filtered)."""
    text = clean_answer(completion_text)
    if opening:
        cut = first_sentences(text, max_sentences) if max_sentences else text
        text = f"{opening} {cut}".strip()
        if cut != clean_answer(completion_text):
            return text, "stop"
    if finish_reason == "length":
        trimmed = trim_to_sentence(text)
        if trimmed and trimmed != opening:
            return trimmed, "trimmed"
    return text, finish_reason


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def gen_params(options: GenerateOptions, temperature: float) -> GenParams:
    return GenParams(
        max_new_tokens=options.max_new_tokens,
        temperature=temperature,
        repetition_penalty=options.repetition_penalty,
        seed=options.seed,
    )


def system_turns(constitution: Constitution) -> Conversation:
    """The constitution's system prompt as the first message, or nothing."""
    return [{"role": "system", "content": constitution.system_prompt}] if constitution.system_prompt else []


def make_row(
    prompt: PromptRow,
    mode: str,
    options: GenerateOptions,
    constitution: Constitution,
    initial: str,
    steps: list[dict[str, Any]],
    final: str,
    finish_reason: str,
    **extra: Any,
) -> dict[str, Any]:
    """One row of generations.jsonl (the documented columns, plus `pair` and `prompt_id` for modes other than
    revision, `models` for provenance, and whatever the mode adds)."""
    ids = {"id": row_id(prompt.id, mode)} | ({} if mode == "revision" else {"prompt_id": prompt.id, "pair": mode})
    return {
        **ids,
        "prompt": prompt.prompt,
        "category": prompt.category,
        "source": prompt.source,
        "initial": initial,
        "steps": steps,
        "final": final,
        **extra,
        "finish_reason": finish_reason,
        "model": options.model,
        "models": model_roles(options),
        "seed": options.seed,
        "constitution": constitution.name,
    }


def row_id(prompt_id: str, mode: str) -> str:
    return prompt_id if mode == "revision" else f"{prompt_id}:{mode}"
