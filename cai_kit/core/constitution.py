"""The constitution: the principles a model critiques and revises its own answers against.

A constitution is a YAML file (see the docs, "Constitutions", and the shipped ones in
`constitutions/`, which every command also takes by name, e.g. `harmless`). The critique/revision loop
it drives follows Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback": for each prompt
and round one principle is sampled, the model critiques its last answer by it, then rewrites the answer.

Principle text is plain text, never a template: the wrapping text lives in `cai_kit/prompts/`.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import random
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from cai_kit.core.config_file import load_config
from cai_kit.core.errors import UsageError
from cai_kit.core.shipped import resolve_yaml

JINJA_MARKERS = ("{{", "{%", "{#")


def _not_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _plain(text: str) -> str:
    # Principle text is inserted into the prompt templates as data; a `{{` here would be sent to the
    # model verbatim, never filled in, which is never what the author meant.
    for marker in JINJA_MARKERS:
        if marker in text:
            raise ValueError(f"plain text only, found {marker!r}: templates live in cai_kit/prompts/, not here")
    return text


Text = Annotated[str, AfterValidator(_not_empty)]
PlainText = Annotated[str, AfterValidator(_not_empty), AfterValidator(_plain)]


class PrincipleTest(BaseModel):
    """A prompt with the behaviour expected of a model that follows the principle (`cai test`).

    `expect`: `refuse` (decline it all), `comply` (just help) or `redirect` (decline the harmful part, help with
    the safe one, or point to a safe alternative). `must_include` / `must_not_include`: phrases the answer must
    (must not) contain, case-insensitive. Write them in twins, after XSTest (Rottger et al. 2024): a harmful
    prompt and its harmless look-alike, so a model that refuses everything fails as surely as one that refuses
    nothing.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: Text
    expect: Literal["refuse", "comply", "redirect"]
    must_include: list[Text] = []
    must_not_include: list[Text] = []


class Principle(BaseModel):
    """One principle: how to critique an answer, and how to rewrite it.

    `weight` is the relative chance of being sampled for a critique/revision step. `opening`
    (optional) steers the revision: the revised answer is made to start with
    these words, e.g. "I can't help with that, but". It helps small models that otherwise drift
    into refusing everything or nothing; leave it unset on principles that ask the model to keep
    helping. `categories` (optional) limits the principle to prompts of those
    categories (the prompt set's `category` column); empty means every prompt. It keeps a refusal
    opening meant for weapons questions off a request for a cake recipe.
    """

    model_config = ConfigDict(extra="forbid")

    name: Text
    critique: PlainText
    revision: PlainText
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    tags: list[str] = []
    opening: PlainText | None = None
    categories: list[str] = []
    tests: list[PrincipleTest] = []


class Example(BaseModel):
    """A few-shot demonstration of one critique/revision step.

    `principle` (optional) names the principle the demonstration illustrates, so
    `Constitution.examples_for` can show the most relevant ones first.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: Text
    answer: Text
    critique: Text
    revision: Text
    principle: Text | None = None


def _needs_one(principles: list[Principle]) -> list[Principle]:
    if not principles:
        raise ValueError("needs at least one principle")
    return principles


class Constitution(BaseModel):
    """A validated constitution file; `load_constitution` also sets `path` and `sha256`."""

    model_config = ConfigDict(extra="forbid")

    name: Text
    description: str = ""
    principles: Annotated[list[Principle], AfterValidator(_needs_one)]
    judge: list[Text] = []
    examples: list[Example] = []
    system_prompt: PlainText | None = None

    _path: str = PrivateAttr(default="")
    _sha256: str = PrivateAttr(default="")

    @property
    def path(self) -> str:
        """The file this constitution was loaded from ("" when built in code)."""
        return self._path

    @property
    def sha256(self) -> str:
        """Hex sha256 of the file's bytes, so a run records exactly which constitution it used."""
        return self._sha256

    @model_validator(mode="wrap")
    @classmethod
    def _check_names(cls, data: Any, handler: Any) -> Constitution:
        # Cross-field checks run on the raw data, next to the per-field ones, so one pass reports
        # a duplicate name and a bad weight together, each at its own key path (and so its own line).
        problems = _name_problems(data) + _weight_problems(data) + _test_problems(data)
        try:
            constitution = handler(data)
        except ValidationError as err:
            if not problems:
                raise
            raise ValidationError.from_exception_data(err.title, [*_details(err), *problems]) from None
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return constitution

    def get(self, name: str) -> Principle:
        """The principle called `name`; UsageError naming the choices if there is none."""
        for principle in self.principles:
            if principle.name == name:
                return principle
        where = f"{self.path}: " if self.path else ""
        choices = ", ".join(p.name for p in self.principles)
        raise UsageError(f"{where}no principle named {name!r} in constitution {self.name!r} (choose from: {choices})")

    def principle_for(self, prompt_id: str, round_index: int, seed: int, category: str = "") -> Principle:
        """Sample the principle for one prompt's critique/revision round, in proportion to the weights.

        Seeded by (seed, prompt_id, round_index) alone, so a prompt gets the same principle however
        the prompts are batched, ordered or resumed. Only principles whose `categories` are empty or
        hold `category` are candidates; a prompt with no category can get any principle.
        """
        candidates = [p for p in self.principles if not category or not p.categories or category in p.categories]
        candidates = candidates or self.principles
        rng = random.Random(f"{seed}:{prompt_id}:{round_index}")
        return rng.choices(candidates, weights=[p.weight for p in candidates])[0]

    def examples_for(self, principle: Principle, k: int) -> list[Example]:
        """Up to k demonstrations: those for this principle first, then general ones, then the rest.

        Within each group the file's order is kept.
        """

        def rank(example: Example) -> int:
            if example.principle == principle.name:
                return 0
            return 1 if example.principle is None else 2

        return sorted(self.examples, key=rank)[: max(k, 0)]


