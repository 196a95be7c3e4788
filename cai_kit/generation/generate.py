"""`cai generate`: load, loop, write. The stage runs each pair mode chunk by chunk (the critique/revision loop
of Bai et al. 2022 in `loop.py`, contrast and judged pairs in `pairs.py`), resumable, with a data card.

Rows are appended as soon as their chunk finishes, so a killed run loses at most one chunk, and a rerun on
the same folder skips every finished id. An engine that serves concurrent requests (the openai engine) gets
chunks of one row from `batch_size` threads instead: each row goes on to its next step as soon as its last
one returns, and is written as it finishes, so no request waits for a chunk's slowest one.
"""

from __future__ import annotations

import importlib.metadata
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from cai_kit.core.constitution import Constitution, load_constitution
from cai_kit.core.errors import UsageError
from cai_kit.core.prompt_sets import PromptRow, load_many
from cai_kit.core.run_lock import run_lock
from cai_kit.engines import Engine, load_engine
from cai_kit.generation import pairs
from cai_kit.generation.failures import EngineFailed, StopOnError, stopped_message
from cai_kit.generation.filters import Candidate, normalise, row_status
from cai_kit.generation.lengths import check_lengths
from cai_kit.generation.loop import critique_and_revise
from cai_kit.generation.options import GenerateOptions, in_shard, is_helping
from cai_kit.generation.pipeline import finished_rows
from cai_kit.generation.rows import row_id
from cai_kit.generation.run_folder import RunFolder, push_folder
from cai_kit.judging.gate import gate_judge
from cai_kit.licensing.licence_guard import check_generate, model_roles
from cai_kit.licensing.licences import licences_of


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


def gate_or_fall_back(
    options: GenerateOptions, engine: Engine | None, constitution: Constitution
) -> tuple[GenerateOptions, Engine | None, Engine | None, list[str]]:
    """With `judge` among the pair modes, check the judge first: return (options, engine, judge, card
    notes). A judge that fails stops the run, or with judge_fallback its mode is swapped for the fallback
    (said on stderr and in the notes) and it is no longer a producer of the rows."""
    if "judge" not in options.pairs:
        return options, engine, None, []
    engine = engine or _engine(options, options.model)
    judge = _judge_engine(options, engine)
    refused = None
    if not options.trust_judge:
        refused = gate_judge(
            options.judge_model or options.model,
            judge,
            constitution.judge,
            options.judge_min_accuracy,
            options.judge_min_consistency,
        )
    if not refused:
        return options, engine, judge, []
    if not options.judge_fallback:
        raise UsageError(
            f"--pairs judge: {refused}; its labels would be noise. Use a bigger --judge-model, --pairs contrast, "
            "--judge-fallback revision|contrast, or --trust-judge to use it anyway"
        )
    fallback = options.judge_fallback
    print(f"cai generate: {refused}; making {fallback} pairs instead (judge_fallback)", file=sys.stderr)
    modes = list(dict.fromkeys(fallback if mode == "judge" else mode for mode in options.pairs))
    if judge is not engine:
        judge.close()
    note = f"Judge pairs were asked for, but {refused}; {fallback} pairs were made instead."
    return options.model_copy(update={"pairs": modes}), engine, None, [note]


def _status(row: dict[str, Any], constitution: Constitution, options: GenerateOptions, seen: set[str]) -> str:
    """ "ok" or why the row is filtered (filters.py); `seen` holds the normalised finals kept so far (duplicates)."""
    if row["finish_reason"] == "error":  # the reason only: the answers of an error row are empty
        return f"error: {row.get('error') or 'the engine could not answer'}"[:300]
    principle = None if row.get("pair") == "judge" else constitution.get(row["steps"][-1]["principle"])
    candidate = Candidate(
        prompt=row["prompt"], final=row["final"], initial=row["initial"], finish_reason=row["finish_reason"],
        helping=bool(principle and is_helping(principle)), opening=principle.opening if principle else None,
        pair=row.get("pair", "revision"), score=row.get("score"), judge_margin=options.judge_margin,
        examples=constitution.examples, seen=seen,
    )  # fmt: skip
    return row_status(candidate, options.filters)


