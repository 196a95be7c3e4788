"""Training stages in several processes, on one machine or several, through `accelerate launch`.

A recipe's `processes` is the number of processes on each machine (one per GPU; CPU ranks talk over gloo);
`num_machines` machines take part. accelerate starts them (torchrun underneath) with the machine's rank
and the address of machine 0, where the ranks meet. On a SLURM allocation every value defaults from SLURM's
variables and `MASTER_ADDR`/`MASTER_PORT`, which `recipes/slurm/train.slurm` exports, so the same recipe
runs on a laptop, on one node and on N nodes. We add no scheduler: SLURM (or any launcher that starts one
`cai train` per machine) places the machines, accelerate connects them.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from cai_kit.core.errors import UsageError
from cai_kit.core.shipped import resolve_yaml
from cai_kit.training.accelerate_config import host_problems
from cai_kit.training.log import log
from cai_kit.training.recipe import Recipe

DEFAULT_PORT = 29500  # torchrun's: machines agree on it without being told


@dataclass(frozen=True)
class Machines:
    """Where this process sits: `count` machines, this one `rank`, meeting at `address:port` (machine 0)."""

    count: int
    rank: int
    address: str
    port: int | None  # None: one machine, any free local port

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def machines(recipe: Recipe, env: Mapping[str, str] = os.environ) -> Machines:
    """The recipe's machine keys, each defaulting from SLURM's (or torchrun's) variables, then to one machine."""
    count = recipe.num_machines or _env_int(env, "SLURM_NNODES", "SLURM_JOB_NUM_NODES") or 1
    rank = recipe.machine_rank
    if rank is None:
        rank = _env_int(env, "SLURM_NODEID", "NODE_RANK") if count > 1 else 0
    address = recipe.main_process_ip or env.get("MASTER_ADDR", "").strip()
    port = recipe.main_process_port or _env_int(env, "MASTER_PORT")
    if count == 1:
        return Machines(1, 0, address or "127.0.0.1", port)
    problems = []
    if rank is None:
        problems.append("machine_rank: not set, and no SLURM_NODEID or NODE_RANK in the environment: "
                        "give each machine its rank (--set machine_rank=N)")
    elif rank >= count:
        problems.append(f"machine_rank: {rank} is not below num_machines ({count})")
    if not address:
        problems.append("main_process_ip: not set, and no MASTER_ADDR in the environment: name machine 0 "
                        "(recipes/slurm/train.slurm exports it)")
    if problems:
        raise UsageError(problems)
    return Machines(count, rank or 0, address, port or DEFAULT_PORT)


def world_size(recipe: Recipe, where: Machines) -> int:
    return recipe.processes * where.count


def launch_command(recipe: Recipe, stage: str, where: Machines, port: int | None = None) -> list[str]:
    """The `accelerate launch` command line that runs `fit` for a stage in every process of this machine."""
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--num_processes", str(world_size(recipe, where)), "--num_machines", str(where.count),
               "--machine_rank", str(where.rank), "--main_process_port", str(where.port or port or _free_port())]
    if where.count > 1:
        command += ["--main_process_ip", where.address]
    if recipe.accelerate_config:
        command += ["--config_file", str(resolve_yaml(recipe.accelerate_config, ("accelerate config",)))]
    else:
        # accelerate reaches torchrun through --multi_gpu; on a host without GPUs the trainer's
        # `use_cpu` turns each process into a CPU rank, and the ranks talk over gloo.
        command += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*command, "-m", "cai_kit.training.train", "--recipe", str(recipe.out / "recipe.yaml"), "--stage", stage]


def launch(recipe: Recipe, stage: str, where: Machines) -> None:
    """Run `fit` for a stage through `accelerate launch`; stop with one line if it fails."""
    host = host_problems(recipe.accelerate_config)
    if host:
        raise UsageError(host)
    command = launch_command(recipe, stage, where)
    machine = f" on machine {where.rank} of {where.count}" if where.count > 1 else ""
    log(f"{stage}: {recipe.processes} processes{machine}: {shlex.join(command)}")
    result = subprocess.run(command)
    if result.returncode != 0:
        raise UsageError(f"{stage}: `accelerate launch` failed (exit status {result.returncode}); see the log above"
                         + ("; rerun `cai train` on every machine to resume" if where.count > 1 else ""))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
