"""The dataset card (README.md) of a generate run, and the summary printed when it ends."""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from cai_kit.evaluation.report import markdown_table
from cai_kit.generation.filters import FILTERS, describe
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


# A size in a model's name ("SmolLM2-360M-Instruct", "Qwen2.5-0.5B"): the cheap way to tell a small model.
_SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)([mb])(?![a-z])", re.IGNORECASE)
SMALL_MODEL_PARAMETERS = 1e9


def small_model_note(model: str, modes: Iterable[str]) -> str | None:
    """One line for the end of a critique/revision run on the default model or one whose name gives a size under
    1B parameters: what its critiques are worth and which command makes usable data (docs: Getting started,
    what the quickstart's rows are worth). None for other runs and for models of unknown size."""
    if "revision" not in modes:
        return None
    if model == "default":
        name = "the default model (SmolLM2-135M-Instruct)"
    else:
        sizes = [float(n) * (1e6 if unit.lower() == "m" else 1e9) for n, unit in _SIZE.findall(model)]
        if not sizes or sizes[-1] >= SMALL_MODEL_PARAMETERS:
            return None
        name = f"`{model}`, under 1B parameters,"
    return (
        f"{name[0].upper()}{name[1:]} cannot critique its own answers: its critiques are generic and its revisions "
        "of ordinary answers mostly worse than the first answer, filtered or not; `--pairs contrast` makes better "
        "pairs from it, as the shipped recipe does (`cai train zephyr_cai`)."
    )


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
        *[f"\n**Note:** {note}" for note in [*notes, small_model_note(options.model, options.pairs)] if note],
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
        *[f"| {reason.replace('|', chr(92) + '|')} | {count} |" for reason, count in statuses.most_common()],
        "",
        "Filters this run applied, in the order each row is checked (a row's status is the first it fails):",
        "",
        *[f"- `{name}`: {describe(name)}" for name in FILTERS if name in options.filters],
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
    print(f"\n{'rows':>6}  status", file=sys.stderr)  # count first: a status is printed whole, however long
    for status, count in statuses.most_common():
        print(f"{count:>6}  {status}", file=sys.stderr)
    print(f"{len(rows):>6}  total ({seconds:.0f} s this run)", file=sys.stderr)
    print(f"wrote {folder.path}/{{generations,sft,prefs}}.jsonl, README.md, manifest.json", file=sys.stderr)
    models = {row["model"] for row in rows if "model" in row}
    modes = {row.get("pair", "revision") for row in rows}
    for note in filter(None, (small_model_note(model, modes) for model in sorted(models))):
        print(f"cai generate: note: {note}", file=sys.stderr)
