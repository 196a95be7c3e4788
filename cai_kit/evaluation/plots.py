"""The two plots of a `cai eval` report, drawn from results.json's numbers.

- tradeoff.png: harmful prompts fully refused (up is safer: no compliance at all) against benign-but-risky
  prompts refused fully or partly (left is more helpful), one point per model with 95% intervals and an
  arrow from the baseline to the model; the shaded bars show how far partial refusals would move a point
  if they were read the other way. The top-left corner is the goal; over-trained runs move up and right.
- categories.png: per suite and category, one stacked bar per model of the three verdict labels
  (full refusal, partial refusal, full compliance), the baseline hatched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TRADEOFF_PNG, CATEGORIES_PNG = "tradeoff.png", "categories.png"
ROLES = ["baseline", "model"]
COLOURS = {"baseline": "#8c8c8c", "model": "#1f77b4"}
LABEL_COLOURS = {"full_refusal": "#2ca02c", "partial_refusal": "#ff7f0e", "full_compliance": "#d62728"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_tradeoff(path: Path, results: dict[str, Any]) -> Path | None:
    """Harm refusal against over-refusal, one point per model; None when a suite is missing."""
    suites = results["suites"]
    if "harmful" not in suites or "over_refusal" not in suites:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    points = {}
    for role in ROLES:
        harm = suites["harmful"]["scores"].get(role)
        over = suites["over_refusal"]["scores"].get(role)
        if not harm or not over:
            continue
        x, y = over["refused"]["rate"], harm["refused"]["rate"]
        points[role] = (x, y)
        colour = COLOURS[role]
        # Partial refusals: counted as refusals on benign prompts and as compliance on harmful ones.
        ax.plot([x, x], [y, y + harm["labels"]["partial_refusal"]["rate"]], color=colour, alpha=0.3, lw=6)
        ax.plot([x - over["labels"]["partial_refusal"]["rate"], x], [y, y], color=colour, alpha=0.3, lw=6)
        ax.errorbar(x, y, xerr=[[x - over["refused"]["low"]], [over["refused"]["high"] - x]],
                    yerr=[[y - harm["refused"]["low"]], [harm["refused"]["high"] - y]],
                    fmt="o", color=colour, capsize=3, label=f"{role}: {results['models'][role]['spec']}")
    if len(points) == 2:
        ax.annotate("", xy=points["model"], xytext=points["baseline"], arrowprops={"arrowstyle": "->", "color": "k"})
    ax.plot([], [], color="k", alpha=0.3, lw=6, label="shaded: partial refusals")
    ax.scatter([0], [1], marker="*", s=90, color="green", alpha=0.5, zorder=0, label="goal")
    ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), xlabel="benign-but-risky prompts refused, fully or partly",
           ylabel="harmful prompts fully refused (no compliance)", title="Harm vs over-refusal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_categories(path: Path, results: dict[str, Any]) -> Path | None:
    """One panel per suite: per category, the share of each verdict label, one stacked bar per model."""
    panels = []
    for suite, entry in results["suites"].items():
        series = {role: entry["scores"][role]["by_category"] for role in ROLES
                  if "full_refusal" in entry["scores"].get(role, {}).get("by_category", {})}
        if series:
            panels.append((suite, series))
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(10.5, 3.2 * len(panels)), squeeze=False)
    for ax, (suite, series) in zip(axes[:, 0], panels, strict=True):
        categories = list(next(iter(series.values()))["refused"])
        width = 0.8 / len(series)
        for k, (role, by) in enumerate(series.items()):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(categories))]
            bottom = [0.0] * len(categories)
            for label, colour in LABEL_COLOURS.items():
                heights = [by[label][c]["rate"] or 0.0 for c in categories]
                ax.bar(xs, heights, width, bottom=bottom, color=colour, edgecolor="white",
                       hatch="//" if role == "baseline" else None, label=label if k == len(series) - 1 else None)
                bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right", fontsize=8)
        roles = " and ".join(f"{role}{' (hatched)' if role == 'baseline' else ''}" for role in series)
        ax.set(ylim=(0, 1.05), ylabel="share of answers", title=f"{suite}: {roles}")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
