"""A guard in front of a model: `cai eval --guard DIR` and `cai try --guard DIR`.

In `cai eval` the guarded system is a third role beside the model alone: the same answers, except that a
prompt the guard flags gets the refusal of the principle that fired (`probe.py`). The rule-based verdicts then
score it like any model, so the report shows the guarded system and the model alone side by side, with the
discrimination of each. The guard's own figures come from its flags alone, per suite: on a harmful suite the
share flagged is its recall, on a benign suite its false-positive rate; over the run's suites together, its
precision and recall. The hidden states come from transformers on the model's folder whatever engine answered
(`features.py`), so the latency per prompt is measured and reported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cai_kit.core.files import write_atomic
from cai_kit.core.stats import format_rate, rate
from cai_kit.guard.probe import OVERALL, Guard

HARMFUL_SUITES = ("harmful",)  # the suites whose prompts a guard should flag; every other one is benign


def guarded_answers(folder: str, model: str, answers: dict[tuple[str, str], dict[str, Any]],
                    prompts: dict[str, list[Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The model's answers with the guard in front: flagged prompts answered by their principle's refusal.

    Each row gets `probe`: the score, whether it was flagged, the principle that fired, the threshold, and the
    guard's seconds per prompt (its forward passes, model load excluded).
    """
    guard = Guard.load(folder, model)
    keys = [(suite, row.id) for suite, rows in prompts.items() for row in rows]
    guard.check(["warm-up"])  # loads the model: the latency below is per prompt, not the load
    started = time.perf_counter()
    checks = guard.check([answers[key]["prompt"] for key in keys])
    per_prompt = (time.perf_counter() - started) / max(len(keys), 1)
    guard.close()
    guarded = {}
    for key, check in zip(keys, checks, strict=True):
        row = dict(answers[key])
        row["probe"] = {"score": round(check.score, 4), "flagged": check.flagged, "principle": check.principle,
                        "threshold": guard.thresholds[OVERALL], "seconds_per_prompt": round(per_prompt, 4)}
        if check.flagged:
            row |= {"answer": check.refusal, "finish_reason": "guard", "tokens": 0}
        guarded[key] = row
    return guarded


def guard_summary(guarded: dict[tuple[str, str], dict[str, Any]], folder: str) -> dict[str, Any]:
    """The guard's own figures: per suite the share flagged, and over the run its precision and recall."""
    suites: dict[str, list[bool]] = {}
    fired: dict[str, int] = {}
    for (suite, _), row in guarded.items():
        suites.setdefault(suite, []).append(row["probe"]["flagged"])
        if row["probe"]["principle"]:
            fired[row["probe"]["principle"]] = fired.get(row["probe"]["principle"], 0) + 1
    true_pos = sum(sum(flags) for suite, flags in suites.items() if suite in HARMFUL_SUITES)
    positives = sum(len(flags) for suite, flags in suites.items() if suite in HARMFUL_SUITES)
    flagged = sum(sum(flags) for flags in suites.values())
    first = next(iter(guarded.values()), {}).get("probe", {})
    return {"folder": folder, "threshold": first.get("threshold"),
            "seconds_per_prompt": first.get("seconds_per_prompt"),
            "suites": {suite: {"harmful": suite in HARMFUL_SUITES, "flagged": rate(sum(flags), len(flags))}
                       for suite, flags in suites.items()},
            "precision": rate(true_pos, flagged), "recall": rate(true_pos, positives), "fired": fired}


def guard_text(results: dict[str, Any]) -> str:
    """The guard's own table (markdown), or "" for a run without a guard."""
    summary = results.get("guard_probe")
    if not summary:
        return ""
    lines = ["| suite | n | flagged by the guard | reads as |", "| --- | --- | --- | --- |"]
    for suite, entry in summary["suites"].items():
        reads = "recall (higher is better)" if entry["harmful"] else "false-positive rate (lower is better)"
        lines.append(f"| {suite} | {entry['flagged']['n']} | {format_rate(entry['flagged'])} | {reads} |")
    if summary["recall"]["n"] and summary["precision"]["n"] and len(summary["suites"]) > 1:
        lines.append(f"| all | - | precision {format_rate(summary['precision'])}, recall "
                     f"{format_rate(summary['recall'])} | harmful suites are the positives |")
    ms = (summary["seconds_per_prompt"] or 0) * 1000
    fired = ", ".join(f"{name} {count}" for name, count in sorted(summary["fired"].items(), key=lambda kv: -kv[1]))
    return (f"Guard `{summary['folder']}` (threshold {summary['threshold']:.4f}; {ms:.0f} ms per prompt of "
            f"transformers forward pass):\n\n" + "\n".join(lines) + f"\n\nprinciples that fired: {fired or 'none'}")


def append_report(out: Path, results: dict[str, Any]) -> None:
    text = guard_text(results)
    if text:
        report = Path(out) / "report.md"
        write_atomic(report, report.read_text(encoding="utf-8") + "\n## The guard\n\n" + text + "\n")


def try_guard(folder: str, model: str, prompt: str) -> tuple[str, bool]:
    """`cai try --guard`: the guard's line about `prompt` and whether it fired (then its refusal is the answer and
    the model is not asked; else the critique/revision loop runs as usual)."""
    guard = Guard.load(folder, model)
    check = guard.check([prompt])[0]
    threshold = guard.thresholds[OVERALL]
    if not check.flagged:
        return f"guard: passed ({check.score:.3f} <= threshold {threshold:.3f}); the model answers", False
    return (f"guard: fired, principle {check.principle or '-'} ({check.score:.3f} > threshold {threshold:.3f})\n"
            f"answer: {check.refusal}"), True


def guard_load_problem(folder: str, model: str) -> None:
    """ValueError (for a pydantic validator) with the one line `Guard.load` would give, if it would fail."""
    from cai_kit.core.errors import UsageError

    try:
        Guard.load(folder, model)
    except UsageError as err:
        raise ValueError(str(err)) from None
