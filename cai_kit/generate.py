"""The critique/revision loop (Bai et al. 2022, SL-CAI), batched by stage, resumable, with a data card.

For each chunk of prompts: every initial answer in one batched call, then per round every critique,
then every revision. Rows are appended as soon as their chunk finishes, so a killed run loses at
most one chunk, and a rerun on the same folder skips every finished id.
"""

from __future__ import annotations

import importlib.metadata
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cai_kit.constitution import Constitution, Principle, load_constitution
from cai_kit.engines import Conversation, Engine, GenParams, load_engine
from cai_kit.errors import UsageError
from cai_kit.filters import clean_answer, first_sentences, normalise, row_status, trim_to_sentence
from cai_kit.judge_check import MIN_ACCURACY, MIN_CONSISTENCY
from cai_kit.prompt_sets import PromptRow, load_many
from cai_kit.prompts import render
from cai_kit.refusal import is_refusal
from cai_kit.run_folder import RunFolder, push_folder

DEFAULT_PROMPTS = ["red_team", "helpful"]
DEFAULT_LIMIT = 48  # keeps the bare quickstart near 5 minutes on a 2-core CPU; --limit 0 lifts it
FILTERS = ["empty", "truncated", "artefact", "unchanged", "refusal", "no_contrast", "low_margin", "duplicate"]
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
    filters: list[str] = Field(default_factory=lambda: list(FILTERS))
    force_new: bool = False
    trust_remote_code: bool = False
    push_to_hub: str | None = None  # a dataset repo id; the token comes from HF_TOKEN, never from options
    model_licences: dict[str, str] = Field(default_factory=dict)  # {model spec: licence id}, over the model cards
    accept_licence_risk: bool = False  # go ahead when a licence forbids training on a producer's outputs


def is_helping(principle: Principle) -> bool:
    """True for principles that ask the model to keep helping (a refusal under them is a failure)."""
    return bool(HELPING_TAGS & set(principle.tags))


def _finish(
    completion_text: str, finish_reason: str, opening: str | None = None, max_sentences: int = 0
) -> tuple[str, str]:
    """Clean a reply, put back its prefilled opening (keeping at most `max_sentences` sentences after it), and
    cut a reply that hit the limit to its last full sentence ("trimmed"); a reply with no full sentence
    keeps finish_reason "length" (filtered)."""
    text = clean_answer(completion_text)
    if opening:
        cut = first_sentences(text, max_sentences) if max_sentences else text
        text = f"{opening} {cut}".strip()
        if cut != clean_answer(completion_text):
            return text, "stop"
    if finish_reason == "length":
        trimmed = trim_to_sentence(text)
        if trimmed and trimmed != opening:
            return trimmed, "trimmed"
    return text, finish_reason


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def model_roles(options: GenerateOptions) -> dict[str, str]:
    """Which model wrote, critiqued and revised each row: provenance, and what the licence guard checks."""
    roles = {"writer": options.model, "critic": options.model, "reviser": options.model}
    if "judge" in options.pairs:
        roles["judge"] = options.judge_model or options.model
    return roles


def few_shot_turns(constitution: Constitution, principle: Principle, k: int, match: bool = False) -> Conversation:
    """The constitution's demonstrations as earlier turns of the same chat, in the model's own template.

    By default the first k examples of the file, the same for every prompt, so the engine computes
    their KV cache once per batch; `match` shows the sampled principle's own examples first instead.
    """
    turns: Conversation = []
    for example in constitution.examples_for(principle, k) if match else constitution.examples[:k]:
        shown = constitution.get(example.principle) if example.principle else principle
        turns += [
            _user(example.prompt),
            _assistant(example.answer),
            _user(render("critique_request", principle=shown)),
            _assistant(example.critique),
            _user(render("revision_request", principle=shown)),
            _assistant(example.revision),
        ]
    return turns


def _params(options: GenerateOptions, temperature: float) -> GenParams:
    return GenParams(
        max_new_tokens=options.max_new_tokens,
        temperature=temperature,
        repetition_penalty=options.repetition_penalty,
        seed=options.seed,
    )


def _system(constitution: Constitution) -> Conversation:
    """The constitution's system prompt as the first message, or nothing."""
    return [{"role": "system", "content": constitution.system_prompt}] if constitution.system_prompt else []


