"""What `cai eval` prints and adds to report.md about the safety judge and the public benchmarks.

The before/after table of report.py covers the project's own suites; this module adds, for a run with
`--safety-judge` or a benchmark suite, a second table with the same columns and two report sections: the guard
(its prompt format, model card and licence, what it can tell, the labels it gave) and each benchmark's headline
metric, who decided its verdicts and its per-category rates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai_kit.core.files import write_atomic
from cai_kit.core.stats import format_rate
from cai_kit.evaluation.benchmarks import BENCHMARKS
from cai_kit.evaluation.report import markdown_table

ROLES = ["baseline", "model"]
# (score key, label, higher is better) of the guard's rates on the harmful and the benign suites.
BENIGN_GUARD_METRICS = [("guard_harmful", "judged harmful by the safety judge", False),
                        ("guard_refused", "judged refusing by the safety judge", False)]
GUARD_METRICS = {
    "harmful": [("guard_harmful", "judged harmful by the safety judge", False),
                ("guard_refused", "judged refusing by the safety judge", True)],
    "over_refusal": BENIGN_GUARD_METRICS,
    "everyday": BENIGN_GUARD_METRICS,
}
MAPPING = ("Labels: a guard that tells refusal (Qwen3Guard, WildGuard) gives `full_refusal` or `full_compliance`, "
           "one that does not (Llama Guard 3) `harmful_compliance` or `not_harmful`; no guard tells a partial "
           "refusal. Qwen3Guard's `Controversial` is `undecided` on harm. A reply out of the card's format is "
           "`unparsed` and counts towards no rate.")


def _roles(results: dict[str, Any]) -> list[str]:
    return [role for role in ROLES if role in results["models"]]


def _arrow(higher: bool) -> str:
    return " (higher is better)" if higher else " (lower is better)"


def summary_rows(results: dict[str, Any]) -> list[list[str]]:
    """[suite, metric, (baseline,) model] rows for the benchmark metrics and the guard's rates."""
    rows: list[list[str]] = []
    roles = _roles(results)
    for suite, entry in results["suites"].items():
        scores = entry.get("scores", {})
        if "benchmark" in entry:
            for metric in BENCHMARKS[suite].metrics:
                cells = [format_rate(scores.get(r, {}).get("metrics", {}).get(metric.key)) for r in roles]
                rows.append([suite, metric.label + _arrow(metric.higher_is_better), *cells])
        for key, label, higher in GUARD_METRICS.get(suite, []):
            if any(key in s for s in scores.values()):
                rows.append([suite, label + _arrow(higher), *(format_rate(scores.get(r, {}).get(key)) for r in roles)])
        unparsed = [scores.get(r, {}).get("unparsed", scores.get(r, {}).get("guard_unparsed")) for r in roles]
        if "safety_judge" in results and any(u is not None for u in unparsed):
            rows.append([suite, "safety judge replies unparsed (counted in no rate)",
                         *(f"{u} of {entry['n']}" if u is not None else "-" for u in unparsed)])
    return rows


def summary_text(results: dict[str, Any]) -> str:
    """The table as markdown, with who decided each benchmark's verdicts; '' when there is nothing to show."""
    rows = summary_rows(results)
    if not rows:
        return ""
    notes = [f"{suite}: {axis} by {who}" for suite, entry in results["suites"].items() if "benchmark" in entry
             for axis, who in _judged_by(entry).items()]
    if "safety_judge" in results:
        judge = results["safety_judge"]
        notes.append(f"safety judge: `{judge['spec']}`, {judge['title']} format, licence {judge['licence']}")
    return markdown_table(["suite", "metric", *_roles(results)], rows) + "\n\n" + "\n".join(notes)


def _judged_by(entry: dict[str, Any]) -> dict[str, str]:
    return next((s["judged_by"] for s in entry["scores"].values() if "judged_by" in s), {})


def report_lines(results: dict[str, Any]) -> list[str]:
    """The report.md sections: the safety judge, then the public benchmarks."""
    lines: list[str] = []
    roles = _roles(results)
    judge = results.get("safety_judge")
    if judge:
        lines += ["## Safety judge", "",
                  f"- model: `{judge['spec']}`, prompted in the {judge['title']} format of its model card "
                  f"({judge['card']})",
                  f"- tells: {judge['tells']}",
                  f"- licence: {judge['licence']} ({judge['licence_source']}): {judge['licence_terms']}", "",
                  MAPPING, "", "Labels the safety judge gave:", ""]
        label_rows = [[suite, role, ", ".join(f"{k} {v}" for k, v in counts.items())]
                      for suite, entry in results["suites"].items() for role in roles
                      if (counts := entry["scores"].get(role, {}).get("guard_labels"))]
        lines += [markdown_table(["suite", "role", "labels"], label_rows), ""]
    benchmarks = {suite: entry for suite, entry in results["suites"].items() if "benchmark" in entry}
    if benchmarks:
        lines += ["## Public benchmarks", "", markdown_table(
            ["suite", "metric", *roles], [row for row in summary_rows(results) if row[0] in benchmarks]), ""]
        for suite, entry in benchmarks.items():
            info = entry["benchmark"]
            groups = ", ".join(f"{group} {count}" for group, count in info["groups"].items())
            skipped = f"; {info['skipped']} copyright behaviour(s) left out" if info["skipped"] else ""
            judged = "; ".join(f"{axis} by {who}" for axis, who in _judged_by(entry).items())
            lines += [f"### {suite}: {info['title']} ({info['paper']})", "",
                      f"{entry['n']} prompts from `{entry['prompts']}` ({groups}){skipped}. Verdicts: {judged}.", ""]
            per = [entry["scores"][r]["per_category"] for r in roles if r in entry["scores"]]
            if per:
                bench = BENCHMARKS[suite]
                metric = bench.per_category or bench.metrics[0]
                rows = [[c, str(rate["n"]), *(format_rate(p["rates"].get(c)) for p in per)]
                        for c, rate in per[0]["rates"].items()]
                table = markdown_table(["category", "judged", *roles], rows)
                lines += [f"Per category: {metric.label}.", "", table, ""]
    return lines


def append_report(out: Path, results: dict[str, Any]) -> None:
    """Add the sections to `out`/report.md (written by report.py just before)."""
    lines = report_lines(results)
    if not lines:
        return
    path = Path(out) / "report.md"
    write_atomic(path, path.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")
