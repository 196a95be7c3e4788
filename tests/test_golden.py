"""Golden run: `cai train recipes/tiny.yaml` (generate -> SFT -> DPO -> eval) on the tiny random model with
a fixed seed, every row of every JSONL file it writes compared with a stored copy.

It pins behaviour across refactors: a change that alters what any stage writes (ids, prompts, answers,
critiques, revisions, the training mix, eval verdicts) fails here. The stored copy,
`tests/data/golden_tiny.json`, was written by this test with `CAI_KIT_UPDATE_GOLDEN=1`.

Float results can differ between CPU kernels (AVX2 against AVX-512, fp32 against bf16, which `auto` picks
where the CPU has it natively), and with them a random model's sampled tokens. The copy lists the CPU kinds
(PyTorch's capability and the native bf16 flag) it was checked on; on those every row is compared whole, on
another the test still compares every file, id, key and prompt, with model-written text blanked.
`CAI_KIT_UPDATE_GOLDEN=1` adds this CPU to the list if its rows are the same, else makes its rows the copy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from cai_kit.core.precision import cpu_summary
from cai_kit.training.recipe import load_recipe
from cai_kit.training.train import run_train

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "data" / "golden_tiny.json"
# Values that name the machine or the moment rather than the behaviour.
VOLATILE = {"fingerprint", "path", "model"}
# Model-written text: compared only on a CPU of the capability the copy was made on.
MODEL_TEXT = {"initial", "final", "critique", "revision", "answer", "content", "verdict", "phrase", "finish_reason"}
MODEL_TEXT |= {"tokens", "status", "score", "pairwise", "judge_yes", "evidence"}


def _scrub(value: Any, out: str, text: bool) -> Any:
    """The value with the run folder's path replaced, volatile keys dropped, and model text blanked unless `text`."""
    if isinstance(value, dict):
        return {
            key: ("<text>" if key in MODEL_TEXT and not text and not isinstance(item, (dict, list)) else
                  _scrub(item, out, text))
            for key, item in value.items()
            if key not in VOLATILE
        }
    if isinstance(value, list):
        return [_scrub(item, out, text) for item in value]
    if isinstance(value, str):
        return value.replace(out, "<out>") if out else value  # the stored copy's paths are scrubbed already
    return value


def _rows(folder: Path, text: bool) -> dict[str, list[Any]]:
    # steps.jsonl holds training metrics and run times: floats of the machine, not rows the stages write.
    # constitution_tests/ (the model card's per-principle tables) answers the constitutions' own tests with
    # the same models as eval/: its rows were added after these files were stored on the CPUs they name, so
    # they are left out here and checked by tests/test_constitution_tests.py instead.
    files = sorted(p for p in folder.rglob("*.jsonl") if "checkpoint" not in str(p) and p.name != "steps.jsonl"
                   and "constitution_tests" not in p.parts)
    return {
        str(path.relative_to(folder)): [
            _scrub(json.loads(line), str(folder), text) for line in path.read_text(encoding="utf-8").splitlines()
        ]
        for path in files
    }


def test_tiny_recipe_writes_the_stored_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    torch.manual_seed(0)
    out = tmp_path / "run"
    run_train(load_recipe(REPO / "recipes" / "tiny.yaml", [f"output_dir={out}"]))
    cpu = cpu_summary()
    stored = json.loads(GOLDEN.read_text(encoding="utf-8"))
    if os.environ.get("CAI_KIT_UPDATE_GOLDEN"):
        rows = _rows(out, True)
        cpus = sorted({*stored["cpus"], cpu}) if rows == stored["files"] else [cpu]
        stored = {"cpus": cpus, "files": rows}
        GOLDEN.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    same_cpu = cpu in stored["cpus"]
    expected = stored["files"] if same_cpu else _scrub(stored["files"], "", False)
    actual = _rows(out, same_cpu)
    assert sorted(actual) == sorted(expected), "the run wrote other JSONL files"
    for name in expected:
        assert len(actual[name]) == len(expected[name]), f"{name}: row count changed"
        for index, (got, want) in enumerate(zip(actual[name], expected[name])):
            assert got == want, f"{name} row {index} changed"
