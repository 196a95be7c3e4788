"""The critique/revision loop (Bai et al. 2022, SL-CAI), batched by stage: every initial answer of a chunk in
one call, then per round every critique, then every revision."""

from __future__ import annotations

from typing import Any

from cai_kit.core.constitution import Constitution, Principle
from cai_kit.core.prompt_sets import PromptRow
from cai_kit.engines import Conversation, Engine
from cai_kit.generation.filters import clean_answer
from cai_kit.generation.options import GenerateOptions
from cai_kit.generation.rows import assistant, finish_reply, gen_params, make_row, system_turns, user
from cai_kit.prompts import render


def few_shot_turns(constitution: Constitution, principle: Principle, k: int, match: bool = False) -> Conversation:
    """The constitution's demonstrations as earlier turns of the same chat, in the model's own template.

    By default the first k examples of the file, the same for every prompt, so the engine computes
    their KV cache once per batch; `match` shows the sampled principle's own examples first instead.
    """
    turns: Conversation = []
    for example in constitution.examples_for(principle, k) if match else constitution.examples[:k]:
        shown = constitution.get(example.principle) if example.principle else principle
        turns += [
            user(example.prompt),
            assistant(example.answer),
            user(render("critique_request", principle=shown)),
            assistant(example.critique),
            user(render("revision_request", principle=shown)),
            assistant(example.revision),
        ]
    return turns


def critique_and_revise(
    engine: Engine, constitution: Constitution, chunk: list[PromptRow], options: GenerateOptions
) -> list[dict[str, Any]]:
    """Run initial answers and `rounds` critique/revision rounds for a chunk; return finished rows."""
    params = gen_params(options, options.temperature)
    system = system_turns(constitution)
    initial = engine.generate([system + [user(row.prompt)] for row in chunk], params)
    answers = [clean_answer(c.text) for c in initial]
    finish = [c.finish_reason for c in initial]
    steps: list[list[dict[str, str]]] = [[] for _ in chunk]
    for round_index in range(options.rounds):
        principles = [constitution.principle_for(row.id, round_index, options.seed, row.category) for row in chunk]
        critique_chats = [
            system
            + few_shot_turns(constitution, principle, options.few_shot)
            + [user(row.prompt), assistant(answer), user(render("critique_request", principle=principle))]
            for row, answer, principle in zip(chunk, answers, principles)
        ]
        critiques = engine.generate(critique_chats, params)
        revision_chats = [
            chat
            + [assistant(critique.text.strip()), user(render("revision_request", principle=principle))]
            + ([assistant(principle.opening)] if principle.opening else [])  # steering: the reply starts here
            for chat, critique, principle in zip(critique_chats, critiques, principles)
        ]
        revisions = engine.generate(revision_chats, params)
        for k, (principle, critique, revision) in enumerate(zip(principles, critiques, revisions)):
            text, finish[k] = finish_reply(
                revision.text, revision.finish_reason, principle.opening, options.steered_sentences
            )
            if "error" in (revision.finish_reason, critique.finish_reason) or initial[k].finish_reason == "error":
                finish[k] = "error"
            steps[k].append({"principle": principle.name, "critique": critique.text.strip(), "revision": text})
            answers[k] = text
    return [
        make_row(row, "revision", options, constitution, clean_answer(first.text), row_steps, final, reason)
        for row, first, row_steps, final, reason in zip(chunk, initial, steps, answers, finish)
    ]
