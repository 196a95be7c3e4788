"""The pairwise judge: which of two answers is better, read from an open model's label log-probs.

The judge is shown a request, two answers labelled A and B and a question, and the log-probs of its
reply starting with "A" or with "B" are compared (RL-CAI, Bai et al. 2022; RLAIF, Lee et al. 2023).
Small judges prefer whichever answer they see first, so every pair is asked in both orders and the two
probabilities are averaged: a pure position bias cancels out, and a judge given the same answer twice
scores exactly 0.5. With chain-of-thought the judge first writes a short reasoning, the labels are
scored after it, and each probability is clamped (Bai et al. clamp to 40-60%, as reasoned verdicts come
out overconfident). `cai eval`'s helpful win rate and `cai judge-check` both use `judge_pairs`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cai_kit.engines import Engine, GenParams
from cai_kit.prompts import render

# Without reasoning the reply is scored as its first token; no leading space, as the chat template
# already ends the assistant header with a newline. After reasoning the labels follow VERDICT.
PAIR_LABELS = ("A", "B")
VERDICT = "The better answer is"
COT_LABELS = (" A", " B")
COT_TOKENS = 96  # room for two or three sentences of reasoning
DEFAULT_CLAMP = (0.4, 0.6)
# A reasoning that already states its verdict is cut there, so the label read is the judge's next token
# after our own VERDICT line, not a parse of free text.
_OWN_VERDICT = re.compile(r"the better answer is", re.IGNORECASE)


@dataclass(frozen=True)
class PairScore:
    """The judge's preference for answer A over answer B, averaged over the judge questions."""

    p_a_first_order: float  # P(A better) with A shown first
    p_a_swapped: float  # P(A better) with A shown second
    p: float  # their mean: the soft preference for A, in [0, 1]
    consistent: bool  # both orders give the same strict verdict
    identical: bool = False  # A and B were the same text: 0.5 without asking the judge
    reasoning: tuple[str, ...] = ()  # chain-of-thought texts, A-first questions then swapped ones


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x > -700 else 0.0


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def judge_pairs(
    engine: Engine,
    prompts: list[str],
    answers_a: list[str],
    answers_b: list[str],
    questions: list[str],
    cot: bool = False,
    clamp: tuple[float, float] = DEFAULT_CLAMP,
) -> list[PairScore]:
    """Score every (prompt, A, B) with every question in both orders, in one batched engine call.

    Each order's probability is the mean over the questions; with `cot` each probability is first
    clamped to `clamp`. Identical answers score 0.5 unjudged.
    """
    if not questions:
        raise ValueError("judge_pairs needs at least one judge question")
    identical = [_same_text(a, b) for a, b in zip(answers_a, answers_b, strict=True)]
    todo = [k for k, same in enumerate(identical) if not same]
    chats = []
    for a_shown_first in (True, False):
        for question in questions:
            for k in todo:
                first, second = (answers_a[k], answers_b[k]) if a_shown_first else (answers_b[k], answers_a[k])
                text = render(
                    "judge_pairwise_cot" if cot else "judge_pairwise",
                    prompt=prompts[k],
                    first=first,
                    second=second,
                    question=question,
                )
                chats.append([{"role": "user", "content": text}])
    reasoning: list[str] = []
    labels = COT_LABELS if cot else PAIR_LABELS
    if cot and chats:
        replies = engine.generate(chats, GenParams(max_new_tokens=COT_TOKENS))
        reasoning = [_OWN_VERDICT.split(r.text, maxsplit=1)[0].strip() for r in replies]
        chats = [
            [*chat, {"role": "assistant", "content": f"{why}\n{VERDICT}".lstrip()}]
            for chat, why in zip(chats, reasoning, strict=True)
        ]
    scores = engine.logprobs(chats + chats, [labels[0]] * len(chats) + [labels[1]] * len(chats)) if chats else []
    p_first = [sigmoid(a - b) for a, b in zip(scores[: len(chats)], scores[len(chats) :], strict=True)]
    if cot:
        p_first = [min(max(p, clamp[0]), clamp[1]) for p in p_first]

    results = [PairScore(0.5, 0.5, 0.5, consistent=False, identical=same) for same in identical]
    per_order = len(questions) * len(todo)
    for j, k in enumerate(todo):
        slots = [q * len(todo) + j for q in range(len(questions))]
        a_first = sum(p_first[s] for s in slots) / len(slots)
        swapped = sum(1 - p_first[per_order + s] for s in slots) / len(slots)
        consistent = (a_first > 0.5 and swapped > 0.5) or (a_first < 0.5 and swapped < 0.5)
        why = tuple(reasoning[s] for s in slots) + tuple(reasoning[per_order + s] for s in slots) if cot else ()
        results[k] = PairScore(a_first, swapped, (a_first + swapped) / 2, consistent, reasoning=why)
    return results


def first_position_bias(orders: Iterable[tuple[float, float]]) -> float | None:
    """Mean P(the judge prefers whichever answer it was shown first), from (p_a_first_order, p_a_swapped).

    0.5 is fair; near 1 the judge reads the position, not the answers (SmolLM2-135M judging itself sat
    at ~0.85 in `cai eval`). None when there is nothing to average.
    """
    first = [(a_first + 1 - swapped) / 2 for a_first, swapped in orders]
    return sum(first) / len(first) if first else None