def _field(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


def _name_problems(data: Any) -> list[InitErrorDetails]:
    """Duplicate principle names, and examples naming a principle that is not in the file."""
    if not isinstance(data, dict):
        return []
    problems: list[InitErrorDetails] = []
    principles = data.get("principles")
    first_index: dict[str, int] = {}
    for index, item in enumerate(principles if isinstance(principles, list) else []):
        name = _field(item, "name")
        if not isinstance(name, str) or not name.strip():
            continue
        if name.strip() in first_index:
            message = f"duplicate principle name {name.strip()!r} (also principles[{first_index[name.strip()]}])"
            problems.append(_problem("duplicate_name", message, ("principles", index, "name"), name))
        else:
            first_index[name.strip()] = index
    examples = data.get("examples")
    for index, item in enumerate(examples if isinstance(examples, list) else []):
        name = _field(item, "principle")
        if not isinstance(name, str) or not name.strip() or name.strip() in first_index:
            continue
        close = difflib.get_close_matches(name.strip(), list(first_index), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose from: {', '.join(first_index)}"
        message = f"no principle named {name.strip()!r} in this file ({hint})"
        problems.append(_problem("unknown_principle", message, ("examples", index, "principle"), name))
    return problems


def _weight_problems(data: Any) -> list[InitErrorDetails]:
    """Weights whose total is not a finite number (1e308 twice): sampling by weight would fail mid-run."""
    principles = data.get("principles") if isinstance(data, dict) else None
    total = 0.0
    for index, item in enumerate(principles if isinstance(principles, list) else []):
        weight = _number(_field(item, "weight"))
        if weight is not None and math.isfinite(weight) and weight > 0:  # others are the field's own to report
            total += weight
            if math.isinf(total):
                message = (
                    "the weights add up past the largest float (1.8e308); only their ratios matter: use smaller ones"
                )
                return [_problem("weight_overflow", message, ("principles", index, "weight"), weight)]
    return []


def _test_problems(data: Any) -> list[InitErrorDetails]:
    """A test prompt that repeats another (in any principle): `cai test` would answer and count it twice."""
    principles = data.get("principles") if isinstance(data, dict) else None
    first: dict[str, str] = {}
    problems: list[InitErrorDetails] = []
    for i, principle in enumerate(principles if isinstance(principles, list) else []):
        tests = _field(principle, "tests")
        for j, test in enumerate(tests if isinstance(tests, list) else []):
            prompt = _field(test, "prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                continue  # the field's own check reports it
            key = " ".join(prompt.split()).casefold()
            if key in first:
                message = f"duplicate test prompt (also {first[key]})"
                problems.append(_problem("duplicate_test", message, ("principles", i, "tests", j, "prompt"), prompt))
            else:
                first[key] = f"principles[{i}].tests[{j}]"
    return problems


def _number(value: Any) -> float | None:
    # As pydantic reads a weight: a number, or text that is one (YAML reads `1e308`, without a dot, as text).
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _problem(kind: str, message: str, loc: tuple[str | int, ...], value: Any) -> InitErrorDetails:
    # No context is passed, so the message is used as written (braces and all).
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)


def _details(err: ValidationError) -> list[InitErrorDetails]:
    """Re-wrap pydantic's own errors so they can be raised again alongside ours, type and message kept."""
    return [_problem(error["type"], error["msg"], error["loc"], error["input"]) for error in err.errors()]


def load_constitution(spec: str | Path) -> Constitution:
    """Read and validate a constitution file, or a shipped one by name (`harmless`); raise UsageError listing
    every problem as `file:line: key: message`."""
    path = resolve_yaml(spec, ("constitution",))
    constitution, _ = load_config(path, Constitution)
    constitution._path = str(path)
    constitution._sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return constitution
