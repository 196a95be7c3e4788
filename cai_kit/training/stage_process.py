"""A recipe's generate and eval stages on the in-process vllm engine run in a child process of their own.

vllm's `LLM` holds most of the GPU's memory (`gpu_memory_utilization`, 0.9 by default) until its process
ends; a second `LLM`, or the trainer of the next stage, in the same process finds the memory still taken
(vllm's own issues report it not being freed on delete). So, as the training stages already run under
`accelerate launch`, such a stage runs as `python -m cai_kit.training.stage_process generate|eval FILE`,
with its options in FILE (JSON, written beside the stage's output), and the GPU is free when it returns.
Other engines run in this process: their memory is freed with them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError
from cai_kit.core.files import write_atomic
from cai_kit.engines import resolve_engine_name
from cai_kit.training.log import log

ISOLATED_ENGINES = {"vllm"}  # engines whose stages get a process of their own


def needs_own_process(engine: str) -> bool:
    return resolve_engine_name(engine) in ISOLATED_ENGINES


def run_in_own_process(kind: str, options: dict[str, Any], folder: Path) -> None:
    """Run the `kind` stage ("generate" or "eval") with `options` in a child process; stop with one line if it
    fails (the child has printed its own error lines above)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / f".{kind}-options.json"
    write_atomic(spec, json.dumps(options, indent=1, default=str) + "\n")
    log(f"{kind}: the {options.get('engine')} engine runs in a process of its own (its GPU memory is freed after)")
    result = subprocess.run([sys.executable, "-m", "cai_kit.training.stage_process", kind, str(spec)])
    if result.returncode != 0:
        raise UsageError(f"{kind}: its process failed (exit status {result.returncode}); see the lines above, then "
                         "rerun the same command to resume")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the child process; `cai train` starts it."""
    kind, spec = (argv or sys.argv[1:])[:2]
    options = json.loads(Path(spec).read_text(encoding="utf-8"))
    try:
        if kind == "generate":
            from cai_kit.generation.generate import run_generate
            from cai_kit.generation.options import GenerateOptions

            run_generate(GenerateOptions(**options), licences_checked=True)  # the parent checked the recipe
        else:
            from cai_kit.evaluation.evaluate import run_eval
            from cai_kit.evaluation.options import EvalOptions

            run_eval(EvalOptions(**options))
    except UsageError as err:
        for line in err.problems:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
