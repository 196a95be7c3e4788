"""The dataset card (README.md) of a generate run, and the summary printed when it ends."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

from cai_kit.licences import contributors_markdown, licence_or_unknown
from cai_kit.run_folder import RunFolder


PAIR_TEXT = {
    "revision": "Revision rows (ids without a suffix), written by cai-kit `cai generate`: the model answered each "
    "prompt, critiqued its answer against a principle sampled from the constitution, and revised it "
    "(Bai et al. 2022, SL-CAI); `final` is the revision, `initial` the first answer.",
    "contrast": "Contrast rows (ids ending `:contrast`), written by cai-kit `cai generate --pairs contrast`: "
    "the model answered each prompt twice, steered towards and away from a principle sampled from the constitution "
    "(Yang et al. 2023, RLCD); `final` is the answer steered towards it, `initial` the one steered away. "
    "The steering text is not in the data.",
}


def principle_stats(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per principle: how often it was used, and how often rows that used it were kept or filtered."""
    stats: dict[str, dict[str, int]] = {}
    for row in rows:
        for name in {step["principle"] for step in row["steps"]}:
            entry = stats.setdefault(name, {"used": 0, "kept": 0, "filtered": 0})
            entry["used"] += 1
            entry["kept" if row["status"] == "ok" else "filtered"] += 1
    return dict(sorted(stats.items()))


def contributors(options, rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(role, model, licence) for every model that wrote, critiqued, revised or judged a row of this run."""
    from cai_kit.generate import model_roles

    pairs = dict.fromkeys(
        (role, spec)
        for models in [model_roles(options)] + [row.get("models", {}) for row in rows]
        for role, spec in models.items()
    )
    return [(role, spec, licence_or_unknown(spec, options.model_licences)) for role, spec in pairs]


def write_card(folder: RunFolder, constitution, options, rows: list[dict[str, Any]]) -> None:
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
        *[PAIR_TEXT[mode] for mode in options.pairs],
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
        "| principle | used | kept | filtered |",
        "| --- | --- | --- | --- |",
        *[f"| {name} | {s['used']} | {s['kept']} | {s['filtered']} |" for name, s in principle_stats(rows).items()],
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
