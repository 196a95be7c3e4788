"""The pair modes beyond the critique/revision loop: contrast pairs (RLCD) and judged pairs (RL-CAI).

`cai_kit.generation.generate` runs them chunk by chunk as it runs `critique_and_revise`; each returns finished rows
in the same shape (`generate._row`). The judge gate (`gate_judge`) runs `cai judge-check` before any
judged pair is made.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from cai_kit.core.constitution import Constitution
from cai_kit.core.prompt_sets import PromptRow
from cai_kit.engines import Conversation, Engine, GenParams
from cai_kit.generation.failures import first_error
from cai_kit.generation.filters import candidate_score
from cai_kit.generation.options import GenerateOptions, is_helping
from cai_kit.generation.rows import assistant, finish_reply, gen_params, make_row, system_turns, user
from cai_kit.judging.gate import DEFAULT_JUDGE_QUESTION
from cai_kit.prompts import render

# Contrast mode: the rejected answer for a principle that asks the model to keep helping opens with
# one of these (or with one of the constitution's own refusal openings), so the pair teaches "do not
# refuse this" (Yang et al. 2023 steer with prompts alone; a 135M model ignores a "refuse" instruction
# as often as not, a prefilled opening it always follows). Several forms, because a model trained on
# refusals says them in the words it was trained on: with one form only, DPO taught the default model
# to avoid "I'm sorry, but ..." on benign prompts while it kept saying "I can't help with that, but ...".
REFUSAL_OPENINGS = (
    "I'm sorry, but I can't help with that.",
    "I can't help with that, but",
    "I can't provide that, but",
    "I won't help with that, but",
)


def refusal_opening(constitution: Constitution, row_id: str, seed: int) -> str:
    """The refusal that opens the rejected side of a contrast pair under a helping principle: drawn
    (seeded per prompt) from REFUSAL_OPENINGS and the openings of the constitution's other principles,
    which are the words a model trained on this constitution will refuse with."""
    own = [p.opening for p in constitution.principles if p.opening and not is_helping(p)]
    choices = list(dict.fromkeys([*REFUSAL_OPENINGS, *own]))
    return random.Random(f"{seed}:{row_id}:refusal").choice(choices)


def contrast_pairs(
    engine: Engine, constitution: Constitution, chunk: list[PromptRow], options: GenerateOptions
) -> list[dict[str, Any]]:
    """RLCD (Yang et al. 2023, "RLCD: Reinforcement Learning from Contrastive Distillation"): answer each
    prompt twice, once steered towards its sampled principle and once away from it; the steering implies
    which answer is chosen, so no judge is needed, which suits small models whose A/B verdicts are near
    chance. The steering (a system message from prompts/steer_*.jinja, plus an opening) never reaches
    the training data: sft/prefs rows hold only the user's prompt and the answers.

    Row fields: `final` is the answer steered towards the principle (chosen), `initial` the one steered
    away (rejected), `steps` holds the principle alone (there is no critique).
    """
    params = gen_params(options, options.temperature)
    principles = [constitution.principle_for(row.id, 0, options.seed, row.category) for row in chunk]
    system = constitution.system_prompt
    toward_chats, away_chats, away_openings = [], [], []
    for row, principle in zip(chunk, principles):
        toward = render("steer_toward", principle=principle, system_prompt=system)
        toward_chats.append(
            [{"role": "system", "content": toward}, user(row.prompt)]
            + ([assistant(principle.opening)] if principle.opening else [])
        )
        helping = is_helping(principle)
        away = render("steer_away", principle=principle, helping=helping)
        refusal = refusal_opening(constitution, row.id, options.seed) if helping else None
        away_openings.append(refusal)
        away_chats.append(
            [{"role": "system", "content": away}, user(row.prompt)] + ([assistant(refusal)] if refusal else [])
        )
    n = options.best_of
    if n == 1:
        replies = _generate_steered(engine, toward_chats + away_chats, params, options.steered_sentences)
        candidates, aways = [[reply] for reply in replies[: len(chunk)]], replies[len(chunk) :]
    else:
        aways = _generate_steered(engine, away_chats, params, options.steered_sentences)
        sampled = dataclasses.replace(params, temperature=options.best_of_temperature)
        many = _generate_steered(
            engine, [c for c in toward_chats for _ in range(n)], sampled, options.steered_sentences
        )
        candidates = [many[k * n : (k + 1) * n] for k in range(len(chunk))]
    rows = []
    for k, (row, principle) in enumerate(zip(chunk, principles)):
        away = aways[k]
        if error := first_error(*candidates[k], away):  # on_error: skip; neither side is an answer
            rows.append(make_row(row, "contrast", options, constitution, "", [{"principle": principle.name}], "",
                                 "error", error=error))
            continue
        rejected, _ = finish_reply(away.text, away.finish_reason, away_openings[k], options.steered_sentences)
        finished = [
            (*finish_reply(c.text, c.finish_reason, principle.opening, options.steered_sentences), c.finish_reason)
            for c in candidates[k]
        ]
        wants = False if is_helping(principle) else True if principle.opening else None
        scores = [candidate_score(text, reason, wants, rejected, principle.opening) for text, reason, _ in finished]
        ranks = [-9.0 if score is None else score for score in scores]  # a failed candidate ranks last
        best = max(range(len(finished)), key=ranks.__getitem__)
        final, reason, _ = finished[best]
        extra = {"best_of": {"candidates": n, "passed": sum(s is not None for s in scores)}} if n > 1 else {}
        rows.append(
            make_row(
                row,
                "contrast",
                options,
                constitution,
                rejected,
                [{"principle": principle.name}],
                final,
                reason,
                **extra,
            )
        )
    return rows


def judged_pairs(
    engine: Engine,
    constitution: Constitution,
    chunk: list[PromptRow],
    options: GenerateOptions,
    judge: Engine | None = None,
) -> list[dict[str, Any]]:
    """RL-CAI (Bai et al. 2022) / RLAIF (Lee et al. 2023): sample `judge_samples` answers per prompt, let
    the judge compare every pair with one of the constitution's judge questions (drawn per prompt,
    seeded), from its log-probs of the two labels, in both orders averaged (small judges prefer
    whichever answer they see first). The answer with the best mean preference is chosen, the worst
    rejected; `score` is the judge's preference for the chosen one, in [0.5, 1].

    Check the judge first: `cai judge-check --judge-model M -c CONSTITUTION` (the default 135M model
    is at chance there, so its labels are noise; docs: Judging).
    """
    from cai_kit.judging.judge import judge_pairs

    questions = constitution.judge or [DEFAULT_JUDGE_QUESTION]
    params = gen_params(options, options.judge_temperature)
    system = system_turns(constitution)
    n = options.judge_samples
    replies = engine.generate([system + [user(row.prompt)] for row in chunk for _ in range(n)], params)
    finished = [finish_reply(r.text, r.finish_reason) for r in replies]
    samples = [finished[k * n : (k + 1) * n] for k in range(len(chunk))]
    # on_error: skip: a prompt with a failed sample is not judged (error text is no answer) but written as an error.
    errors = {k: error for k in range(len(chunk)) if (error := first_error(*replies[k * n : (k + 1) * n]))}
    pairs = [(k, a, b) for k in range(len(chunk)) if k not in errors for a in range(n) for b in range(a + 1, n)]
    asked = [random.Random(f"{options.seed}:{row.id}:judge").choice(questions) for row in chunk]
    scores: dict[tuple[int, int, int], Any] = {}
    for question in dict.fromkeys(asked):  # one batched judge call per question
        mine = [pair for pair in pairs if asked[pair[0]] == question]
        judged = judge_pairs(
            judge or engine,
            [chunk[k].prompt for k, _, _ in mine],
            [samples[k][a][0] for k, a, _ in mine],
            [samples[k][b][0] for k, _, b in mine],
            [question],
        )
        scores.update(zip(mine, judged))
    rows = []
    for k, row in enumerate(chunk):
        if k in errors:
            rows.append(make_row(row, "judge", options, constitution, "", [], "", "error", error=errors[k]))
            continue
        wins = [0.0] * n  # mean preference of each answer over the others
        for (kk, a, b), score in scores.items():
            if kk == k:
                wins[a] += score.p / (n - 1)
                wins[b] += (1 - score.p) / (n - 1)
        best, worst = max(range(n), key=wins.__getitem__), min(range(n), key=wins.__getitem__)
        pair = scores[(k, min(best, worst), max(best, worst))] if best != worst else None
        p_best = (pair.p if best < worst else 1 - pair.p) if pair else 0.5
        (final, reason), (rejected, _) = samples[k][best], samples[k][worst]
        verdict = {
            "question": asked[k],
            "model": options.judge_model or options.model,
            "consistent": bool(pair and pair.consistent),
            "samples": [text for text, _ in samples[k]],
        }
        rows.append(
            make_row(
                row, "judge", options, constitution, rejected, [], final, reason, score=round(p_best, 4), judge=verdict
            )
        )
    return rows


# Tokens enough for the sentences kept after an opening; a steered reply needs no more than this.
STEERED_TOKENS_PER_SENTENCE = 48


def _generate_steered(engine: Engine, chats: list[Conversation], params: GenParams, sentences: int) -> list:
    """Generate replies; those continuing an opening get a short token budget when only a few of their
    sentences are kept (their tails are cut anyway, and generating them dominated contrast runs)."""
    steered = [k for k, chat in enumerate(chats) if chat[-1]["role"] == "assistant"]
    if not sentences or not steered:
        return engine.generate(chats, params)
    short = dataclasses.replace(
        params, max_new_tokens=min(params.max_new_tokens, STEERED_TOKENS_PER_SENTENCE * sentences)
    )
    free = [k for k in range(len(chats)) if k not in set(steered)]
    replies: list = [None] * len(chats)
    for indices, call_params in ((free, params), (steered, short)):
        if indices:
            for k, reply in zip(indices, engine.generate([chats[k] for k in indices], call_params)):
                replies[k] = reply
    return replies
