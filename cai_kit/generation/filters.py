"""Quality filters for generated answers: strip scaffolding artefacts, then name why a row is unusable.

Small models often echo the scaffolding ("Here is the revised response:") or write about the
critique instead of answering the user. We strip what can be stripped and filter what cannot.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from cai_kit.core.constitution import Example
from cai_kit.evaluation.refusal import is_refusal
from cai_kit.evaluation.verdicts import topic_words, verdict

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
# An opening that announces a rewrite instead of being one and that `clean_answer` left ("Here's a rewritten
# version of the answer:", "Here is the revised response with a friendlier tone:"): what follows it is
# commentary on the answer, not an answer.
_REWRITE_START = re.compile(
    r"^\W*(?:(?:sure|okay|ok|certainly|of course)\W+)?(?P<here>here(?:'s| is)\s+)?(?:(?:the|a|an|my|your)\s+)?"
    r"(?:revised|rewritten|reworded|rephrased|edited|improved|corrected)\s+(?:version|response|answer|reply)\b"
    r"(?P<rest>[^.!?\n]*)",
    re.IGNORECASE,
)
# A request for a rewrite, whose answer may rightly open with "Here's a rewritten version:".
_REWRITE_REQUEST = re.compile(
    r"\b(?:re-?writ|revis|rephras|reword|edit|improv|polish|proofread|shorten)", re.IGNORECASE
)
_WORDS = re.compile(r"\w+(?:'\w+)?")
# Where a refusal turns ("I can't help with X, but ..."), and what after the turn gives back what was refused.
_PIVOT = re.compile(r",?\s+(?:but|however)\b|[.!?]\s", re.IGNORECASE)
_HOW_TO = re.compile(
    r"\b(?:(?:tell|show|teach|explain(?: to)?)\s+(?:you\s+)?how\s+to|i(?:'ve| have)\s+found\s+a\s+way"
    r"|here(?:'s| is| are)\s+(?:how|the\s+steps|the\s+recipe|a\s+recipe)|step[- ]by[- ]step)\b",
    re.IGNORECASE,
)
_OFFER = re.compile(
    r"\b(?:i(?:'m| am) (?:here|happy|glad|able|ready) to|i(?:'d| would) (?:be happy|love) to|i can|i could|i'll"
    r"|i will)\b",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
UNCHANGED_SIMILARITY = 0.9
COPIED_WORDS = 8  # this many consecutive words shared with one of the constitution's examples make a copy


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


def is_artefact(final: str, prompt: str = "") -> bool:
    """True when the answer talks about the exercise instead of answering: it names the critique or the revised
    response, judges an answer ("This answer is ..."), or opens by announcing a rewrite ("Here's a rewritten
    version of the answer:", "Revised answer:"). "Here's a rewritten version:" is kept when the prompt itself
    asks for a rewrite, and a sentence such as "An improved version of the engine came out in 2020." always."""
    if _ARTEFACT.search(final):
        return True
    start = _REWRITE_START.match(final)
    if not start:
        return False
    rest = start.group("rest")
    if re.search(r"\bof (?:the|your|my|this) (?:answer|response|reply)\b", rest, re.IGNORECASE):
        return True
    announces = bool(start.group("here")) or ":" in rest or rest.lstrip().startswith("-")
    return announces and not _REWRITE_REQUEST.search(prompt)


def copies_example(final: str, prompt: str, examples: Sequence[Example]) -> bool:
    """True when a helping answer (no refusal in it) repeats COPIED_WORDS or more consecutive words of one of the
    constitution's examples (its answer, critique or revision) and the prompt is not that example's own: the
    few-shot text copied onto another question ("How do I start a compost bin?" answered with the example's
    `kill -9`). Refusals are left alone: echoing an example's crisis line or redirect is what a refusal does."""
    if not examples or is_refusal(final):
        return False
    mine = _ngrams(final)
    return any(
        mine & _ngrams(f"{example.answer}\n{example.critique}\n{example.revision}")
        for example in examples
        if normalise(example.prompt) != normalise(prompt)
    )


def off_topic(final: str, prompt: str, initial: str) -> bool:
    """True when a helping answer (no refusal in it) shares no content word with the prompt while the rejected
    answer does: the pair would teach the model to leave the subject (a birthday-party question answered with
    a crime scene, chosen over an answer about parties). Refusals are left alone: they need not repeat the
    request."""
    topic = topic_words(prompt)
    if not topic or is_refusal(final):
        return False
    return not any(_mentions(final, word) for word in topic) and any(_mentions(initial, word) for word in topic)


def _mentions(text: str, stem: str) -> bool:
    """Topic words are stems ("compost" from "composting"): a word of the text that starts with the stem counts."""
    return bool(re.search(rf"\b{re.escape(stem)}", text, re.IGNORECASE))


def takes_back(final: str, prompt: str = "") -> bool:
    """True when a refusal goes on, after its "but" (or its first sentence), to offer what it refused: a how-to
    ("I can't help with breaking the law, but I can tell you how to make ...", "... but I've found a way to access
    their account"), or an offer that names two or more of the prompt's content words ("I can't help deceive
    people, but I'm here to help you create a fake news website"). Narrower than `partial`, which also drops
    refusals that go on to a safe alternative ("... but you can always visit a local vet clinic")."""
    pivot = _PIVOT.search(final)
    if not pivot or not is_refusal(final):
        return False
    tail = final[pivot.end() :]
    if _HOW_TO.search(tail):
        return True
    return bool(_OFFER.search(tail)) and sum(_mentions(tail, word) for word in topic_words(prompt)) >= 2


def _ngrams(text: str) -> set[tuple[str, ...]]:
    words = _WORDS.findall(text.lower())
    return {tuple(words[k : k + COPIED_WORDS]) for k in range(len(words) - COPIED_WORDS + 1)}


@dataclass(frozen=True)
class Candidate:
    """What the filters read of one finished row: its prompt, its two answers and how they were made."""

    prompt: str
    final: str  # the chosen answer
    initial: str  # the rejected answer
    finish_reason: str  # of the final answer: "length" when it was cut off
    helping: bool = False  # the principle that shaped `final` asks the model to keep helping
    opening: str | None = None  # that principle's steering opening (a refusal it starts with)
    pair: str = "revision"  # revision, contrast or judge
    score: float | None = None  # judge pairs: P(final is the better answer)
    judge_margin: float = 0.0
    examples: Sequence[Example] = ()  # the constitution's few-shot examples
    seen: Collection[str] = ()  # the normalised finals kept so far in this run


def empty(row: Candidate) -> bool:
    """The first or the final answer is empty."""
    return not row.final.strip() or not row.initial.strip()


def truncated(row: Candidate) -> bool:
    """The final answer hit `--max-new-tokens` and could not be trimmed to a whole sentence."""
    return row.finish_reason == "length"


def artefact(row: Candidate) -> bool:
    """The final answer talks about the exercise ("the revised response", "This answer is ...") or opens by
    announcing a rewrite ("Here's a rewritten version of the answer:", "Revised answer:") instead of answering;
    "Here's a rewritten version:" is kept where the prompt asks for a rewrite."""
    return is_artefact(row.final, row.prompt)


def copied(row: Candidate) -> bool:
    """A final answer that does not refuse repeats 8 or more consecutive words of one of the constitution's
    examples (answer, critique or revision) on a prompt that is not that example's: the few-shot text copied
    onto another question."""
    return copies_example(row.final, row.prompt, row.examples)


def unchanged(row: Candidate) -> bool:
    """The revision is nearly the same text as the first answer (90% similar or more): the pair teaches
    nothing."""
    return difflib.SequenceMatcher(None, normalise(row.final), normalise(row.initial)).ratio() >= UNCHANGED_SIMILARITY


def refusal(row: Candidate) -> bool:
    """The answer refuses where its principle asks the model to keep helping (an `over_refusal` or
    `helpfulness` tag)."""
    return row.helping and is_refusal(row.final)


def takes_back_refusal(row: Candidate) -> bool:
    """A refusal goes on, after its "but", to offer the how-to it refused ("I can't help with breaking the law,
    but I can tell you how to make ...")."""
    return takes_back(row.final, row.prompt)


def off_topic_answer(row: Candidate) -> bool:
    """A final answer that does not refuse shares no content word with the prompt while the rejected answer
    does (a birthday-party question answered with a crime scene, chosen over an answer about parties)."""
    return off_topic(row.final, row.prompt, row.initial)


def duplicate(row: Candidate) -> bool:
    """Another kept row has the same final answer (ignoring case and spacing)."""
    return normalise(row.final) in row.seen


def no_contrast(row: Candidate) -> bool:
    """Contrast pairs: the two sides do not differ as steered (under a harm principle with an opening the chosen
    side refuses and the rejected side does not; under a helping principle, the reverse)."""
    if row.pair != "contrast" or not (row.opening or row.helping):
        return False
    refuses, rejected_refuses = is_refusal(row.final), is_refusal(row.initial)
    meant = (not refuses and rejected_refuses) if row.helping else (refuses and not rejected_refuses)
    return not meant


def partial(row: Candidate) -> bool:
    """Off unless listed in `filters`: under a harm principle, the chosen answer is not a full refusal by
    `cai eval`'s whole-answer verdicts ("I can't help with X, but here is X", or no refusal at all)."""
    return row.pair != "judge" and not row.helping and verdict(row.prompt, row.final)[0] != "full_refusal"


def low_margin(row: Candidate) -> bool:
    """Judged pairs: the judge's preference is within `--judge-margin` of 0.5."""
    return row.pair == "judge" and row.score is not None and row.score - 0.5 < row.judge_margin


# Every filter, in the order a row is checked: a row's status is the first enabled one it fails. The names are
# the `filters` option's values (generation/options.py), and the data card and docs list them from here.
FILTERS: dict[str, Callable[[Candidate], bool]] = {
    "empty": empty,
    "truncated": truncated,
    "artefact": artefact,
    "copied": copied,
    "unchanged": unchanged,
    "refusal": refusal,
    "takes_back": takes_back_refusal,
    "off_topic": off_topic_answer,
    "duplicate": duplicate,
    "no_contrast": no_contrast,
    "partial": partial,
    "low_margin": low_margin,
}


def describe(name: str) -> str:
    """A filter's one-line description: its function's docstring, on one line."""
    return " ".join((FILTERS[name].__doc__ or "").split())


def filters_markdown() -> str:
    """The docs' filter table (docs/generate-output.md), made from FILTERS."""
    rows = [f"| `{name}` | {describe(name)} |" for name in FILTERS]
    return "\n".join(["| status | the row is dropped when |", "| --- | --- |", *rows]) + "\n"


def row_status(row: Candidate, enabled: Collection[str]) -> str:
    """ "ok", or the name of the first enabled filter the row fails."""
    return next((name for name, failed in FILTERS.items() if name in enabled and failed(row)), "ok")


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
    if is_artefact(text):
        return None
    if wants_refusal is not None and is_refusal(text) != wants_refusal:
        return None
    words = re.findall(r"\w+", text.lower())
    if not words:
        return None
    theirs = set(re.findall(r"\w+", other.lower()))
    borrowed = sum(word in theirs for word in set(words)) / len(set(words))
    return len(set(words)) / len(words) - borrowed
