"""What `cai eval` takes: one typed schema for the CLI and for a recipe's `eval` section.

`EvalSettings` is the part a recipe may set; `EvalOptions` adds the three things a recipe sets itself
(the model under test, its baseline and the report folder).
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from cai_kit.core.errors import UsageError
from cai_kit.evaluation.benchmarks import BENCHMARKS
from cai_kit.evaluation.guards import resolve_format
from cai_kit.guard.guarded import guard_load_problem

SUITES = ["harmful", "over_refusal", "helpful", "everyday"]
# The suites without --suite. everyday is asked for by name or with `all`: its 160 prompts add a third to what each
# model answers. A run with harmful and everyday gets the discrimination headline (verdict_rates.discrimination).
DEFAULT_SUITES = ["harmful", "over_refusal", "helpful"]
# everyday reads its test half; its dev half (`--prompts everyday=eval/everyday_dev`) is the one to choose recipes on.
DEFAULT_PROMPTS = {"harmful": "eval/harmful", "over_refusal": "eval/over_refusal", "helpful": "eval/helpful",
                   "everyday": "eval/everyday_test"}
# Keys of EvalOptions that a recipe's eval section may not set: the recipe sets them.
RECIPE_OWNED = ("model", "baseline", "out")


def _path_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, os.PathLike) else value  # the train stage passes Paths


class EvalSettings(BaseModel):
    """How to evaluate: the suites, their prompts, the judge and the engine (a recipe's `eval` section)."""

    model_config = ConfigDict(extra="forbid")

    suites: list[str] = Field(default_factory=lambda: list(DEFAULT_SUITES))
    prompts: dict[str, str] = Field(default_factory=dict)  # suite -> any spec load_prompts takes
    limit: int | None = Field(None, ge=0)  # per suite, spread over categories; None or 0: all
    judge_model: str | None = None  # harm/refusal judge; also the pairwise judge (else the baseline)
    constitution: str | None = None  # judge questions; default: the shipped helpful constitution
    engine: str = "transformers"
    engine_options: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(32, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    repetition_penalty: float = Field(1.0, ge=1.0)  # 1.0: plain greedy, the model as it is
    seed: int = 0
    examples: int = Field(3, ge=0)  # answers shown side by side per suite in report.md
    trust_remote_code: bool = False

    @field_validator("judge_model", "constitution", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        return _path_to_str(value)

    @field_validator("suites", mode="before")
    @classmethod
    def _suite_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("suites")
    @classmethod
    def _known_suites(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in [*SUITES, "all", *BENCHMARKS]]
        if unknown:
            raise ValueError(f"unknown suite {', '.join(map(repr, unknown))}; choose from {', '.join(SUITES)}, all, "
                             f"or a public benchmark: {', '.join(BENCHMARKS)}")
        # `all` is the project's own suites; a public benchmark (benchmarks.py) is named on its own.
        return [s for s in SUITES if s in value or "all" in value] + [b for b in BENCHMARKS if b in value]

    @field_validator("prompts")
    @classmethod
    def _known_prompt_suites(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(SUITES))
        if unknown:
            raise ValueError(f"prompts for unknown suite {', '.join(map(repr, unknown))}; use {', '.join(SUITES)}")
        return value


class EvalOptions(EvalSettings):
    """Everything `cai eval` takes: the settings plus the model, its baseline and the report folder."""

    model: str = "default"
    baseline: str | None = None  # the model before training; needed for the helpful win rate
    out: str | None = None
    # -- the safety judge and the public benchmarks (guards.py, benchmarks.py)
    safety_judge: str | None = None  # a guard model: Llama Guard 3, Qwen3Guard-Gen or WildGuard
    safety_judge_format: str | None = Field(None, validate_default=True)  # None: guessed from the judge's name
    safety_judge_base_urls: list[str] = Field(default_factory=list)  # openai engine: the guard's own server(s)
    suite_data: dict[str, str] = Field(default_factory=dict)  # benchmark suite -> local file or hf: id
    guard: str | None = None  # a probe guard folder (cai guard train) in front of the model: cai_kit/guard/

    @field_validator("model", "baseline", "out", "safety_judge", mode="before")
    @classmethod
    def _owned_paths(cls, value: Any) -> Any:
        return _path_to_str(value)

    @field_validator("suite_data")
    @classmethod
    def _benchmark_data(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(BENCHMARKS))
        if unknown:
            names = ", ".join(BENCHMARKS)
            raise ValueError(f"data for unknown benchmark {', '.join(map(repr, unknown))}; use {names}")
        return value

    @field_validator("safety_judge_format")
    @classmethod
    def _guard_format(cls, value: str | None, info: ValidationInfo) -> str | None:
        judge = info.data.get("safety_judge")
        if judge:
            resolve_format(judge, value)  # ValueError: an unknown format, or none given and none guessed
        elif value:
            raise ValueError("a format without a safety judge: name the guard model with --safety-judge")
        return value

    @field_validator("guard")
    @classmethod
    def _probe_guard(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value:  # a missing folder, a damaged probe or another model: one line, before any answer is written
            guard_load_problem(value, info.data.get("model") or "default")
        return value

    @field_validator("safety_judge_base_urls")
    @classmethod
    def _guard_urls(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if value and info.data.get("engine") != "openai":
            raise ValueError("the safety judge's own base URL needs --engine openai")
        return value


def make_options(**values: Any) -> EvalOptions:
    """EvalOptions from keyword values, with every problem as one `eval.key: message` line (UsageError)."""
    try:
        return EvalOptions(**values)
    except ValidationError as err:
        raise UsageError([f"eval.{'.'.join(map(str, e['loc'])) or '?'}: {e['msg'].removeprefix('Value error, ')}"
                          for e in err.errors()]) from None


def parse_prompt_overrides(values: list[str], suites: list[str]) -> dict[str, str]:
    """`--prompts SUITE=SPEC`, or a bare SPEC when exactly one suite is asked for."""
    chosen = [s for s in SUITES if s in suites or "all" in suites]
    overrides: dict[str, str] = {}
    for value in values:
        suite, sep, spec = value.partition("=")
        if sep and suite in SUITES:
            overrides[suite] = spec
        elif len(chosen) == 1:
            overrides[chosen[0]] = value
        else:
            raise UsageError(f"--prompts {value!r}: with several suites write SUITE=SPEC, e.g. harmful=my.jsonl")
    return overrides