def critique_and_revise(
    engine: Engine, constitution: Constitution, chunk: list[PromptRow], options: GenerateOptions
) -> list[dict[str, Any]]:
    """Run initial answers and `rounds` critique/revision rounds for a chunk; return finished rows."""
    params = _params(options, options.temperature)
    system = _system(constitution)
    initial = engine.generate([system + [_user(row.prompt)] for row in chunk], params)
    answers = [clean_answer(c.text) for c in initial]
    finish = [c.finish_reason for c in initial]
    steps: list[list[dict[str, str]]] = [[] for _ in chunk]
    for round_index in range(options.rounds):
        principles = [constitution.principle_for(row.id, round_index, options.seed, row.category) for row in chunk]
        critique_chats = [
            system
            + few_shot_turns(constitution, principle, options.few_shot)
            + [_user(row.prompt), _assistant(answer), _user(render("critique_request", principle=principle))]
            for row, answer, principle in zip(chunk, answers, principles)
        ]
        critiques = engine.generate(critique_chats, params)
        revision_chats = [
            chat
            + [_assistant(critique.text.strip()), _user(render("revision_request", principle=principle))]
            + ([_assistant(principle.opening)] if principle.opening else [])  # steering: the reply starts here
            for chat, critique, principle in zip(critique_chats, critiques, principles)
        ]
        revisions = engine.generate(revision_chats, params)
        for k, (principle, critique, revision) in enumerate(zip(principles, critiques, revisions)):
            text, finish[k] = _finish(
                revision.text, revision.finish_reason, principle.opening, options.steered_sentences
            )
            if "error" in (revision.finish_reason, critique.finish_reason) or initial[k].finish_reason == "error":
                finish[k] = "error"
            steps[k].append({"principle": principle.name, "critique": critique.text.strip(), "revision": text})
            answers[k] = text
    return [
        _row(row, "revision", options, constitution, clean_answer(first.text), row_steps, final, reason)
        for row, first, row_steps, final, reason in zip(chunk, initial, steps, answers, finish)
    ]


def _row(
    prompt: PromptRow,
    mode: str,
    options: GenerateOptions,
    constitution: Constitution,
    initial: str,
    steps: list[dict[str, Any]],
    final: str,
    finish_reason: str,
    **extra: Any,
) -> dict[str, Any]:
    """One row of generations.jsonl (DESIGN.md's columns, plus `pair` and `prompt_id` for modes other than
    revision, `models` for provenance, and whatever the mode adds)."""
    ids = {"id": _row_id(prompt.id, mode)} | ({} if mode == "revision" else {"prompt_id": prompt.id, "pair": mode})
    return {
        **ids,
        "prompt": prompt.prompt,
        "category": prompt.category,
        "source": prompt.source,
        "initial": initial,
        "steps": steps,
        "final": final,
        **extra,
        "finish_reason": finish_reason,
        "model": options.model,
        "models": model_roles(options),
        "seed": options.seed,
        "constitution": constitution.name,
    }


def _row_id(prompt_id: str, mode: str) -> str:
    return prompt_id if mode == "revision" else f"{prompt_id}:{mode}"


def _engine(options: GenerateOptions, model: str) -> Engine:
    return load_engine(
        options.engine,
        model,
        batch_size=options.batch_size,
        trust_remote_code=options.trust_remote_code,
        **options.engine_options,
    )


def _judge_engine(options: GenerateOptions, engine: Engine) -> Engine:
    """The engine that judges `--pairs judge`: the generating one unless --judge-model names another."""
    if not options.judge_model or options.judge_model == options.model:
        return engine
    return _engine(options, options.judge_model)


def _status(row: dict[str, Any], constitution: Constitution, options: GenerateOptions, seen: set[str]) -> str:
    """ "ok" or why the row is filtered; `seen` holds the normalised finals kept so far (duplicates)."""
    if row["finish_reason"] == "error":
        return f"error: {row['final'] or row['initial']}"[:300]
    if row.get("pair") == "judge":
        status = row_status(row["final"], row["initial"], row["finish_reason"], False, options.filters, seen)
        if status == "ok" and "low_margin" in options.filters and row["score"] - 0.5 < options.judge_margin:
            return "low_margin"
        return status
    principle = constitution.get(row["steps"][-1]["principle"])  # the principle that shaped `final`
    helping = is_helping(principle)
    status = row_status(row["final"], row["initial"], row["finish_reason"], helping, options.filters, seen)
    if status == "ok" and row.get("pair") == "contrast" and "no_contrast" in options.filters:
        # A pair teaches something only when its two sides differ in the way the steering meant:
        # a harm principle's chosen side refuses and its rejected side does not; a helping one's the reverse.
        refuses, rejected_refuses = is_refusal(row["final"]), is_refusal(row["initial"])
        meant = (not refuses and rejected_refuses) if helping else (refuses and not rejected_refuses)
        if principle.opening or helping:
            status = "ok" if meant else "no_contrast"
    return status


