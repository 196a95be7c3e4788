"""The accelerate config a recipe names, read with accelerate's own parser when the recipe loads.

A typo, or a process or machine count that disagrees with the recipe, is reported at `cai validate` with the
recipe's line. What depends on the host (FSDP or DeepSpeed without a GPU, DeepSpeed not installed) is a warning
at `cai validate`, which may run on a laptop, and an error just before `cai train` launches.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from cai_kit.core.config_file import line_of, read_yaml
from cai_kit.core.errors import UsageError
from cai_kit.core.shipped import resolve_yaml

SHARDED = {"FSDP": "FSDP", "DEEPSPEED": "DeepSpeed"}


def _accelerate_config(spec: str) -> tuple[Path, Any]:
    """The config file and accelerate's own reading of it (its parser rejects unknown keys)."""
    from accelerate.commands.config.config_args import load_config_from_file

    path = resolve_yaml(spec, ("accelerate config",))
    try:
        return path, load_config_from_file(str(path))
    except (ValueError, TypeError, OSError) as err:
        raise UsageError(f"{path}: accelerate cannot read it: {str(err).strip().splitlines()[0][:300]}") from None


def config_problems(path: str | Path, data: dict[str, Any], lines: dict) -> list[str]:
    """What disagrees between the recipe and its accelerate config, whatever the host (for `cai validate`)."""
    spec = data.get("accelerate_config")
    if not isinstance(spec, str):
        return []
    where = f"{path}:{line_of(lines, ('accelerate_config',))}: accelerate_config"
    try:
        resolve_yaml(spec, ("accelerate config",))
    except UsageError:
        return []  # a missing file is reported with the recipe's other files
    try:
        config_path, config = _accelerate_config(spec)
    except UsageError as err:
        return [f"{where}: {line}" for line in err.problems]
    problems = []
    processes, count = data.get("processes", 1), data.get("num_machines") or 1
    # cai train passes its own counts (per machine x machines), as alignment-handbook's launch script does; a
    # config written for another count (8 GPUs, and a recipe left at 1 process) is what this catches.
    if isinstance(processes, int) and isinstance(count, int) and config.num_processes not in (None, -1):
        if config.num_processes not in (processes, processes * count):
            problems.append(f"{where}: num_processes {config.num_processes} in {config_path.name} is not the "
                            f"recipe's processes per machine ({processes}); cai train would start {processes} on "
                            "each machine: set processes to match, or edit the file")
    return problems


def host_problems(spec: str | None) -> list[str]:
    """What this host lacks for the accelerate config `spec`: GPUs for FSDP or DeepSpeed, the deepspeed package.
    Warnings at `cai validate`, errors before `cai train` launches."""
    if not spec:
        return []
    path, config = _accelerate_config(spec)
    kind = SHARDED.get(str(getattr(config.distributed_type, "value", config.distributed_type)).upper())
    if kind is None:
        return []
    import torch

    problems = []
    if not torch.cuda.is_available() or config.use_cpu:
        why = " (on a CPU, FSDP fails and FSDP2 quietly runs as plain DDP)" if kind == "FSDP" else ""
        problems.append(f"{kind} ({path.name}) needs CUDA GPUs, and this host has none{why}; leave "
                        "accelerate_config unset for CPU ranks over gloo")
    if kind == "DeepSpeed" and importlib.util.find_spec("deepspeed") is None:
        problems.append(f"DeepSpeed ({path.name}) needs the deepspeed package: pip install deepspeed")
    return problems


def host_warnings(spec: str | None, path: str | Path) -> list[str]:
    """`host_problems` as `file:line: accelerate_config: ...` lines of the recipe file, for `cai validate`."""
    problems = host_problems(spec)
    if not problems:
        return []
    _, lines = read_yaml(Path(path))
    return [f"{path}:{line_of(lines, ('accelerate_config',))}: accelerate_config: {line}" for line in problems]
