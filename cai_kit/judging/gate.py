"""The judge gate: before a judge labels training pairs, it must pass `cai judge-check`.

The check runs once per (judge model, questions, check set, thresholds) and is cached under
`CAI_KIT_CACHE`, so a rerun or a second recipe run does not pay for it again. It stops as soon as the
judge can no longer pass (`stop_early`): a judge at chance is found out in a few dozen pairs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from cai_kit.core.files import write_atomic
from cai_kit.core.models import cache_dir
from cai_kit.engines import Engine
from cai_kit.judging.judge_check import CHECK_SET, check_judge

# The question a judge is asked when the constitution has no `judge` questions of its own.
DEFAULT_JUDGE_QUESTION = "Which answer is more helpful, honest and harmless?"


def check_judge_once(
    judge_name: str, judge: Engine, questions: list[str], min_accuracy: float, min_consistency: float
) -> dict[str, Any]:
    """`cai judge-check` on the judge with these questions, cached per (judge model, questions, check set)."""
    thresholds = [min_accuracy, min_consistency]  # the check stops early by them
    key = json.dumps([judge_name, questions, hashlib.sha256(CHECK_SET.read_bytes()).hexdigest()] + thresholds)
    path = cache_dir() / "judge-check" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    print(f"cai: checking the judge {judge_name} first (cai judge-check)", file=sys.stderr)
    results = check_judge(
        judge, questions, min_accuracy=min_accuracy, min_consistency=min_consistency, stop_early=True
    )
    keys = ("judge", "n", "accuracy", "consistency", "first_position_bias", "stopped_early")
    summary = {k: results[k] for k in keys}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(summary, indent=1))
    return summary


def gate_judge(
    judge_name: str, judge: Engine, questions: list[str], min_accuracy: float, min_consistency: float
) -> str | None:
    """None when the judge may label pairs; else the reason it may not (the caller falls back or stops)."""
    check = check_judge_once(judge_name, judge, questions or [DEFAULT_JUDGE_QUESTION], min_accuracy, min_consistency)
    accuracy, consistency = check["accuracy"]["rate"], check["consistency"]["rate"]
    if accuracy >= min_accuracy and consistency >= min_consistency:
        return None

    def share(entry: dict[str, Any]) -> str:  # 3 decimals and the count: 0.647 must not read as 0.65
        return f"{entry['rate']:.3f} ({entry['k']:g}/{entry['n']})"

    return (
        f"the judge {judge_name} failed cai judge-check: accuracy "
        f"{share(check['accuracy'])} (needs {min_accuracy:.2f}), order consistency "
        f"{share(check['consistency'])} (needs {min_consistency:.2f}) on {check['n']} pairs"
        + (" (stopped there: it could no longer pass)" if check.get("stopped_early") else "")
    )