def _manifest(options: GenerateOptions, constitution: Constitution, prompts: list[PromptRow]) -> dict[str, Any]:
    versions = {}
    for package in ["cai-kit", "torch", "transformers", "trl", "vllm", "openvino", "openvino-genai"]:
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
    """One line per bad engine option, before anything loads (GenerateOptions itself checks the closed sets:
    pairs, filters, judge_fallback, on_error)."""
    from cai_kit.engines import engine_problems

    problems = engine_problems(options.engine, options.engine_options)
    if problems:
        raise UsageError(problems)


def run_generate(options: GenerateOptions, engine: Engine | None = None, licences_checked: bool = False) -> Path:
    """Run the loop and return the output folder. `engine` lets tests pass a scripted engine."""
    if not licences_checked:  # `cai train` checks every run of its recipe at once, before its first stage
        check_generate(options)  # before any work: a forbidden licence combination stops here
    _check(options)
    constitution = load_constitution(options.constitution)
    prompts = load_many(options.prompts, column=options.column, limit=options.limit or None)
    prompts = [row for row in prompts if in_shard(row.id, options.shard)]
    if engine is None:  # a prompt or principle past the model's context stops here, not minutes into the run
        check_lengths(options, constitution, prompts)
    # Before the folder is touched: a judge that fails its check stops the run here, or falls back.
    options, engine, judge, notes = gate_or_fall_back(options, engine, constitution)
    folder = RunFolder(options.out or default_out(options.constitution))
    with run_lock(folder.path, "--out"):  # a second process on this folder would write every row again
        _generate_into(folder, options, constitution, prompts, engine, judge, notes)
    if options.push_to_hub:
        push_folder(folder.path, options.push_to_hub)
    return folder.path


def _generate_into(
    folder: RunFolder,
    options: GenerateOptions,
    constitution: Constitution,
    prompts: list[PromptRow],
    engine: Engine | None,
    judge: Engine | None,
    notes: list[str],
) -> None:
    """Resume or start the run in `folder`: the pending rows of each pair mode, chunk by chunk (a concurrent
    engine: row by row, pipelined), then the card."""
    from tqdm import tqdm

    from cai_kit.generation.data_card import print_summary, write_card

    rows = folder.open(_manifest(options, constitution, prompts), options.force_new)
    modes = list(dict.fromkeys(options.pairs))
    wanted = {row_id(row.id, mode) for row in prompts for mode in modes}
    done = {row["id"] for row in rows}
    pending = [(mode, [row for row in prompts if row_id(row.id, mode) not in done]) for mode in modes]
    todo = sum(len(rows_of_mode) for _, rows_of_mode in pending)
    limit_note = f" (limit {options.limit}; --limit 0 for all)" if options.limit else ""
    limit_note += f" (shard {options.shard})" if options.shard else ""
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
        checked = StopOnError(engine) if options.on_error == "stop" else engine
        if "judge" in modes:
            judge = judge or _judge_engine(options, engine)

        def run_chunk(mode: str, chunk: list[PromptRow]) -> list[dict[str, Any]]:
            if mode == "judge":
                return pairs.judged_pairs(checked, constitution, chunk, options, judge)
            if mode == "contrast":
                return pairs.contrast_pairs(checked, constitution, chunk, options)
            return critique_and_revise(checked, constitution, chunk, options)

        concurrent = getattr(engine, "concurrent", False) and not options.lockstep
        results = finished_rows(run_chunk, pending, options.batch_size, concurrent)
        try:
            for finished in results:
                for row in finished:
                    row["status"] = _status(row, constitution, options, seen)
                    if row["status"] == "ok":
                        seen.add(normalise(row["final"]))
                folder.append(finished)
                rows += finished
                bar.update(len(finished))
                tokens = getattr(engine, "generated_tokens", 0)
                if tokens:
                    bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
        except EngineFailed as err:  # the failed chunk is dropped; the rows finished before it (or beside it) stay
            raise UsageError(stopped_message(options.engine, str(err), len(rows), folder.path)) from None
        finally:  # no server left, a full disk: the error gets a line of its own
            results.close()
            bar.close()
    write_card(folder, constitution, options, rows, notes)
    print_summary(folder, rows, time.perf_counter() - started)
    failed = sum(row["status"].startswith("error") for row in rows)
    if failed:  # on_error: skip went on past them; they are not in sft.jsonl or prefs.jsonl
        print(f"cai generate: {failed} rows failed (status error); rerun the same command to generate them again",
              file=sys.stderr)
