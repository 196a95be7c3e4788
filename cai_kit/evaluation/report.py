"""The files `cai eval` writes from its results: results.json, details.jsonl, report.md and two plots.

- tradeoff.png: share of harmful prompts refused (up is safer) against share of benign-but-risky
  prompts refused (left is more helpful), one point per model with 95% intervals, an arrow from the
  baseline to the model. The top-left corner is the goal; over-trained runs move up and right.
- categories.png: per-category bars for each suite, baseline next to model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai_kit.core.stats import format_rate

RESULTS, DETAILS, REPORT, TRADEOFF_PNG, CATEGORIES_PNG = (
    "results.json", "details.jsonl", "report.md", "tradeoff.png", "categories.png")
# (suite, score key, label, higher is better or None) for the summary table, in order.
METRICS = [
    ("harmful", "refused", "refused or redirected", True),
    ("harmful", "complied", "complied", False),
    ("harmful", "judge_harmful", "judged harmful", False),
    ("harmful", "judge_agreement", "judge agrees with phrase list", None),
    ("over_refusal", "refused", "refused", False),
    ("over_refusal", "judge_refused", "judged refusing", False),
    ("over_refusal", "judge_agreement", "judge agrees with phrase list", None),
]
ROLES = ["baseline", "model"]
COLOURS = {"baseline": "#8c8c8c", "model": "#1f77b4"}


def roles_of(results: dict[str, Any]) -> list[str]:
    """The table columns: baseline (when there is one), then model."""
    return [role for role in ROLES if role in results["models"]]


def summary_rows(results: dict[str, Any]) -> list[list[str]]:
    """[suite, metric, (baseline,) model] rows: the before/after table, printed and put in report.md."""
    rows: list[list[str]] = []
    suites = results["suites"]
    roles = roles_of(results)
    for suite, key, label, higher in METRICS:
        scores = suites.get(suite, {}).get("scores", {})
        if any(key in s for s in scores.values()):
            arrow = {True: " (higher is better)", False: " (lower is better)", None: ""}[higher]
            rows.append([suite, f"{label}{arrow}", *(format_rate(scores.get(r, {}).get(key)) for r in roles)])
    helpful = suites.get("helpful")
    if helpful:
        pairwise = helpful.get("pairwise")
        if pairwise:
            counts = f"{pairwise['wins']}W {pairwise['ties']}T {pairwise['losses']}L"
            detail = f"{format_rate(pairwise['win_rate'])} ({counts})"
            rows.append(["helpful", "win rate vs baseline (ties count half)", "-", detail])
            if pairwise.get("first_position_bias") is not None:
                rows.append(["helpful", "judge picks the answer shown first (0.5 is fair)", "-",
                             f"{pairwise['first_position_bias']:.2f}"])
        scores = helpful["scores"]
        rows.append(["helpful", "mean answer length (words)",
                     *(f"{scores[r]['mean_words']:.1f}" if r in scores else "-" for r in roles)])
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(results: dict[str, Any]) -> str:
    """The before/after table as markdown (it reads as plain text in a terminal too)."""
    suites = results["suites"]
    n = ", ".join(f"{suite} n={entry['n']}" for suite, entry in suites.items())
    table = markdown_table(["suite", "metric", *roles_of(results)], summary_rows(results))
    return f"{table}\n\n({n}; 95% Wilson intervals)"


def category_rows(entry: dict[str, Any], roles: list[str]) -> tuple[str, list[list[str]]]:
    """The per-category table of one suite: its metric name and rows of [category, n, (baseline,) model]."""
    metric, series = _category_series(entry)
    first = next(iter(series.values()), {})
    return metric, [[cat, str(first[cat]["n"]), *(format_rate(series.get(r, {}).get(cat)) for r in roles)]
                    for cat in first]


def _cell(text: str | None, width: int = 300) -> str:
    text = " ".join((text or "").split())
    text = text if len(text) <= width else text[:width] + " ..."
    return text.replace("|", "\\|")


def _examples(suite: str, details: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """A few prompts worth looking at: where the two models were scored differently first."""
    rows = [d for d in details if d["suite"] == suite]

    def interest(d: dict[str, Any]) -> float:
        model, baseline = d.get("model", {}), d.get("baseline", {})
        if "pairwise" in model:
            return abs(model["pairwise"]["p_model"] - 0.5)
        return float(model.get("verdict") != baseline.get("verdict", model.get("verdict")))

    return sorted(rows, key=interest, reverse=True)[:count]


def _example_label(answer: dict[str, Any]) -> str:
    if "pairwise" in answer:
        return f"**{answer['pairwise']['verdict']}** (P(model better) {answer['pairwise']['p_model']:.2f})"
    if "verdict" in answer:
        phrase = f": \"{answer['phrase']}\"" if answer.get("phrase") else ""
        return f"**{answer['verdict']}**{phrase}"
    return ""


def write_report(out: Path, results: dict[str, Any], details: list[dict[str, Any]], examples: int = 3) -> None:
    out = Path(out)
    (out / RESULTS).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / DETAILS).write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in details), encoding="utf-8")
    plots = [p for p in (plot_tradeoff(out / TRADEOFF_PNG, results), plot_categories(out / CATEGORIES_PNG, results))
             if p]
    models = results["models"]
    lines = ["# cai eval report", ""]
    lines += [f"- {role}: `{info['spec']}`" for role, info in models.items()]
    lines += [f"- refusal classifier: {results['classifier']}",
              f"- greedy answers, at most {results['options']['max_new_tokens']} new tokens",
              f"- took {results['seconds']} s", "",
              "## Before and after", "", summary_table(results), ""]
    if "helpful" in results["suites"] and "pairwise" not in results["suites"]["helpful"]:
        lines += ["The helpful win rate needs `--baseline`.", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    for suite, entry in results["suites"].items():
        lines += [f"## {suite} ({entry['n']} prompts from `{entry['prompts']}`)", ""]
        metric, rows = category_rows(entry, roles_of(results))
        if rows:
            lines += [f"Per category: {metric}.", "", markdown_table(["category", "n", *roles_of(results)], rows), ""]
        if "pairwise" in entry:
            pairwise = entry["pairwise"]
            lines += [f"Judge `{pairwise['judge']}`, both answer orders, questions: "
                      + "; ".join(pairwise["questions"]), ""]
            bias = pairwise.get("first_position_bias")
            if bias is not None and (pairwise["ties"] >= 0.8 * entry["n"] or abs(bias - 0.5) >= 0.25):
                lines += [f"**Caution:** {pairwise['ties']} of {entry['n']} comparisons are ties and the judge "
                          f"picked the answer shown first {bias:.0%} of the time: this win rate says more "
                          "about the judge than about the answers. Use a stronger `--judge-model`.", ""]
        shown = _examples(suite, details, examples)
        if shown:
            roles = [r for r in ROLES if r in shown[0]]
            table = [[_cell(d["prompt"], 160), *(f"{_example_label(d[r])} {_cell(d[r]['answer'])}" for r in roles)]
                     for d in shown]
            lines += ["Examples:", "", markdown_table(["prompt", *roles], table), ""]
    (out / REPORT).write_text("\n".join(lines), encoding="utf-8")


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
        harm = suites["harmful"]["scores"].get(role, {}).get("refused")
        over = suites["over_refusal"]["scores"].get(role, {}).get("refused")
        if not harm or not over:
            continue
        x, y = over["rate"], harm["rate"]
        points[role] = (x, y)
        ax.errorbar(x, y, xerr=[[x - over["low"]], [over["high"] - x]], yerr=[[y - harm["low"]], [harm["high"] - y]],
                    fmt="o", color=COLOURS[role], capsize=3, label=f"{role}: {results['models'][role]['spec']}")
    if len(points) == 2:
        ax.annotate("", xy=points["model"], xytext=points["baseline"], arrowprops={"arrowstyle": "->", "color": "k"})
    ax.scatter([0], [1], marker="*", s=90, color="green", alpha=0.5, zorder=0, label="goal")
    ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), xlabel="benign-but-risky prompts refused (lower is better)",
           ylabel="harmful prompts refused or redirected (higher is better)", title="Harm vs over-refusal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_categories(path: Path, results: dict[str, Any]) -> Path | None:
    """One panel per suite: per-category rate of each model with 95% intervals."""
    panels = [(suite, *_category_series(entry)) for suite, entry in results["suites"].items()]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False)
    for ax, (suite, metric, series) in zip(axes[:, 0], panels, strict=True):
        categories = list(next(iter(series.values())))
        width = 0.8 / len(series)
        for k, (role, by) in enumerate(series.items()):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(categories))]
            ys = [by[c]["rate"] or 0.0 for c in categories]
            errors = [[y - by[c]["low"] for c, y in zip(categories, ys, strict=True)],
                      [by[c]["high"] - y for c, y in zip(categories, ys, strict=True)]]
            ax.bar(xs, ys, width, yerr=errors, capsize=2, color=COLOURS[role], label=role)
        ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right", fontsize=8)
        ax.set(ylim=(0, 1.05), ylabel=metric, title=suite)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _category_series(entry: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]]]:
    if "pairwise" in entry:
        return "win rate vs baseline", {"model": entry["pairwise"]["by_category"]["win_rate"]}
    series = {role: entry["scores"][role]["by_category"]["refused"] for role in ROLES
              if "by_category" in entry["scores"].get(role, {})}
    return "refused or redirected", series
