"""Training data for one stage: JSONL sources mixed by weight, each split into train and test first.

Each source is split before weighting, so a row repeated by a weight above 1 never lands on both
sides, and every source keeps its own share of the held-out rows. The split and the sampling are
seeded, so a resumed trainer sees the same rows.

SFT rows (`{"messages": [...]}`) become TRL's conversational prompt-completion format, the last
assistant turn being the completion, so the loss falls on the answer only: training on the
red-team prompts themselves would teach the model to write them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError
from cai_kit.core.files import json_lines

PREF_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class Source:
    name: str
    path: Path
    weight: float


def _sft_row(row: dict[str, Any]) -> dict[str, Any] | str:
    if "prompt" in row and "completion" in row:
        return {"prompt": row["prompt"], "completion": row["completion"]}
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return "missing messages (or prompt and completion)"
    if not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
        return "the last message must be the assistant's (it is what SFT learns to write)"
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def _pref_row(row: dict[str, Any]) -> dict[str, Any] | str:
    missing = [column for column in PREF_COLUMNS if column not in row]
    if missing:
        return f"missing {', '.join(missing)} (expected keys: {', '.join(PREF_COLUMNS)})"
    shaped = {column: row[column] for column in PREF_COLUMNS}
    if isinstance(row.get("score"), (int, float)):
        shaped["score"] = row["score"]
    return shaped


SHAPES = {"sft": _sft_row, "dpo": _pref_row}


def read_rows(path: Path, stage: str) -> list[dict[str, Any]]:
    """The rows of a JSONL file in the shape the stage's trainer takes; a bad row is an error naming its line."""
    if not path.is_file():
        raise UsageError(f"{path}: file not found")
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, row in json_lines(path, problems):
        shaped = SHAPES[stage](row) if isinstance(row, dict) else "expected a JSON object"
        if isinstance(shaped, str):
            problems.append(f"{path}:{number}: {shaped}")
        else:
            rows.append(shaped)
    if problems:
        raise UsageError(problems[:20] + ([f"{path}: ... {len(problems) - 20} more"] if len(problems) > 20 else []))
    return rows


def _without_score(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key != "score"}


def soft_label(row: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The pair without its score, chosen and rejected swapped with probability 1 - score (the soft label, sampled)."""
    pair = _without_score(row)
    if "score" in row and rng.random() >= row["score"]:
        pair["chosen"], pair["rejected"] = row["rejected"], row["chosen"]
    return pair


def mix(sources: list[Source], stage: str, test_split: float, seed: int, min_score: float = 0.0,
        soft_labels: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (train rows, test rows, one count record per source); pairs scored below min_score are dropped,
    and with soft_labels each scored training pair is flipped with probability 1 - score."""
    train: list[dict[str, Any]] = []
    test: list[dict[str, Any]] = []
    counts = []
    for source in sources:
        rows = read_rows(source.path, stage)
        scored_low = [row for row in rows if row.get("score", 1.0) < min_score]
        rows = [row for row in rows if row.get("score", 1.0) >= min_score]
        random.Random(f"{seed}:{source.name}").shuffle(rows)
        # A source weighted 0 is left out of the stage, its held-out share too (it would count in the eval loss).
        held = 0 if test_split == 0 or len(rows) < 2 or source.weight == 0 else max(1, round(len(rows) * test_split))
        # Held-out pairs keep the judge's orientation (they measure it); training pairs get the soft labels.
        rng = random.Random(f"{seed}:{source.name}:soft")
        kept = [soft_label(row, rng) if soft_labels else _without_score(row) for row in rows[held:]]
        flipped = sum(row["chosen"] != pair["chosen"] for row, pair in zip(rows[held:], kept)) if stage == "dpo" else 0
        rows = [_without_score(row) for row in rows[:held]] + kept
        # weight 2.5 -> every row twice, plus half of them once more
        whole, part = divmod(source.weight, 1.0)
        extra = random.Random(f"{seed}:{source.name}:weight").sample(kept, round(len(kept) * part))
        picked = kept * int(whole) + extra
        test += rows[:held]
        train += picked
        counts.append({"source": source.name, "path": str(source.path), "rows": len(rows), "weight": source.weight,
                       "train": len(picked), "test": held, "below_min_score": len(scored_low),
                       "flipped_by_soft_labels": flipped})
    random.Random(seed).shuffle(train)
    return train, test, counts


def describe(stage: str, counts: list[dict[str, Any]]) -> str:
    """One log line: where each stage's rows came from."""
    parts = [f"{c['source']} {c['rows']} rows (weight {c['weight']:g}) -> {c['train']} train / {c['test']} test"
             + (f" ({c['below_min_score']} below min_score left out)" if c.get("below_min_score") else "")
             + (f" ({c['flipped_by_soft_labels']} flipped by soft labels)" if c.get("flipped_by_soft_labels") else "")
             for c in counts]
    total = f"total {sum(c['train'] for c in counts)} train / {sum(c['test'] for c in counts)} test"
    return f"{stage} data: " + "; ".join([*parts, total])
