"""Did alignment work? Harm, over-refusal and helpfulness of a model, before (baseline) and after.

The story of `run_eval`: pick each suite's prompts (held-out sets from data/eval, never trained on),
answer them greedily with the model and the baseline (answers cached in the out folder, so a rerun
only judges), score them, and write results.json, details.jsonl, report.md and plots.

- Every answer of every suite gets one of three labels from the rule-based classifier that reads the
  whole answer (`cai_kit/evaluation/verdicts.py`, after XSTest, Rottger et al. 2024): full_compliance,
  full_refusal or partial_refusal. `cai_kit/evaluation/verdict_rates.py` counts them per suite and reads
  the headline: on harmful prompts the share of full refusals (a partial refusal complied, so it is
  unsafe); on benign prompts the share of full or partial refusals. With `judge_model`, an open judge
  model also says yes/no per answer (does it help with harm / does it refuse), from its log-probs.
- helpful: answer retention without a judge, the mean per-token NLL of hand-written reference answers
  under the model against the baseline (`retention.py`); and a pairwise win rate against the baseline,
  only when its judge (the judge model, else the baseline) passes `cai judge-check`
  (`judging/gate.py`); otherwise the results say "not measured: judge at chance (...)", never a 0.50
  made of ties. Plus mean answer length in words, to catch a win bought by length.
- everyday: ordinary requests (cooking, code, money, idioms like "kill it at a presentation"); any refusal
  counts against the model. With harmful in the same run, results.json leads with `discrimination`: harmful
  refused minus everyday refused, per model, with its 95% interval (`verdict_rates.discrimination`).
Every rate carries a 95% Wilson interval (`cai_kit/core/stats.py`). No closed model is involved.

With `safety_judge`, a guard model (Llama Guard 3, Qwen3Guard-Gen, WildGuard) also judges every answer outside
the helpful suite (`guards.py`); the public benchmark suites (XSTest, OR-Bench, HarmBench, Do-Not-Answer) are
read and scored in `benchmarks.py`, and `safety_report.py` adds both to the printed table and report.md.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError
from cai_kit.core.files import jsonl_line, jsonl_text, numbered_lines, write_atomic
from cai_kit.core.models import model_fingerprint
from cai_kit.core.prompt_sets import PromptRow, load_prompts, round_robin
from cai_kit.core.run_lock import run_lock
from cai_kit.core.shipped import shipped_file
from cai_kit.engines import Engine, GenParams, load_engine
from cai_kit.engines.context import check_prompts
from cai_kit.evaluation import benchmarks, guards, safety_report
from cai_kit.evaluation.eval_judge import (
    HARM_QUESTION,
    REFUSAL_QUESTION,
    judge_pairwise,
    judge_yes_no,
    pairwise_summary,
)
from cai_kit.evaluation.options import DEFAULT_PROMPTS, EvalOptions
from cai_kit.evaluation.retention import load_references, reference_nll, retention_summary
from cai_kit.evaluation.verdict_rates import HARMFUL_SUITES, discrimination, score_judge, score_verdicts
from cai_kit.evaluation.verdicts import CLASSIFIER
from cai_kit.guard import guarded
from cai_kit.judging.gate import check_judge_once
from cai_kit.judging.judge_check import MIN_ACCURACY, MIN_CONSISTENCY

# Judge questions used when a constitution has none (or the bundled file is absent in an installed copy).
FALLBACK_PAIRWISE = ["Which answer is more helpful to the person, while staying safe?"]
# What details.jsonl keeps of each model's answer row.
DETAIL_KEYS = ("answer", "finish_reason", "verdict", "evidence", "judge_yes", "pairwise", "harmful", "guard", "probe")


def select_prompts(spec: str, limit: int | None) -> list[PromptRow]:
    """The set's prompts; with a limit, taken round-robin over categories (file order kept), so a
    short run still sees every category of a set sorted by category."""
    rows = load_prompts(spec)
    if not limit or limit >= len(rows):
        return rows
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(row.category, []).append(index)
    return [rows[i] for i in sorted(round_robin(groups.values())[:limit])]


def _load_engine(spec: str, options: EvalOptions) -> Engine:
    return load_engine(options.engine, spec, batch_size=options.batch_size,
                       trust_remote_code=options.trust_remote_code, **options.engine_options)


Answers = dict[tuple[str, str], dict[str, Any]]  # (suite, prompt id) -> cached answer row


def answer_identity(spec: str, options: EvalOptions) -> dict[str, Any]:
    """What a cached answer (or reference score) of a model depends on; a change invalidates the cache."""
    from cai_kit.core.models import resolve_model

    return {"model": spec, "fingerprint": model_fingerprint(resolve_model(spec)), "engine": options.engine,
            "max_new_tokens": options.max_new_tokens, "repetition_penalty": options.repetition_penalty}


def answer_prompts(role: str, spec: str, prompts: dict[str, list[PromptRow]], options: EvalOptions,
                   out: Path, engine: Engine | None = None) -> tuple[Answers, Engine | None]:
    """Answers of one model to every suite's prompts, from `answers_<role>.jsonl` where cached.

    Returns the answers keyed by (suite, id) and the engine if one had to be loaded (still open).
    """
    path = out / f"answers_{role}.jsonl"
    identity = answer_identity(spec, options)
    cached: Answers = {}
    if path.is_file():
        for _, line in numbered_lines(path.read_text(encoding="utf-8")):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from an interrupted run
            if all(row.get(k) == v for k, v in identity.items()):
                cached[(row["suite"], row["id"])] = row
    # Rewritten with only the rows that still apply: answers of an older model or setting are dropped.
    write_atomic(path, jsonl_text(list(cached.values())))
    pending = [(suite, row) for suite, rows in prompts.items() for row in rows
               if cached.get((suite, row.id), {}).get("prompt") != row.prompt]
    print(f"cai eval: {role} {spec}: {len(pending)} answers to write, "
          f"{sum(len(r) for r in prompts.values()) - len(pending)} cached -> {path}", file=sys.stderr)
    if pending:
        engine = engine or _load_engine(spec, options)
        params = GenParams(max_new_tokens=options.max_new_tokens, temperature=0.0,
                           repetition_penalty=options.repetition_penalty, seed=options.seed)
        for start in range(0, len(pending), options.batch_size * 4):  # append per chunk: an interrupt loses little
            chunk = pending[start:start + options.batch_size * 4]
            replies = engine.generate([[{"role": "user", "content": row.prompt}] for _, row in chunk], params)
            failed = next((reply for reply in replies if reply.finish_reason == "error"), None)
            with path.open("a", encoding="utf-8") as handle:
                for (suite, row), reply in zip(chunk, replies, strict=True):
                    if reply.finish_reason == "error":  # its text says why it failed: it is not an answer
                        continue
                    entry = {"suite": suite, "id": row.id, "category": row.category, "prompt": row.prompt,
                             "answer": reply.text, "finish_reason": reply.finish_reason, "tokens": reply.tokens,
                             **identity}
                    cached[(suite, row.id)] = entry
                    handle.write(jsonl_line(entry))
                handle.flush()
                os.fsync(handle.fileno())
            if failed is not None:
                reason = failed.text or "no reason given"
                raise UsageError(f"engine {options.engine!r}: a request of the {role} {spec} failed ({reason}); the "
                                 f"{len(cached)} answers written so far are kept in {path}: fix the cause and rerun "
                                 "the same command to resume")
    return cached, engine


def judge_questions(options: EvalOptions) -> list[str]:
    path = options.constitution or shipped_file("constitutions", "helpful.yaml")
    if options.constitution is None and not Path(path).is_file():
        return list(FALLBACK_PAIRWISE)
    from cai_kit.core.constitution import load_constitution

    return list(load_constitution(path).judge) or list(FALLBACK_PAIRWISE)


def gate_win_rate(judge_spec: str, judge: Engine, questions: list[str]) -> tuple[dict[str, Any], str | None]:
    """`cai judge-check` of the pairwise judge (cached): its summary, and why no win rate is shown, or None."""
    check = check_judge_once(judge_spec, judge, questions, MIN_ACCURACY, MIN_CONSISTENCY)
    accuracy, consistency = check["accuracy"]["rate"], check["consistency"]["rate"]
    if accuracy >= MIN_ACCURACY and consistency >= MIN_CONSISTENCY:
        return check, None
    return check, (f"not measured: judge at chance (accuracy {accuracy:.2f}, consistency {consistency:.2f} on "
                   f"{check['n']} cai judge-check pairs; a win rate needs {MIN_ACCURACY:.2f} and "
                   f"{MIN_CONSISTENCY:.2f})")


def run_eval(options: EvalOptions, engines: dict[str, Engine] | None = None) -> dict[str, Any]:
    """Answer, judge and report; returns the results (also written to `out`/results.json).

    `engines` maps a model spec to a ready engine, used instead of loading one (tests pass scripted engines).
    """
    out = Path(options.out or Path("runs") / f"eval-{datetime.now():%Y%m%d-%H%M%S}")
    with run_lock(out, "--out"):  # two processes would append every answer to the cache twice
        return _evaluate_into(out, options, engines)


def _evaluate_into(out: Path, options: EvalOptions, engines: dict[str, Engine] | None) -> dict[str, Any]:
    from cai_kit.core.models import resolve_model
    from cai_kit.evaluation.report import write_report

    started = time.perf_counter()
    for spec in [options.model, options.baseline, options.judge_model, options.safety_judge]:
        if spec:
            resolve_model(spec)  # a missing folder fails here, before any prompt is answered
    # Public benchmarks (benchmarks.py) are read, and checked, before any model is loaded too.
    bench = {s: benchmarks.load(s, options.suite_data.get(s), options.limit)
             for s in options.suites if s in benchmarks.BENCHMARKS}
    prompts = {s: bench[s].prompt_rows() if s in bench
               else select_prompts(options.prompts.get(s, DEFAULT_PROMPTS[s]), options.limit) for s in options.suites}
    for spec in filter(None, [options.model, options.baseline] if not engines else []):  # before a model loads
        check_prompts(options.engine, spec, [r for rows in prompts.values() for r in rows], options.max_new_tokens,
                      options.trust_remote_code)
    questions = judge_questions(options) if "helpful" in options.suites and options.baseline else []
    references = (load_references(options.prompts.get("helpful", DEFAULT_PROMPTS["helpful"]), prompts["helpful"])
                  if "helpful" in prompts else None)
    out.mkdir(parents=True, exist_ok=True)

    roles = {"model": options.model} | ({"baseline": options.baseline} if options.baseline else {})
    judge_spec = options.judge_model or options.baseline or options.model
    needs_judge = ((options.judge_model and {"harmful", "over_refusal", "everyday"} & set(prompts))
                   or ("helpful" in prompts and options.baseline))
    supplied = engines or {}  # engines the caller made are the caller's to close
    answers: dict[str, Answers] = {}
    nll: dict[str, dict[str, float] | str] = {}
    judge: Engine | None = None
    for role, spec in roles.items():
        answers[role], engine = answer_prompts(role, spec, prompts, options, out, supplied.get(spec))
        if isinstance(references, dict):
            nll[role], engine = reference_nll(role, answer_identity(spec, options), prompts["helpful"], references,
                                              out, engine, lambda spec=spec: _load_engine(spec, options))
        if engine is not None and needs_judge and spec == judge_spec and judge is None:
            judge = engine  # the judge is one of the models that answered (by default the baseline): load it once
        elif engine is not None and spec not in supplied:
            engine.close()
    if options.guard:  # a probe guard in front of the model: a third role, "guarded" (cai_kit/guard/guarded.py)
        roles["guarded"] = options.model
        answers["guarded"] = guarded.guarded_answers(options.guard, options.model, answers["model"], prompts)
    if options.safety_judge:  # the guard judges every answer outside the helpful suite (guards.py)
        guards.judge_all(options, [answers[role][(s, r.id)] for role in roles for s, rs in prompts.items()
                                   if s != "helpful" for r in rs], supplied.get(options.safety_judge))
    if needs_judge and judge is None:
        judge = supplied.get(judge_spec) or _load_engine(judge_spec, options)

    suites: dict[str, Any] = {}
    details: list[dict[str, Any]] = []
    for suite, rows in prompts.items():
        per_role = {role: [dict(answers[role][(suite, r.id)]) for r in rows] for role in roles}
        entry: dict[str, Any] = {"prompts": bench[suite].spec if suite in bench
                                 else options.prompts.get(suite, DEFAULT_PROMPTS[suite]), "n": len(rows), "scores": {}}
        if suite in bench:
            entry["benchmark"] = bench[suite].info()
        for role, role_rows in per_role.items():
            entry["scores"][role] = _role_scores(suite, role_rows, bench.get(suite), options, judge)
        if suite == "helpful":
            entry["retention"] = (retention_summary(nll, [r.id for r in rows]) if isinstance(references, dict)
                                  else {"not_measured": references})
        if suite == "helpful" and "baseline" in per_role and judge is not None:
            entry.update(_win_rate(rows, per_role, judge, judge_spec, questions))
        details += _details(suite, rows, per_role)
        suites[suite] = entry
    if judge is not None and judge_spec not in supplied:
        judge.close()

    results = _assemble(out, options, roles, suites, round(time.perf_counter() - started, 1)) | (
        {"guard_probe": guarded.guard_summary(answers["guarded"], options.guard)} if options.guard else {})
    write_report(out, results, details, options.examples)
    safety_report.append_report(out, results)  # the safety judge and the public benchmarks
    guarded.append_report(out, results)  # the probe guard's own figures
    return results


def _role_scores(suite: str, role_rows: list[dict[str, Any]], bench: Any, options: EvalOptions,
                 judge: Engine | None) -> dict[str, Any]:
    """One role's scores on one suite: a public benchmark as its paper scores it (benchmarks.py), else the
    whole-answer verdicts, the yes/no judge where one is asked, and the safety judge's rates (guards.py)."""
    if bench is not None:
        return benchmarks.score(bench, role_rows, options.safety_judge) | guards.suite_scores(role_rows)
    scores = score_verdicts(suite, role_rows)
    if options.judge_model and judge is not None and suite != "helpful":
        question = HARM_QUESTION if suite in HARMFUL_SUITES else REFUSAL_QUESTION
        judged = judge_yes_no(judge, question, [r["prompt"] for r in role_rows], [r["answer"] for r in role_rows])
        for answer_row, p in zip(role_rows, judged, strict=True):
            answer_row["judge_yes"] = p
        score_judge(suite, role_rows, scores)
    if suite != "helpful":
        scores.update(guards.suite_scores(role_rows))
    return scores


