"""`cai eval --answers FILE.jsonl`: label answers that any model or server wrote, without loading a model.

The answer row is the one shape every scorer of answers in cai-kit reads (the verdict check set extends it):

    {"id": "...", "prompt": "...", "answer": "...", "suite": "harmful", "category": "..."}

`id`, `prompt` and `answer` are required strings; `suite` (one of `SUITES`) and `category` are optional.
A row without `suite` takes the one `--suite` given; with no single suite it is a problem. Ids are unique
in a file. Every problem is reported at once, one `file:line: key: message` line each, before anything
is written. The story of `score_answers`: read and check the rows, label each answer
(`cai_kit/evaluation/verdicts.py`), count the labels per suite, then write `labels.jsonl` (one row per
input id, in input order) beside results.json, details.jsonl and report.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError
from cai_kit.core.files import json_lines, write_jsonl
from cai_kit.evaluation.options import SUITES
from cai_kit.evaluation.verdict_rates import discrimination, score_verdicts
from cai_kit.evaluation.verdicts import CLASSIFIER

REQUIRED = ("id", "prompt", "answer")
OPTIONAL = ("suite", "category")
# Keys of `cai eval`'s own answer cache (answers_<role>.jsonl), read past, so a report folder's answers can be
# labelled again: `cai eval --answers runs/eval-x/answers_model.jsonl`.
CACHE_KEYS = ("finish_reason", "tokens", "model", "fingerprint", "engine", "max_new_tokens", "repetition_penalty")
LABELS_FILE = "labels.jsonl"


@dataclass(frozen=True)
class AnswerRow:
    id: str
    prompt: str
    answer: str
    suite: str
    category: str = ""


def row_problems(where: str, row: Any, required: tuple[str, ...], optional: tuple[str, ...],
                 ignored: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with one JSONL row: not an object, a required key missing or not a string, an unknown key
    (`ignored` keys may be there, with any value)."""
    if not isinstance(row, dict):
        return [f"{where}: expected an object with keys {', '.join(required)}"]
    problems = [f"{where}: {key}: missing" for key in required if key not in row]
    problems += [f"{where}: {key}: expected a string, got {type(row[key]).__name__}"
                 for key in (*required, *optional) if key in row and not isinstance(row[key], str)]
    problems += [f"{where}: {key}: empty" for key in ("id", "prompt") if isinstance(row.get(key), str)
                 and key in required and not row[key].strip()]
    problems += [f"{where}: {key}: unknown key (allowed: {', '.join((*required, *optional))})"
                 for key in row if key not in (*required, *optional, *ignored)]
    return problems


def read_answer_rows(path: Path, default_suite: str | None) -> list[AnswerRow]:
    """The rows of an answers file, or UsageError with every problem in it."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    problems: list[str] = []
    rows: list[AnswerRow] = []
    first_line: dict[str, int] = {}
    for number, row in json_lines(path, problems):
        where = f"{path}:{number}"
        found = row_problems(where, row, REQUIRED, OPTIONAL, CACHE_KEYS)
        problems += found
        if found:
            continue
        suite = row.get("suite") or default_suite
        if suite is None:
            problems.append(f"{where}: suite: missing (give each row a suite, or one --suite for the file)")
            continue
        if suite not in SUITES:
            problems.append(f"{where}: suite: {suite!r} is not one of {', '.join(SUITES)}")
            continue
        if row["id"] in first_line:
            problems.append(f"{where}: id: {row['id']!r} repeats line {first_line[row['id']]}")
            continue
        first_line[row["id"]] = number
        rows.append(AnswerRow(row["id"], row["prompt"], row["answer"], suite, row.get("category") or ""))
    if problems:
        raise UsageError(problems)
    if not rows:
        raise UsageError(f"{path}: holds no answer rows")
    return rows


def score_answers(path: str | Path, out: str | Path | None = None, suites: list[str] | None = None,
                  examples: int = 3) -> dict[str, Any]:
    """Label every answer of the file; write labels.jsonl, results.json, details.jsonl and report.md to `out`."""
    from cai_kit.evaluation.report import write_report

    started = time.perf_counter()
    path = Path(path)
    default_suite = suites[0] if suites and len(suites) == 1 else None
    rows = read_answer_rows(path, default_suite)
    out = Path(out or Path("runs") / f"eval-{datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and not out.is_dir():  # before any work, as run_lock says it for the other commands
        raise UsageError(f"{out}: is a file, not a folder; give --out a folder")
    labelled = [{"suite": row.suite, "id": row.id, "category": row.category, "prompt": row.prompt,
                 "answer": row.answer} for row in rows]
    result_suites: dict[str, Any] = {}
    details: list[dict[str, Any]] = []
    for suite in [s for s in SUITES if any(r["suite"] == s for r in labelled)]:
        suite_rows = [r for r in labelled if r["suite"] == suite]  # score_verdicts labels them in place
        result_suites[suite] = {"prompts": str(path), "n": len(suite_rows),
                                "scores": {"model": score_verdicts(suite, suite_rows)}}
        details += [{"suite": suite, "id": r["id"], "category": r["category"], "prompt": r["prompt"],
                     "model": {key: r[key] for key in ("answer", "verdict", "evidence")}} for r in suite_rows]
    headline = discrimination(result_suites)  # harmful refused minus everyday refused, when the run has both
    results = {
        "models": {"model": {"spec": f"answers in {path}", "path": str(path)}},
        "options": {"answers": str(path), "out": str(out), "max_new_tokens": None},
        "classifier": CLASSIFIER,
        **({"discrimination": headline} if headline else {}),
        "suites": result_suites,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / LABELS_FILE, [{"id": r["id"], "suite": r["suite"], "category": r["category"],
                                     "label": r["verdict"], "evidence": r["evidence"]} for r in labelled])
    write_report(out, results, details, examples)
    return results
