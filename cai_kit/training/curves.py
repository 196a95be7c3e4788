"""Training curves: training_curves.json/png next to the model, and each DPO stage's behaviour.png.

For DPO the reward margin (chosen minus rejected implicit reward, Rafailov et al. 2023) and the
reward accuracy (share of pairs where chosen wins) say more than the loss: a margin that grows on
held-out pairs means the model learned the preference, not just the training pairs. A training
margin that keeps climbing while held-out accuracy stalls is overfitting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError
from cai_kit.core.files import write_atomic
from cai_kit.training.steps import find_steps, read_steps

# (log key, panel title); eval_ variants are drawn on the same panel as markers
CURVES = [("loss", "loss"), ("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy")]
BEHAVIOUR = [("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin")]
BEHAVIOUR_PNG = "behaviour.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _draw(axis: Any, train: Sequence[Sequence[float]], test: Sequence[Sequence[float]], label: str = "",
          color: str | None = None) -> None:
    """Training points as a solid line, held-out points dashed with markers, in one colour."""
    for points, style, split in ((train, "-", "train"), (test, "o--", "held-out")):
        if points:
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, style, color=color, label=f"{label}{split}")


def extract(history: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """{key: [[step, value], ...]} for every curve key (and its eval_ twin) found in the history."""
    series: dict[str, list[list[float]]] = {}
    for entry in history:
        for key, _ in CURVES:
            for name in (key, f"eval_{key}"):
                if isinstance(entry.get(name), (int, float)) and "step" in entry:
                    series.setdefault(name, []).append([entry["step"], float(entry[name])])
    return series


def write_curves(histories: dict[str, list[dict[str, Any]]], folder: Path) -> list[Path]:
    """Write training_curves.json and training_curves.png for each stage's log history; return the paths."""
    data = {stage: extract(history) for stage, history in histories.items()}
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "training_curves.json"
    write_atomic(json_path, json.dumps(data, indent=1) + "\n")
    panels = [(stage, key, title) for stage, series in data.items() for key, title in CURVES
              if key in series or f"eval_{key}" in series]
    if not panels:
        return [json_path]
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for axis, (stage, key, title) in zip(axes[0], panels, strict=True):
        _draw(axis, data[stage].get(key, []), data[stage].get(f"eval_{key}", []))
        axis.set_title(f"{stage}: {title}")
        axis.set_xlabel("step")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    png_path = folder / "training_curves.png"
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return [json_path, png_path]


def write_behaviour(runs: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Reward accuracy and margin over steps from steps.jsonl rows, train against held-out, one colour per run."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(BEHAVIOUR), figsize=(5 * len(BEHAVIOUR), 3.6), squeeze=False)
    for index, (label, rows) in enumerate(runs.items()):
        for axis, (key, _) in zip(axes[0], BEHAVIOUR, strict=True):
            train, test = ([[row["step"], row[key]] for row in rows if row.get("split") == split
                            and isinstance(row.get(key), (int, float))] for split in ("train", "test"))
            _draw(axis, train, test, f"{label} " if len(runs) > 1 else "", f"C{index % 10}")
    for axis, (_, title) in zip(axes[0], BEHAVIOUR, strict=True):
        axis.set_title(f"dpo: {title}")
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0][0].axhline(0.5, color="grey", linewidth=0.8, linestyle=":")  # a coin's reward accuracy
    axes[0][1].axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_runs(targets: list[Path], out: Path) -> Path:
    """`cai plot`: draw the DPO behaviour of each run folder, stage folder or steps file into one figure."""
    runs: dict[str, list[dict[str, Any]]] = {}
    problems = []
    for target in targets:
        try:
            found = find_steps(target)
        except UsageError as err:
            problems += err.problems
            continue
        for label, path in found:
            rows = read_steps(path)
            if not any(isinstance(row.get(key), (int, float)) for row in rows for key, _ in BEHAVIOUR):
                problems.append(f"{path}: no rewards/accuracies or rewards/margins rows (a DPO stage's steps file "
                                "has them)")
            if label in runs:  # two runs with one folder name (runs/a/x and runs/b/x): tell them apart
                label = f"{label} ({path})"
            runs[label] = rows
    if problems:
        raise UsageError(problems)
    return write_behaviour(runs, out)
