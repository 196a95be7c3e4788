"""The dataset card (README.md) of a generate run, and the summary printed when it ends."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from cai_kit.evaluation.report import markdown_table
from cai_kit.generation.run_folder import RunFolder
from cai_kit.licensing.licence_guard import model_roles
from cai_kit.licensing.licences import contributors_markdown, licence_or_unknown

PAIR_TEXT = {
    "revision": "Revision rows (ids without a suffix), written by cai-kit `cai generate`: the model answered each "
    "prompt, critiqued its answer against a principle sampled from the constitution, and revised it "
    "(Bai et al. 2022, SL-CAI); `final` is the revision, `initial` the first answer.",
    "contrast": "Contrast rows (ids ending `:contrast`), written by cai-kit `cai generate --pairs contrast`: "
    "the model answered each prompt twice, steered towards and away from a principle sampled from the constitution "
    "(Yang et al. 2023, RLCD); `final` is the answer steered towards it, `initial` the one steered away. "
    "The steering text is not in the data.",
    "judge": "Judged rows (ids ending `:judge`), written by cai-kit `cai generate --pairs judge`: the model sampled "
    "several answers per prompt and a judge model compared them in both orders from its log-probs, with a "
    "question from the constitution's `judge` list (Bai et al. 2022, RL-CAI; Lee et al. 2023, RLAIF); "
    "`final` is the preferred answer, `initial` the least preferred, `score` the judge's preference for `final`.",
}


def principle_stats(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per principle: steps that used it, and the rows whose final revision it wrote, kept or filtered.

    `reasons` counts the filtered rows by filter; `score` is the mean judge score of those rows where a
    judge scored them (None otherwise). With one round a row has one step, so used = kept + filtered.
    """
    stats: dict[str, dict[str, Any]] = {}
    for row in rows:
        for step in row["steps"]:
            stats.setdefault(step["principle"], _empty_stats())["used"] += 1
        if not row["steps"]:
            continue
        entry = stats[row["steps"][-1]["principle"]]
        if row["status"] == "ok":
            entry["kept"] += 1
        else:
            entry["filtered"] += 1
            entry["reasons"][row["status"].split(":")[0]] += 1
        if isinstance(row.get("score"), (int, float)):
            entry["scores"].append(row["score"])
    for entry in stats.values():
        scores = entry.pop("scores")
        entry["score"] = sum(scores) / len(scores) if scores else None
    return dict(sorted(stats.items()))


def contributors(options, rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(role, model, licence) for every model that wrote, critiqued, revised or judged a row of this run."""
    pairs = dict.fromkeys(
        (role, spec)
        for models in [model_roles(options)] + [row.get("models", {}) for row in rows]
        for role, spec in models.items()
    )
    return [(role, spec, licence_or_unknown(spec, options.model_licences)) for role, spec in pairs]


def _empty_stats() -> dict[str, Any]:
    return {"used": 0, "kept": 0, "filtered": 0, "reasons": Counter(), "scores": []}


def principle_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the per-principle table; the judge column only when some row has a score."""
    stats = principle_stats(rows)
    scored = any(entry["score"] is not None for entry in stats.values())
    header = ["principle", "used", "kept", "filtered", "filtered by reason"] + (["mean judge score"] if scored else [])
    cells = []
    for name, entry in stats.items():
        reasons = ", ".join(f"{reason} {count}" for reason, count in entry["reasons"].most_common()) or "-"
        row = [name, str(entry["used"]), str(entry["kept"]), str(entry["filtered"]), reasons]
        if scored:
            row.append("-" if entry["score"] is None else f"{entry['score']:.2f}")
        cells.append(row)
    return header, cells


def write_card(
    folder: RunFolder, constitution, options, rows: list[dict[str, Any]], notes: Sequence[str] = ()
) -> None:
    statuses = Counter(row["status"] for row in rows)
    kept = statuses.pop("ok", 0)
    models = contributors(options, rows)
    licence = next((licence for _, spec, licence in models if spec == options.model), "unknown")
    lines = [
        "---",
        "license: other",
        "tags: [cai-kit, constitutional-ai, synthetic]",
        "configs:",
        "  - config_name: sft",
        "    data_files: sft.jsonl",
        "  - config_name: prefs",
        "    data_files: prefs.jsonl",
        "---",
        f"# {constitution.name}: self-critiqued and revised answers",
        "",
        *[PAIR_TEXT[mode] for mode in dict.fromkeys(options.pairs)],
        *[f"\n**Note:** {note}" for note in notes],
        "",
        f"- model: `{options.model}` (licence: {licence})",
        f"- constitution: `{constitution.name}` ({options.constitution}), sha256 `{constitution.sha256}`",
        f"- prompt sources: {', '.join(f'`{p}`' for p in options.prompts)}",
        f"- rounds: {options.rounds}, seed: {options.seed}, temperature: {options.temperature}, "
        f"max new tokens: {options.max_new_tokens}",
        f"- rows: {len(rows)}, kept: {kept}, filtered: {sum(statuses.values())}",
        "",
        "## Filtered rows by reason",
        "",
        "| reason | rows |",
        "| --- | --- |",
        *[f"| {reason} | {count} |" for reason, count in statuses.most_common()],
        "",
        "## Principles",
        "",
        "Which principle text works: `used` counts critique/revision steps; `kept` and `filtered` count the",
        "rows whose final revision the principle wrote.",
        "",
        markdown_table(*principle_rows(rows)),
        "",
        "## Files",
        "",
        "- `generations.jsonl`: every prompt with its whole trace and `status`",
        "- `sft.jsonl`: kept rows, TRL conversational format (`messages`)",
        "- `prefs.jsonl`: kept rows as pairs (`prompt`, `chosen` = `final`, `rejected` = `initial`)",
        "- `manifest.json`: the exact options, versions and seeds",
        "",
        "## Models and licences",
        "",
        "Every model that wrote, critiqued, revised or judged these rows (each row's `models` field says which); "
        "their licences' terms on outputs apply to any use of this data.",
        "",
        *contributors_markdown(models),
        "",
    ]
    folder.write_card("\n".join(lines))


def print_summary(folder: RunFolder, rows: list[dict[str, Any]], seconds: float) -> None:
    statuses = Counter(row["status"] for row in rows)
    print(f"\n{'status':<16}{'rows':>6}", file=sys.stderr)
    for status, count in statuses.most_common():
        print(f"{status[:16]:<16}{count:>6}", file=sys.stderr)
    print(f"{'total':<16}{len(rows):>6}   ({seconds:.0f} s this run)", file=sys.stderr)
    print(f"wrote {folder.path}/{{generations,sft,prefs}}.jsonl, README.md, manifest.json", file=sys.stderr)
