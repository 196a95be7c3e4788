"""Quality filters for generated answers: strip scaffolding artefacts, then name why a row is unusable.

Small models often echo the scaffolding ("Here is the revised response:") or write about the
critique instead of answering the user. We strip what can be stripped and filter what cannot.
"""

from __future__ import annotations

import difflib
import re

from cai_kit.evaluation.refusal import is_refusal

# Openings that introduce a revision instead of being one; removed before any check.
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly|of course)[,!.]?\s*)?"
    r"(?:here(?:'s| is) (?:the |a |my )?(?:revised|rewritten|new|updated|improved) (?:response|answer|version)"
    r"|(?:revised|rewritten|new|updated|improved) (?:response|answer|version)"
    r"|revision|answer|response)\s*[:\-]\s*",
    re.IGNORECASE,
)
# Text that talks about the exercise rather than to the user.
_ARTEFACT = re.compile(
    r"\b(?:critique|the (?:original|previous|revised|initial) (?:response|answer)|revised (?:response|answer)"
    r"|the assistant'?s (?:last |previous )?(?:response|answer))\b"
    # An opening that judges an answer ("This answer is not accurate", "Your answer was too long",
    # "The answer refuses ..."): small models write these instead of a reply to the user.
    r"|^\s*(?:this|the|your|my|that) (?:answer|response|reply|revision)\b",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
UNCHANGED_SIMILARITY = 0.9


def clean_answer(text: str) -> str:
    """Remove scaffolding preambles and wrapping quotes so the answer reads as a reply to the user."""
    text = text.strip()
    for _ in range(2):  # "Sure! Revised response: ..." needs two passes at most
        text = _PREAMBLE.sub("", text, count=1).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def trim_to_sentence(text: str, min_chars: int = 20) -> str:
    """Cut an answer that hit the token limit back to its last full sentence; "" when none is left.

    A reply cut mid-sentence teaches the model to stop mid-sentence; one cut at a sentence end is a
    shorter but whole reply, so the row need not be thrown away.
    """
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    kept = text[: ends[-1]].strip() if ends else ""
    return kept if len(kept) >= min_chars else ""


def first_sentences(text: str, n: int) -> str:
    """The first n sentences of text (all of it when it has no more than n)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[n - 1]].strip() if len(ends) > n else text


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def row_status(
    final: str, initial: str, finish_reason: str, refusal_forbidden: bool, enabled: list[str], seen_finals: set[str]
) -> str:
    """ "ok", or the first enabled filter the row fails (the order is the order of checks below)."""
    checks = [
        ("empty", lambda: not final.strip() or not initial.strip()),
        ("truncated", lambda: finish_reason == "length"),
        ("artefact", lambda: bool(_ARTEFACT.search(final))),
        (
            "unchanged",
            lambda: (
                difflib.SequenceMatcher(None, normalise(final), normalise(initial)).ratio() >= UNCHANGED_SIMILARITY
            ),
        ),
        ("refusal", lambda: refusal_forbidden and is_refusal(final)),
        ("duplicate", lambda: normalise(final) in seen_finals),
    ]
    for name, failed in checks:
        if name in enabled and failed():
            return name
    return "ok"


def candidate_score(
    text: str, finish_reason: str, wants_refusal: bool | None, other: str, opening: str | None = None
) -> float | None:
    """A cheap score for best-of-N: None when a candidate fails a hard check, else higher is better.

    Hard checks: not empty (nor only the prefilled `opening`), not cut off, no scaffolding artefact,
    and refusing exactly when the principle wants it (`wants_refusal` True for a harm principle with a
    refusal opening, False for one that asks the model to keep helping, None when either will do).
    Among the candidates that pass, the score prefers varied words (small models loop) and words not
    taken from `other`, the answer it is paired against (a steered refusal that goes on to restate
    the harmful answer shares its words).
    """
    if not text.strip() or text.strip() == (opening or "").strip() or finish_reason == "length":
        return None
    if _ARTEFACT.search(text):
        return None
    if wants_refusal is not None and is_refusal(text) != wants_refusal:
        return None
    words = re.findall(r"\w+", text.lower())
    if not words:
        return None
    theirs = set(re.findall(r"\w+", other.lower()))
    borrowed = sum(word in theirs for word in set(words)) / len(set(words))
    return len(set(words)) / len(words) - borrowed