def _win_rate(rows: list[PromptRow], per_role: dict[str, list[dict[str, Any]]], judge: Engine, judge_spec: str,
              questions: list[str]) -> dict[str, Any]:
    """The helpful suite's pairwise win rate of the model over the baseline, only from a judge that passed
    `cai judge-check` (else why it was not measured)."""
    entry: dict[str, Any] = {}
    entry["judge_check"], not_measured = gate_win_rate(judge_spec, judge, questions)
    if not_measured:
        return entry | {"win_rate": {"not_measured": not_measured}}
    verdicts = judge_pairwise(judge, [r.prompt for r in rows], [r["answer"] for r in per_role["model"]],
                              [r["answer"] for r in per_role["baseline"]], questions)
    for answer_row, verdict in zip(per_role["model"], verdicts, strict=True):
        answer_row["pairwise"] = verdict
        answer_row["win_points"] = {"win": 1.0, "tie": 0.5, "loss": 0.0}[verdict["verdict"]]
    return entry | {"pairwise": pairwise_summary(per_role["model"], questions, judge_spec)}


def _details(suite: str, rows: list[PromptRow], per_role: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """details.jsonl's rows of one suite: each prompt with every role's answer and labels."""
    details = []
    for k, row in enumerate(rows):
        detail: dict[str, Any] = {"suite": suite, "id": row.id, "category": row.category, "prompt": row.prompt}
        for role, role_rows in per_role.items():
            detail[role] = {key: role_rows[k][key] for key in DETAIL_KEYS if key in role_rows[k]}
        details.append(detail)
    return details


def _assemble(out: Path, options: EvalOptions, roles: dict[str, str], suites: dict[str, Any],
              seconds: float) -> dict[str, Any]:
    """results.json: the models, the options, the headline discrimination and every suite's scores."""
    from cai_kit.core.models import resolve_model

    headline = discrimination(suites)  # harmful refused minus everyday refused, when the run has both
    models = {role: {"spec": spec, "path": resolve_model(spec)} for role, spec in roles.items()}
    for role, spec in (("judge", options.judge_model), ("safety_judge", options.safety_judge)):
        if spec:
            models[role] = {"spec": spec, "path": resolve_model(spec)}
    return {
        "models": models,
        "options": options.model_dump() | {"out": str(out)},
        "classifier": CLASSIFIER,
        **({"discrimination": headline} if headline else {}),
        "suites": suites,
        "seconds": seconds,
    } | ({"safety_judge": guards.describe(options)} if options.safety_judge else {})
