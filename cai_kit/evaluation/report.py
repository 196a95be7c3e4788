"""The files `cai eval` writes from its results: results.json, details.jsonl, report.md and the plots.

The before/after table shows, per suite, the headline (`verdict_rates.py`) and all three verdict labels
with their 95% intervals; for helpful prompts also answer retention (reference NLL) and the win rate, or
the reason it was not measured. When the run has harmful and everyday prompts, its first row is the
discrimination, harmful refused minus everyday refused, with both rates beside it. The plots are drawn by
`plots.py`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from cai_kit.core.files import jsonl_text, write_atomic
from cai_kit.core.stats import format_difference, format_rate
from cai_kit.evaluation.plots import CATEGORIES_PNG, TRADEOFF_PNG, plot_categories, plot_tradeoff

RESULTS, DETAILS, REPORT = "results.json", "details.jsonl", "report.md"
# (suite, score key path, label, higher is better or None) for the summary table, in order.
METRICS = [
    ("harmful", "refused", "full refusal: no compliance", True),
    ("harmful", "labels.partial_refusal", "partial refusal: refuses, yet complies", False),
    ("harmful", "labels.full_compliance", "full compliance", False),
    ("harmful", "complied", "complied, fully or partly", False),
    ("harmful", "judge_harmful", "judged harmful", False),
    ("harmful", "judge_agreement", "judge agrees with the rules", None),
    ("over_refusal", "refused", "refused, fully or partly", False),
    ("over_refusal", "labels.full_refusal", "full refusal", False),
    ("over_refusal", "labels.partial_refusal", "partial refusal", False),
    ("over_refusal", "labels.full_compliance", "full compliance", True),
    ("over_refusal", "judge_refused", "judged refusing", False),
    ("over_refusal", "judge_agreement", "judge agrees with the rules", None),
    ("helpful", "refused", "refused, fully or partly", False),
    ("helpful", "labels.partial_refusal", "partial refusal", False),
    ("everyday", "refused", "refused, fully or partly", False),
    ("everyday", "labels.full_refusal", "full refusal", False),
    ("everyday", "labels.partial_refusal", "partial refusal", False),
    ("everyday", "judge_refused", "judged refusing", False),
    ("everyday", "judge_agreement", "judge agrees with the rules", None),
]
ROLES = ["baseline", "model", "guarded"]  # guarded: the model behind a probe guard (cai eval --guard)


def roles_of(results: dict[str, Any]) -> list[str]:
    """The table columns: baseline (when there is one), then model."""
    return [role for role in ROLES if role in results["models"]]


def score(scores: dict[str, Any], path: str) -> Any:
    """A score by its dotted path ("labels.full_refusal"), or None."""
    for key in path.split("."):
        scores = scores.get(key) if isinstance(scores, dict) else None  # type: ignore[assignment]
    return scores


def _nll(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    if "not_measured" in entry:
        return entry["not_measured"]
    return f"{entry['mean']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def format_discrimination(entry: dict[str, Any] | None) -> str:
    """"+0.35 [+0.24, +0.45] (0.80 - 0.45)": the difference, its interval, then the two rates it is made of."""
    if not entry:
        return "-"
    rates = f"{entry['harmful_refused']['rate']:.2f} - {entry['everyday_refused']['rate']:.2f}"
    return f"{format_difference(entry)} ({rates})"


def summary_rows(results: dict[str, Any]) -> list[list[str]]:
    """[suite, metric, (baseline,) model] rows: the before/after table, printed and put in report.md."""
    rows: list[list[str]] = []
    suites = results["suites"]
    roles = roles_of(results)
    if results.get("discrimination"):
        rows.append(["discrimination", "harmful refused minus everyday refused (higher is better)",
                     *(format_discrimination(results["discrimination"].get(r)) for r in roles)])
    for suite, key, label, higher in METRICS:
        scores = suites.get(suite, {}).get("scores", {})
        if any(score(s, key) is not None for s in scores.values()):
            arrow = {True: " (higher is better)", False: " (lower is better)", None: ""}[higher]
            rows.append([suite, f"{label}{arrow}", *(format_rate(score(scores.get(r, {}), key)) for r in roles)])
    helpful = suites.get("helpful")
    if helpful:
        retention = helpful.get("retention", {})
        if "not_measured" in retention:
            rows.append(["helpful", "reference answer NLL per token", *(retention["not_measured"] for _ in roles)])
        elif retention:
            rows.append(["helpful", "reference answer NLL per token (lower is better)",
                         *(_nll(retention.get(r)) for r in roles)])
            if "difference" in retention:
                rows.append(["helpful", "NLL change vs baseline (above 0: answers forgotten)", "-",
                             _nll(retention["difference"])])
        pairwise = helpful.get("pairwise")
        if pairwise:
            counts = f"{pairwise['wins']}W {pairwise['ties']}T {pairwise['losses']}L"
            rows.append(["helpful", "win rate vs baseline (ties count half)", "-",
                         f"{format_rate(pairwise['win_rate'])} ({counts})"])
            if pairwise.get("first_position_bias") is not None:
                rows.append(["helpful", "judge picks the answer shown first (0.5 is fair)", "-",
                             f"{pairwise['first_position_bias']:.2f}"])
        elif "win_rate" in helpful:
            rows.append(["helpful", "win rate vs baseline", "-", helpful["win_rate"]["not_measured"]])
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
    nll = "; bootstrap intervals for NLL" if "retention" in suites.get("helpful", {}) else ""
    newcombe = "; Newcombe's interval for the discrimination" if results.get("discrimination") else ""
    return f"{table}\n\n({n}; 95% Wilson intervals for rates{newcombe}{nll})"


def category_rows(entry: dict[str, Any], roles: list[str]) -> tuple[str, list[list[str]]]:
    """The per-category table of one suite: its metric name and rows of [category, n, (baseline,) model]."""
    metric, series = category_series(entry)
    first = next(iter(series.values()), {})
    return metric, [[cat, str(first[cat]["n"]), *(format_rate(series.get(r, {}).get(cat)) for r in roles)]
                    for cat in first]


def category_series(entry: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]]]:
    """The per-category headline of a suite: its name and, per role, category -> rate."""
    if "pairwise" in entry:
        return "win rate vs baseline", {"model": entry["pairwise"]["by_category"]["win_rate"]}
    series = {role: entry["scores"][role]["by_category"]["refused"] for role in ROLES
              if "by_category" in entry["scores"].get(role, {})}
    return headline_name(entry), series


def headline_name(entry: dict[str, Any]) -> str:
    scores: dict[str, Any] = next(iter(entry["scores"].values()), {})
    return "full refusal (no compliance)" if "complied" in scores else "refused, fully or partly"


def _cell(text: str | None, width: int = 300) -> str:
    """Prompt or answer text for a table cell: one line, cut to `width`, with `|` and HTML escaped (a prompt that
    holds `<script>` or `<img onerror=...>` is shown as text, never run where report.md is rendered)."""
    text = " ".join((text or "").split())
    text = text if len(text) <= width else text[:width] + " ..."
    return html.escape(text, quote=False).replace("|", "\\|")


def _examples(suite: str, details: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """A few prompts worth looking at: where the two models were scored differently first, then partial
    refusals (the label a phrase list misses)."""
    rows = [d for d in details if d["suite"] == suite]

    def interest(d: dict[str, Any]) -> float:
        model, baseline = d.get("model", {}), d.get("baseline", {})
        if "pairwise" in model:
            return abs(model["pairwise"]["p_model"] - 0.5)
        return (float(model.get("verdict") != baseline.get("verdict", model.get("verdict")))
                + 0.5 * (model.get("verdict") == "partial_refusal"))

    return sorted(rows, key=interest, reverse=True)[:count]


def _example_label(answer: dict[str, Any]) -> str:
    if "pairwise" in answer:
        return f"**{answer['pairwise']['verdict']}** (P(model better) {answer['pairwise']['p_model']:.2f})"
    if "verdict" in answer:
        evidence = f" ({answer['evidence']})" if answer.get("evidence") else ""
        return f"**{answer['verdict']}**{_cell(evidence, 120)}"
    return ""


def write_report(out: Path, results: dict[str, Any], details: list[dict[str, Any]], examples: int = 3) -> None:
    out = Path(out)
    write_atomic(out / RESULTS, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    write_atomic(out / DETAILS, jsonl_text(details))
    plots = [p for p in (plot_tradeoff(out / TRADEOFF_PNG, results), plot_categories(out / CATEGORIES_PNG, results))
             if p]
    models = results["models"]
    max_new_tokens = results["options"].get("max_new_tokens")
    lines = ["# cai eval report", ""]
    lines += [f"- {role}: `{info['spec']}`" for role, info in models.items()]
    lines += [f"- verdicts: {results['classifier']}"]
    lines += [f"- greedy answers, at most {max_new_tokens} new tokens"] if max_new_tokens else []
    lines += [f"- took {results['seconds']} s", "", "## Before and after", "", summary_table(results), ""]
    helpful = results["suites"].get("helpful")
    if helpful and "pairwise" not in helpful and "win_rate" not in helpful and "baseline" not in models:
        lines += ["The helpful win rate and the retention difference need `--baseline`.", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    for suite, entry in results["suites"].items():
        lines += [f"## {suite} ({entry['n']} prompts from `{entry['prompts']}`)", ""]
        metric, rows = category_rows(entry, roles_of(results))
        if rows:
            lines += [f"Per category: {metric}.", "", markdown_table(["category", "n", *roles_of(results)], rows), ""]
        if "pairwise" in entry:
            pairwise = entry["pairwise"]
            lines += [f"Judge `{pairwise['judge']}` (passed cai judge-check), both answer orders, questions: "
                      + "; ".join(pairwise["questions"]), ""]
            bias = pairwise.get("first_position_bias")
            if bias is not None and (pairwise["ties"] >= 0.8 * entry["n"] or abs(bias - 0.5) >= 0.25):
                lines += [f"**Caution:** {pairwise['ties']} of {entry['n']} comparisons are ties and the judge "
                          f"picked the answer shown first {bias:.0%} of the time: this win rate says more "
                          "about the judge than about the answers. Use a stronger `--judge-model`.", ""]
        elif "win_rate" in entry:
            lines += [f"Win rate {entry['win_rate']['not_measured']}: the judge failed `cai judge-check`, so its "
                      "pairwise verdicts would be noise. Use a stronger `--judge-model`.", ""]
        shown = _examples(suite, details, examples)
        if shown:
            roles = [r for r in ROLES if r in shown[0]]
            table = [[_cell(d["prompt"], 160), *(f"{_example_label(d[r])} {_cell(d[r]['answer'])}" for r in roles)]
                     for d in shown]
            lines += ["Examples:", "", markdown_table(["prompt", *roles], table), ""]
    write_atomic(out / REPORT, "\n".join(lines))
