"""steps.jsonl: one row per logging step of a training stage, written as the trainer logs, and read back.

Each row is a log event of the trainer: `step`, `epoch`, `split` (`train` for the training log,
`test` for an evaluation on the held-out pairs), and every number it logged under one name for both
splits (the trainer's `eval_` prefix is dropped): `loss`, `learning_rate`, and for DPO
`rewards/chosen`, `rewards/rejected`, `rewards/margins`, `rewards/accuracies`, `logps/chosen`,
`logps/rejected` (Rafailov et al. 2023: the implicit reward is beta times the log-prob ratio of the
policy to the reference). Rows are appended and fsynced one by one, so a killed run keeps what it
logged; a run resumed from a checkpoint first drops the rows past the checkpoint's step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from cai_kit.core.errors import UsageError
from cai_kit.core.files import append_synced, jsonl_line, jsonl_text, numbered_lines, write_atomic

STEPS_FILE = "steps.jsonl"
EVAL_PREFIX = "eval_"


def step_row(logs: dict[str, Any], step: int) -> dict[str, Any] | None:
    """The row for one log event, or None for the end-of-training summary (its figures are in metrics.json)."""
    if "train_runtime" in logs:
        return None
    split = "test" if any(key.startswith(EVAL_PREFIX) for key in logs) else "train"
    row: dict[str, Any] = {"step": step, "epoch": logs.get("epoch"), "split": split}
    for key, value in logs.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
            row[key.removeprefix(EVAL_PREFIX)] = value
    return row


def read_steps(path: Path) -> list[dict[str, Any]]:
    """The rows of a steps file; a last line cut short by a kill is left out."""
    rows = []
    for _, line in numbered_lines(path.read_text(encoding="utf-8")):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


class StepLog(TrainerCallback):
    """Appends a row to `<stage folder>/steps.jsonl` at every log event of the main process.

    One row per (step, split): the evaluation a stage runs after training repeats one made at the last
    step when `eval_strategy` lands there, and a run resumed after training ended evaluates again."""

    def __init__(self, path: Path):
        self.path = path
        self.seen: set[tuple[int, str]] = set()

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        # A resumed run starts at the checkpoint's step: what was logged after it is logged again.
        before = read_steps(self.path) if self.path.is_file() else []
        kept = [row for row in before if row["step"] <= state.global_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, jsonl_text(kept))
        self.seen = {(row["step"], row["split"]) for row in kept}

    def on_log(self, args, state, control, logs=None, **kwargs):
        row = step_row(logs or {}, state.global_step)
        if not state.is_world_process_zero or row is None or (row["step"], row["split"]) in self.seen:
            return
        self.seen.add((row["step"], row["split"]))
        append_synced(self.path, jsonl_line(row))


def find_steps(target: Path) -> list[tuple[str, Path]]:
    """(label, steps file) for what `cai plot` is given: a steps file, a stage folder, or a run folder (its
    dpo stage, and each round's); the label is the run folder's name."""
    if target.is_file():
        run = target.parent.parent if target.parent.name in ("dpo", "sft") else target.parent
        return [(run.name or str(run), target)]
    if (target / STEPS_FILE).is_file():
        run = target.parent if target.name in ("dpo", "sft") else target
        return [(run.name or str(run), target / STEPS_FILE)]
    found = [(target.name, target / "dpo" / STEPS_FILE)] if (target / "dpo" / STEPS_FILE).is_file() else []
    rounds = sorted(target.glob(f"round-*/dpo/{STEPS_FILE}"), key=lambda path: (len(path.parts[-3]), path.parts[-3]))
    if rounds and found:
        found = [(f"{target.name} round 1", found[0][1])]
    found += [(f"{target.name} {path.parts[-3].replace('-', ' ')}", path) for path in rounds]
    if not found:
        problem = "no such file or folder" if not target.exists() else (
            f"no {STEPS_FILE} here, in {target / 'dpo'} or in its rounds (a DPO stage writes dpo/{STEPS_FILE} as it "
            "trains)")
        raise UsageError(f"{target}: {problem}")
    return found
