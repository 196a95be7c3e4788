"""The critique/revision loop (Bai et al. 2022, SL-CAI), batched by stage: every initial answer of a chunk in
one call, then per round every critique, then every revision."""

from __future__ import annotations

from typing import Any

from cai_kit.core.constitution import Constitution, Principle
from cai_kit.core.prompt_sets import PromptRow
from cai_kit.engines import Conversation, Engine
from cai_kit.generation.failures import first_error
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
    # With on_error: skip, a failed request's row leaves the loop: its error text is never critiqued or revised.
    errors = {k: reason for k, c in enumerate(initial) if (reason := first_error(c))}
    steps: list[list[dict[str, str]]] = [[] for _ in chunk]
    for round_index in range(options.rounds):
        live = [k for k in range(len(chunk)) if k not in errors]
        principles = {k: constitution.principle_for(chunk[k].id, round_index, options.seed, chunk[k].category)
                      for k in live}
        critique_chats = {
            k: system
            + few_shot_turns(constitution, principles[k], options.few_shot)
            + [user(chunk[k].prompt), assistant(answers[k]), user(render("critique_request", principle=principles[k]))]
            for k in live
        }
        critiques = dict(zip(live, engine.generate(list(critique_chats.values()), params) if live else []))
        errors |= {k: reason for k, c in critiques.items() if (reason := first_error(c))}
        live = [k for k in live if k not in errors]
        revision_chats = [
            critique_chats[k]
            + [assistant(critiques[k].text.strip()), user(render("revision_request", principle=principle))]
            + ([assistant(principle.opening)] if principle.opening else [])  # steering: the reply starts here
            for k, principle in ((k, principles[k]) for k in live)
        ]
        revisions = dict(zip(live, engine.generate(revision_chats, params) if live else []))
        for k, revision in revisions.items():
            if reason := first_error(revision):
                errors[k] = reason
                continue
            principle = principles[k]
            text, finish[k] = finish_reply(
                revision.text, revision.finish_reason, principle.opening, options.steered_sentences
            )
            steps[k].append({"principle": principle.name, "critique": critiques[k].text.strip(), "revision": text})
            answers[k] = text
    rows = []
    for k, (row, first, final) in enumerate(zip(chunk, initial, answers)):
        if k in errors:  # empty answers, the reason in `error`; a first answer that did come is kept
            first_answer = "" if first_error(first) else clean_answer(first.text)
            rows.append(make_row(row, "revision", options, constitution, first_answer, steps[k], "", "error",
                                 error=errors[k]))
        else:
            rows.append(make_row(row, "revision", options, constitution, clean_answer(first.text), steps[k], final,
                                 finish[k]))
    return rows