def _manifest(options: GenerateOptions, constitution: Constitution, prompts: list[PromptRow]) -> dict[str, Any]:
    from cai_kit.licences import licences_of

    versions = {}
    for package in ["cai-kit", "torch", "transformers", "trl", "vllm"]:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "command": "cai generate",
        "options": options.model_dump(),
        "constitution": constitution.name,
        "constitution_path": str(options.constitution),
        "constitution_sha256": constitution.sha256,
        "model": options.model,
        "models": model_roles(options),
        "licences": licences_of(model_roles(options), options.model_licences),
        "seed": options.seed,
        "prompt_sources": options.prompts,
        "prompts": len(prompts),
        "versions": versions,
        "argv": sys.argv,
    }


def default_out(constitution_path: str) -> str:
    return str(Path("runs") / f"{Path(constitution_path).stem}-{datetime.now():%Y%m%d-%H%M%S}")


def _check(options: GenerateOptions) -> None:
    """One line per bad option, before anything loads."""
    from cai_kit.engines import engine_problems

    problems = engine_problems(options.engine, options.engine_options)
    unknown = sorted(set(options.filters) - set(FILTERS))
    if unknown:
        problems.append(f"filters: unknown filter(s) {', '.join(unknown)}; choose from {', '.join(FILTERS)}")
    unknown = sorted(set(options.pairs) - set(PAIR_MODES))
    if unknown:
        problems.append(f"pairs: unknown mode(s) {', '.join(unknown)}; choose from {', '.join(PAIR_MODES)}")
    if options.judge_fallback not in (None, "revision", "contrast"):
        problems.append(f"judge_fallback: {options.judge_fallback!r} is not revision or contrast")
    if problems:
        raise UsageError(problems)


def run_generate(options: GenerateOptions, engine: Engine | None = None) -> Path:
    """Run the loop and return the output folder. `engine` lets tests pass a scripted engine."""
    from tqdm import tqdm

    from cai_kit import pairs  # the contrast and judge modes (they build on this module's helpers)
    from cai_kit.data_card import print_summary, write_card
    from cai_kit.licence_guard import check_generate

    check_generate(options)  # before any work: a forbidden licence combination stops here
    _check(options)
    constitution = load_constitution(options.constitution)
    prompts = load_many(options.prompts, column=options.column, limit=options.limit or None)
    # Before the folder is touched: a judge that fails its check stops the run here, or falls back.
    options, engine, judge, notes = pairs.gate_or_fall_back(options, engine, constitution)
    modes = list(dict.fromkeys(options.pairs))
    folder = RunFolder(options.out or default_out(options.constitution))
    rows = folder.open(_manifest(options, constitution, prompts), options.force_new)
    wanted = {_row_id(row.id, mode) for row in prompts for mode in modes}
    done = {row["id"] for row in rows}
    pending = [(mode, [row for row in prompts if _row_id(row.id, mode) not in done]) for mode in modes]
    todo = sum(len(rows_of_mode) for _, rows_of_mode in pending)
    limit_note = f" (limit {options.limit}; --limit 0 for all)" if options.limit else ""
    print(
        f"cai generate: {len(prompts)} prompts x {'+'.join(modes)} pairs{limit_note}, "
        f"{len(wanted & done)} rows already done, {todo} to go -> {folder.path}",
        file=sys.stderr,
    )
    started = time.perf_counter()
    if todo:
        if engine is None:
            try:
                engine = _engine(options, options.model)
            except UsageError:  # a model or server that will not load: leave no empty run folder behind
                folder.discard_if_rowless()
                raise
        seen = {normalise(row["final"]) for row in rows if row["status"] == "ok"}
        bar = tqdm(total=len(wanted), initial=len(wanted & done), unit="row", file=sys.stderr, dynamic_ncols=True)
        for mode, mode_rows in pending:
            for start in range(0, len(mode_rows), options.batch_size):
                chunk = mode_rows[start : start + options.batch_size]
                if mode == "judge":
                    judge = judge or _judge_engine(options, engine)
                    finished = pairs.judged_pairs(engine, constitution, chunk, options, judge)
                elif mode == "contrast":
                    finished = pairs.contrast_pairs(engine, constitution, chunk, options)
                else:
                    finished = critique_and_revise(engine, constitution, chunk, options)
                for row in finished:
                    row["status"] = _status(row, constitution, options, seen)
                    if row["status"] == "ok":
                        seen.add(normalise(row["final"]))
                folder.append(finished)
                rows += finished
                bar.update(len(chunk))
                tokens = getattr(engine, "generated_tokens", 0)
                if tokens:
                    bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
        bar.close()
    write_card(folder, constitution, options, rows, notes)
    print_summary(folder, rows, time.perf_counter() - started)
    if options.push_to_hub:
        push_folder(folder.path, options.push_to_hub)
    return folder.path
