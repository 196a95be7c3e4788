"""The model card (README.md) of a trained model folder: where the model came from and how it did.

It names the base model and its licence, every constitution with its sha256 (from each generate
run's manifest.json), the data counts of each stage, the recipe as run, the final metrics and the
precision each stage trained in (and why: the machine decides under `bf16: auto`), so
a reader can tell what the model was trained to do and repeat it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai_kit.core.files import write_atomic
from cai_kit.training.recipe import Recipe

# How each pair mode made the data, for the card's first paragraph.
PAIR_MODES = {
    "revision": "critiqued and revised its own answers (revision pairs: the revision over the first answer)",
    "contrast": "answered each prompt steered towards a principle and away from it (contrast pairs)",
    "judge": "judged pairs of its own answers (judge pairs)",
}
TESTS_DIR = "constitution_tests"  # in output_dir: one `cai test` report folder per constitution with tests
SHOWN_METRICS = ["eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "train_loss", "train_runtime"]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _eval_summary(results: dict[str, Any]) -> str:
    try:
        from cai_kit.evaluation.report import summary_table

        return summary_table(results)
    except (ImportError, KeyError, TypeError):
        return "(see the eval report)"


def principle_tests(recipe: Recipe, model: Path) -> str:
    """The per-principle tables of `cai test` (the recipe's constitutions' own tests) on the trained model against
    the base model, on the eval section's engine; "" when no constitution has tests. Answers are cached in
    output_dir/constitution_tests, so a rerun only scores."""
    from cai_kit.evaluation.constitution_tests import tests_section
    from cai_kit.evaluation.options import EvalOptions

    if recipe.eval is None or not recipe.generate:
        return ""
    options = EvalOptions(**recipe.eval.model_dump(exclude_unset=True), model=str(model), baseline=recipe.base_model)
    return tests_section([run.constitution for run in recipe.generate], options, recipe.out / TESTS_DIR)


def write_model_card(recipe: Recipe, folder: Path, eval_results: dict[str, Any] | None = None) -> Path:
    from cai_kit.core.models import DEFAULT_MODEL_NAME
    from cai_kit.licensing.licence_guard import recipe_producers
    from cai_kit.licensing.licences import contributors_markdown, licence_or_unknown

    base = DEFAULT_MODEL_NAME if recipe.base_model == "default" else recipe.base_model
    licence = licence_or_unknown(recipe.base_model, recipe.model_licences)
    # A later round trains the previous round's model again, on data that model wrote (`rounds: N`).
    started = (f" in round {recipe.round_index} of {recipe.rounds}, starting from round {recipe.round_index - 1}'s "
               f"model (`{recipe.model}`)" if recipe.round_index > 1 else "")
    producers, unrecorded = recipe_producers(recipe)
    out = recipe.out
    manifests = [_read_json(recipe.generate_dir(k) / "manifest.json") or {} for k in range(len(recipe.generate))]
    # The modes each run made: the manifest's (a judge that failed its check was swapped for its fallback).
    modes = [manifest.get("options", {}).get("pairs", run.pairs) for manifest, run in zip(manifests, recipe.generate)]
    made = [PAIR_MODES.get(mode, f"{mode} pairs") for mode in dict.fromkeys(m for run in modes for m in run)]
    how = (f"wrote its own training data against the constitutions below: it {'; it '.join(made)}. It was "
           "fine-tuned on the chosen answers (SFT), then trained with DPO on the pairs" if made
           else "was fine-tuned on the data files below (SFT), then trained with DPO on their pairs")
    lines = ["---", f"license: {licence}", f"base_model: {base}", "library_name: transformers",
             "tags: [cai-kit, constitutional-ai, dpo, trl]", "---", "",
             f"# {out.name}: {base} aligned to its own constitution", "",
             f"Trained by cai-kit (`cai train`) from **{base}** (licence: {licence}){started}. "
             f"The model {how}. The models below wrote, critiqued, revised or judged its training data.", "",
             "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             f"model = AutoModelForCausalLM.from_pretrained({str(folder)!r})",
             f"tokenizer = AutoTokenizer.from_pretrained({str(folder)!r})", "```", "",
             "## Constitutions", "", "| run | constitution | sha256 | prompts | pairs |",
             "| --- | --- | --- | --- | --- |"]
    for index, (run, manifest) in enumerate(zip(recipe.generate, manifests)):
        sources = ", ".join(map(str, manifest.get("prompt_sources", run.prompts)))
        name = manifest.get("constitution", Path(run.constitution).stem)
        sha256 = manifest.get("constitution_sha256", "not generated")
        pairs = ", ".join(modes[index])
        lines.append(f"| {index} | {name} (`{run.constitution}`) | `{sha256}` | {sources} | {pairs} |")
    if not recipe.generate:
        lines.append("| - | none: trained on data files only | | | |")
    lines += ["", "## Models and licences", "", *contributors_markdown([("trained base model", recipe.model, licence),
                                                                        *producers])]
    lines += [f"- data file `{path}` has no cai-kit manifest: the models that wrote it are not recorded"
              for path in unrecorded]
    lines += _training_sections(out)
    if eval_results:
        lines += ["", "## Evaluation against the base model", "", _eval_summary(eval_results), "",
                  f"The full report: `{out / 'eval' / 'report.md'}`."]
        tests = principle_tests(recipe, folder)
        if tests:
            lines += ["", "## The constitutions' own tests, per principle", "",
                      "`cai test` on this model, the base model as baseline: tests passed out of each principle's "
                      f"tests (reports in `{out / TESTS_DIR}`).", "", tests]
    if (folder / "training_curves.png").is_file():
        lines += ["", "## Training curves", "", "![training curves](training_curves.png)",
                  "", "Values: `training_curves.json`."]
    recipe_text = (out / "recipe.yaml").read_text(encoding="utf-8") if (out / "recipe.yaml").is_file() else ""
    lines += ["", "## Recipe", "", "```yaml", recipe_text.rstrip(), "```", "",
              "## Limitations", "",
              "A small model trained on its own critiques learns what its constitution rewards, including "
              "its blind spots: over-trained CAI models turn evasive. Read the eval's over-refusal figures "
              "next to the harm figures before using it.", ""]
    path = folder / "README.md"
    write_atomic(path, "\n".join(lines))
    return path


def _training_sections(out: Path) -> list[str]:
    """The card's data, metrics and precision sections, from what each stage wrote."""
    lines: list[str] = []
    lines += ["", "## Data", "", "| stage | source | rows | weight | train | test |",
              "| --- | --- | --- | --- | --- | --- |"]
    for stage in ("sft", "dpo"):
        for count in _read_json(out / stage / "data" / "counts.json") or []:
            lines.append(f"| {stage} | {count['source']} | {count['rows']} | {count['weight']:g} | {count['train']} "
                         f"| {count['test']} |")
    lines += ["", "## Metrics", "", "| stage | metric | value |", "| --- | --- | --- |"]
    precision = []
    for stage in ("sft", "dpo"):
        metrics = _read_json(out / stage / "metrics.json") or {}
        merged = {**metrics.get("train", {}), **metrics.get("eval", {})}
        lines += [f"| {stage} | {key} | {_number(merged[key])} |" for key in SHOWN_METRICS if key in merged]
        if "precision" in metrics:
            chosen = metrics["precision"]
            precision.append(f"| {stage} | {chosen['compute']} | {chosen['reason']} | {chosen['weights']} |")
    if precision:
        lines += ["", "## Training precision", "",
                  "Each stage's `trl.bf16` decides: true, false, or auto (bf16 on a GPU with bf16 or a CPU with AMX, "
                  "else fp32). bf16 is autocast: the weights keep their dtype, and this model is saved in it.", "",
                  "| stage | compute | why | weights |", "| --- | --- | --- | --- |", *precision]
    return lines
