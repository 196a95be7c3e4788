"""What `cai generate` takes: one typed schema, shared by the CLI (its defaults and choices) and the recipe's
`generate` runs, so the two can never disagree."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cai_kit.core.constitution import Principle
from cai_kit.judging.judge_check import MIN_ACCURACY, MIN_CONSISTENCY

DEFAULT_PROMPTS = ["red_team", "helpful"]
DEFAULT_LIMIT = 48  # keeps the bare quickstart near 5 minutes on a 2-core CPU; --limit 0 lifts it
FILTERS = [
    "empty", "truncated", "artefact", "unchanged", "refusal", "no_contrast", "partial", "low_margin", "duplicate"
]
# `partial` is off unless a recipe's `filters` lists it: it drops the steered refusals that go on to help
# ("I can't help with X, but here is X"), most of a small model's (docs: Output of `cai generate`, Filters).
DEFAULT_FILTERS = [name for name in FILTERS if name != "partial"]
# Principles with these tags ask the model to keep helping: a revision under them that refuses failed.
HELPING_TAGS = {"over_refusal", "over-refusal", "helpfulness"}
# How each prompt becomes a preference pair: `revision` (SL-CAI: chosen = the final revision, rejected =
# the first answer) or `contrast` (RLCD: chosen and rejected are answers steered towards and away from
# the sampled principle) or `judge` (RL-CAI / RLAIF: two sampled answers, the better one picked by a
# judge model's log-probs in both orders). Rows of a mode other than `revision` get the id `<prompt id>:<mode>`.
PAIR_MODES = ["revision", "contrast", "judge"]


class GenerateOptions(BaseModel):
    """Everything `cai generate` takes; the recipe's `generate` section uses the same schema."""

    model_config = ConfigDict(extra="forbid")

    constitution: str
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS))
    column: str = "prompt"
    model: str = "default"
    engine: str = "transformers"
    engine_options: dict[str, Any] = Field(default_factory=dict)
    out: str | None = None
    limit: int | None = DEFAULT_LIMIT  # None or 0: every prompt
    rounds: int = Field(1, ge=1)
    seed: int = 0
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(32, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    pairs: list[str] = Field(default_factory=lambda: ["revision"], min_length=1)
    judge_model: str | None = None  # --pairs judge: the judge; None is the generating model itself
    judge_samples: int = Field(2, ge=2)  # --pairs judge: answers sampled per prompt (best vs worst is kept)
    judge_temperature: float = Field(0.8, gt=0.0)  # --pairs judge: sampling temperature of those answers
    judge_margin: float = Field(0.1, ge=0.0, le=0.5)  # pairs whose preference is within this of 0.5 are dropped
    # --pairs judge first runs `cai judge-check` on the judge (cached per judge model) and stops when it
    # scores below these, unless trust_judge; with judge_fallback (revision or contrast) it makes those
    # pairs instead, and says so in the log and the data card.
    judge_min_accuracy: float = Field(MIN_ACCURACY, ge=0.0, le=1.0)  # the same thresholds as cai judge-check
    judge_min_consistency: float = Field(MIN_CONSISTENCY, ge=0.0, le=1.0)
    trust_judge: bool = False
    judge_fallback: str | None = None
    # A reply that a principle's `opening` started keeps this many sentences after it (0: all). After
    # a sentence or two a 135M model drifts back into the answer the opening was meant to stop.
    steered_sentences: int = Field(1, ge=0)
    # Best-of-N (contrast pairs): sample this many chosen answers per prompt at best_of_temperature and keep
    # the one filters.candidate_score ranks first; 1 = one greedy answer.
    best_of: int = Field(1, ge=1)
    best_of_temperature: float = Field(0.8, gt=0.0)
    repetition_penalty: float = Field(1.1, ge=1.0)  # small models loop when greedy; 1.0 turns it off
    few_shot: int = Field(2, ge=0)  # examples placed before each critique/revision conversation
    match_examples: bool = False  # True: the sampled principle's own examples (no shared prefix: slower on CPU)
    filters: list[str] = Field(default_factory=lambda: list(DEFAULT_FILTERS))
    force_new: bool = False
    # A request the engine could not answer (after its retries): `stop` ends the run with one line (the rows
    # finished so far are kept; a rerun resumes), `skip` writes that row with status `error` and goes on. An
    # error row is never critiqued, revised or trained on, and the next run generates it again.
    on_error: Literal["stop", "skip"] = "stop"
    trust_remote_code: bool = False
    push_to_hub: str | None = None  # a dataset repo id; the token comes from HF_TOKEN, never from options
    model_licences: dict[str, str] = Field(default_factory=dict)  # {model spec: licence id}, over the model cards
    accept_licence_risk: bool = False  # go ahead when a licence forbids training on a producer's outputs


def is_helping(principle: Principle) -> bool:
    """True for principles that ask the model to keep helping (a refusal under them is a failure)."""
    return bool(HELPING_TAGS & set(principle.tags))
