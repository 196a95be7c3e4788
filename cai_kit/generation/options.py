"""What `cai generate` takes: one typed schema, declared once. Each field's type (a `Literal` for a closed set),
default and description make its flag (cli/flags.py), the recipe's `generate` runs and their `cai validate`
checks, `cai schema`, and the option table in docs/cli.md, so none of them can disagree."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from cai_kit.core.constitution import Principle
from cai_kit.engines import ENGINES
from cai_kit.judging.judge_check import MIN_ACCURACY, MIN_CONSISTENCY

DEFAULT_PROMPTS = ["red_team", "helpful"]
DEFAULT_LIMIT = 48  # keeps the bare quickstart near 5 minutes on a 2-core CPU; --limit 0 lifts it
# The filters a row can fail, in the order they are checked (generation/filters.py).
Filter = Literal[
    "empty",
    "truncated",
    "artefact",
    "copied",
    "unchanged",
    "refusal",
    "takes_back",
    "off_topic",
    "duplicate",
    "no_contrast",
    "partial",
    "low_margin",
]  # the order rows are checked in (generation/filters.py FILTERS, where each is described)
FILTERS: list[str] = list(get_args(Filter))
# `partial` is off unless a recipe's `filters` lists it: it drops the steered refusals that go on to help
# ("I can't help with X, but here is X"), most of a small model's (docs: Output of `cai generate`, Filters).
DEFAULT_FILTERS: list[Filter] = [name for name in get_args(Filter) if name != "partial"]
# Principles with these tags ask the model to keep helping: a revision under them that refuses failed.
HELPING_TAGS = {"over_refusal", "over-refusal", "helpfulness"}
# How each prompt becomes a preference pair: `revision` (SL-CAI: chosen = the final revision, rejected =
# the first answer) or `contrast` (RLCD: chosen and rejected are answers steered towards and away from
# the sampled principle) or `judge` (RL-CAI / RLAIF: two sampled answers, the better one picked by a
# judge model's log-probs in both orders). Rows of a mode other than `revision` get the id `<prompt id>:<mode>`.
PairMode = Literal["revision", "contrast", "judge"]
PAIR_MODES: list[str] = list(get_args(PairMode))
DEFAULT_PAIRS: list[PairMode] = ["revision"]
# The engine names (`auto` picks one): the engines' own table is the one list, so `engine` is a checked string
# (engine_problems, with its options) that carries the names as choices for the CLI and the JSON schema.
ENGINE_NAMES = ["auto", *ENGINES]


class GenerateOptions(BaseModel):
    """Everything `cai generate` takes; the recipe's `generate` section uses the same schema."""

    model_config = ConfigDict(extra="forbid")

    constitution: str = Field(description="Constitution: a YAML file, or a shipped name (`cai ls`).")
    prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PROMPTS),
        description="Prompt sets: each a shipped name, a jsonl/json/csv/parquet file, or hf:NAME[:config][:split].",
    )
    column: str = Field("prompt", description="Column that holds the prompt text.")
    model: str = Field(
        "default",
        description="The model that answers, critiques and revises: 'default' (embedded "
        "SmolLM2-135M-Instruct), a folder or a hub id.",
    )
    engine: str = Field(
        "transformers",
        description="Generation backend; auto picks vllm on a CUDA GPU where it is installed, else openvino where "
        "it is installed, else transformers (docs: Engines).",
        json_schema_extra={"enum": [*ENGINE_NAMES]},
    )
    engine_options: dict[str, Any] = Field(
        default_factory=dict, description="The engine's own options, e.g. {max_concurrency: 32} (docs: Engines)."
    )
    out: str | None = Field(
        None, description="Output folder; rerun with the same folder to resume. Unset: runs/<constitution>-<time>."
    )
    limit: int | None = Field(DEFAULT_LIMIT, ge=0, description="Prompts to process; 0 for all.")
    shard: str | None = Field(
        None,
        description="I/N: keep only the prompts whose id hashes (sha256) to shard I of N, 0 <= I < N, so N processes "
        "or nodes split one prompt set into N output folders with no overlap and no gap (docs: Output of `cai "
        "generate`, Shards).",
    )
    rounds: int = Field(1, ge=1, description="Critique/revision rounds.")
    seed: int = Field(0, description="Random seed for the principles, examples and answers sampled.")
    max_new_tokens: int = Field(128, ge=1, description="Longest answer, critique or revision, in tokens.")
    batch_size: int = Field(
        32,
        ge=1,
        description="Prompts per engine call; rows are written after each batch. With an engine that serves "
        "concurrent requests (openai): the rows in progress at once, each written as it finishes.",
    )
    lockstep: bool = Field(
        False,
        description="With an engine that serves concurrent requests (openai), run chunk by chunk as other engines "
        "do, each step waiting for the chunk's slowest request. Off: each row goes on to its next step as soon "
        "as its last one returns.",
    )
    temperature: float = Field(0.0, ge=0.0, description="Sampling temperature of answers and revisions; 0 is greedy.")
    pairs: list[PairMode] = Field(
        default_factory=lambda: list(DEFAULT_PAIRS),
        min_length=1,
        description="How preference pairs are made: revision (critique/revision, SL-CAI), contrast (answers "
        "steered towards and away from a principle, RLCD) or judge (sampled answers ranked by a judge model, "
        "RL-CAI).",
    )
    judge_model: str | None = Field(
        None, description="Judge pairs: the open model that judges. Unset: the generating model itself."
    )
    judge_samples: int = Field(
        2, ge=2, description="Judge pairs: answers sampled per prompt (the best and the worst make the pair)."
    )
    judge_temperature: float = Field(0.8, gt=0.0, description="Judge pairs: sampling temperature of those answers.")
    judge_margin: float = Field(
        0.1, ge=0.0, le=0.5, description="Judge pairs: drop pairs whose judged preference is within this of 0.5."
    )
    # Judge pairs first run `cai judge-check` on the judge (cached per judge model), with the same thresholds.
    judge_min_accuracy: float = Field(
        MIN_ACCURACY,
        ge=0.0,
        le=1.0,
        description="Judge pairs: the judge is checked first, as `cai judge-check` does (cached per judge model); "
        "below this accuracy the run stops, unless trust_judge or judge_fallback.",
    )
    judge_min_consistency: float = Field(
        MIN_CONSISTENCY, ge=0.0, le=1.0, description="Judge pairs: ...and below this order consistency."
    )
    trust_judge: bool = Field(False, description="Judge pairs: skip the judge check and use the judge anyway.")
    judge_fallback: Literal["revision", "contrast"] | None = Field(
        None,
        description="Judge pairs: make these pairs instead when the judge fails its check (the log and the data "
        "card say so). Unset: the run stops.",
    )
    # After a sentence or two a 135M model drifts back into the answer the opening was meant to stop.
    steered_sentences: int = Field(
        1,
        ge=0,
        description="A reply that a principle's `opening` started keeps this many sentences after it (0: all).",
    )
    best_of: int = Field(
        1,
        ge=1,
        description="Contrast pairs: sample this many chosen answers per prompt at best_of_temperature and keep "
        "the one the filters rank first; 1 is one greedy answer.",
    )
    best_of_temperature: float = Field(
        0.8, gt=0.0, description="Contrast pairs: sampling temperature of the best_of chosen answers."
    )
    repetition_penalty: float = Field(
        1.1, ge=1.0, description="Penalty on repeated tokens (small models loop when greedy); 1.0 turns it off."
    )
    few_shot: int = Field(
        2, ge=0, description="Constitution examples shown before each critique/revision conversation."
    )
    match_examples: bool = Field(
        False, description="Show the sampled principle's own examples first (no shared prefix: slower on CPU)."
    )
    filters: list[Filter] = Field(
        default_factory=lambda: list(DEFAULT_FILTERS),
        description="The filters that keep rows out of sft.jsonl and prefs.jsonl (docs: Output of `cai generate`, "
        "Filters); partial is off unless named.",
    )
    force_new: bool = Field(
        False, description="Discard rows in the output folder written with another constitution or model."
    )
    on_error: Literal["stop", "skip"] = Field(
        "stop",
        description="A request the engine could not answer after its retries: stop the run (the rows so far are "
        "kept; rerun to resume) or skip: write its row as an error (never trained on, generated again by the next "
        "run) and go on.",
    )
    trust_remote_code: bool = Field(False, description="Run the model repository's own code (off: safer).")
    push_to_hub: str | None = Field(
        None, description="Upload the finished folder as this dataset repo (token: HF_TOKEN, never an option)."
    )
    model_licences: dict[str, str] = Field(
        default_factory=dict,
        description="{model: licence id} for models whose card names no licence (see `cai licence`).",
    )
    accept_licence_risk: bool = Field(
        False, description="Go ahead where a licence forbids training on a model's outputs."
    )

    @field_validator("shard")
    @classmethod
    def _shard_is_i_of_n(cls, value: str | None) -> str | None:
        if value is not None and not _shard_parts(value):
            raise PydanticCustomError("shard", "write I/N with 0 <= I < N, e.g. 0/4; got '{value}'", {"value": value})
        return value


def _shard_parts(shard: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
    if not match or not int(match[1]) < int(match[2]):
        return None
    return int(match[1]), int(match[2])


def in_shard(prompt_id: str, shard: str | None) -> bool:
    """Whether a prompt belongs to `shard` ("I/N"): the sha256 of its id, modulo N, is I. Stable across
    processes, machines and Python versions (unlike hash()), so N runs split a prompt set exactly."""
    if shard is None:
        return True
    parts = _shard_parts(shard)
    assert parts is not None, "GenerateOptions checks the shard"
    index, count = parts
    return int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "big") % count == index


def is_helping(principle: Principle) -> bool:
    """True for principles that ask the model to keep helping (a refusal under them is a failure)."""
    return bool(HELPING_TAGS & set(principle.tags))
