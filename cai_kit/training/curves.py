"""Training curves from the trainers' log history: one JSON file and one PNG next to the model.

For DPO the reward margin (chosen minus rejected implicit reward, Rafailov et al. 2023) and the
reward accuracy (share of pairs where chosen wins) say more than the loss: a margin that grows on
held-out pairs means the model learned the preference, not just the training pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# (log key, panel title); eval_ variants are drawn on the same panel as markers
CURVES = [("loss", "loss"), ("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy")]


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {stage: extract(history) for stage, history in histories.items()}
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "training_curves.json"
    json_path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    panels = [(stage, key, title) for stage, series in data.items() for key, title in CURVES
              if key in series or f"eval_{key}" in series]
    if not panels:
        return [json_path]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for axis, (stage, key, title) in zip(axes[0], panels, strict=True):
        for name, style in ((key, "-"), (f"eval_{key}", "o--")):
            points = data[stage].get(name)
            if points:
                steps, values = zip(*points, strict=True)
                axis.plot(steps, values, style, label="test" if name.startswith("eval_") else "train")
        axis.set_title(f"{stage}: {title}")
        axis.set_xlabel("step")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    png_path = folder / "training_curves.png"
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return [json_path, png_path]
