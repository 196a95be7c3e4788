"""A recipe's generate runs, and the `.complete` marker that every finished stage leaves.

Each generate run is one `cai generate` into `output_dir/generate/<i>-<name>/`. A finished run is
skipped on rerun (with a warning when the recipe's options changed since), and a run weighted 0 in
both SFT and DPO is not generated at all, since nothing of it would be trained on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cai_kit.core.files import write_atomic
from cai_kit.training.log import log
from cai_kit.training.recipe import Recipe
from cai_kit.training.stage_process import needs_own_process, run_in_own_process

MARKER = ".complete"


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def mark_complete(folder: Path, **details: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / MARKER, json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **details},
                                             indent=1, default=str) + "\n")


def generate_stage(recipe: Recipe) -> None:
    from cai_kit.generation.generate import run_generate
    from cai_kit.generation.options import GenerateOptions

    if not recipe.generate:
        log("generate: the recipe has no generate runs; skipped")
    for index, run in enumerate(recipe.generate):
        folder = recipe.generate_dir(index)
        values = run.model_dump(exclude={"weight", "sft_weight"})
        values.update(model=recipe.model, out=str(folder),
                      trust_remote_code=run.trust_remote_code or recipe.trust_remote_code,
                      model_licences=recipe.model_licences, accept_licence_risk=recipe.accept_licence_risk)
        if "seed" not in run.model_fields_set:
            values["seed"] = recipe.seed
        options = GenerateOptions(**values).model_dump(mode="json")
        if is_complete(folder):
            log(f"generate[{index}]: complete, skipped ({folder}){_changed_since(folder, options)}")
            continue
        if run.trains_nothing:
            log(f"generate[{index}]: weight 0 in SFT and DPO, so nothing of it would be trained on; not generated")
            continue
        if needs_own_process(run.engine):  # vllm: its GPU memory is freed when the process ends
            run_in_own_process("generate", options, folder)
        else:
            run_generate(GenerateOptions(**values), licences_checked=True)  # check_recipe covered this run
        mark_complete(folder, options=options)


def _changed_since(folder: Path, options: dict[str, Any]) -> str:
    """A warning when a finished generate run was made with other options than the recipe's now."""
    before = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("options")
    if before is None:
        return ""
    # `out` moves with the folder (a run copied into another output_dir): not a change of what it holds.
    changed = [
        f"{key} {before.get(key)!r} -> {value!r}"
        for key, value in options.items()
        if before.get(key) != value and key != "out"
    ]
    if not changed:
        return ""
    return f"; WARNING: the recipe changed since it ran ({'; '.join(changed)}): delete {folder} to generate it again"
