"""Quality filters for generated answers: strip scaffolding artefacts, then name why a row is unusable.

Small models often echo the scaffolding ("Here is the revised response:") or write about the
critique instead of answering the user. We strip what can be stripped and filter what cannot.
"""

from __future__ import annotations

import difflib
import re

from cai_kit.refusal import is_refusal

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
    r"|the assistant'?s (?:last |previous )?(?:response|answer))\b",
    re.IGNORECASE,
)
UNCHANGED_SIMILARITY = 0.9


def clean_answer(text: str) -> str:
    """Remove scaffolding preambles and wrapping quotes so the answer reads as a reply to the user."""
    text = text.strip()
    for _ in range(2):  # "Sure! Revised response: ..." needs two passes at most
        text = _PREAMBLE.sub("", text, count=1).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


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
