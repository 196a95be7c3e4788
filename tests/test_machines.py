"""Training across machines: the launch command for each shipped accelerate config and for N nodes, the
defaults taken from SLURM's variables, the accelerate config read at `cai validate`, and two real machines
(two `cai train` processes, machine 0 and 1, meeting on 127.0.0.1 over gloo)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cai_kit.cli import main
from cai_kit.core.errors import UsageError
from cai_kit.core.shipped import named_dir
from cai_kit.training.accelerate_config import host_problems
from cai_kit.training.launch import DEFAULT_PORT, Machines, launch_command, machines
from cai_kit.training.recipe import load_recipe

SLURM = {"SLURM_NNODES": "4", "SLURM_NODEID": "2", "MASTER_ADDR": "node-001", "MASTER_PORT": "29600"}


def _flag(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_one_machine_by_default_and_slurm_variables_make_four(recipe_path):
    recipe = load_recipe(recipe_path, ["processes=8"])
    assert machines(recipe, env={}) == Machines(1, 0, "127.0.0.1", None)
    assert machines(recipe, env=SLURM) == Machines(4, 2, "node-001", 29600)
    # Recipe keys win over the environment; without MASTER_PORT the machines agree on torchrun's port.
    keyed = load_recipe(recipe_path, ["num_machines=2", "machine_rank=1", "main_process_ip=10.0.0.5"])
    assert machines(keyed, env={"SLURM_NODEID": "0"}) == Machines(2, 1, "10.0.0.5", DEFAULT_PORT)
    command = launch_command(recipe, "sft", machines(recipe, env=SLURM))
    assert [_flag(command, f) for f in ("--num_processes", "--num_machines", "--machine_rank")] == ["32", "4", "2"]
    assert (_flag(command, "--main_process_ip"), _flag(command, "--main_process_port")) == ("node-001", "29600")
    assert command[-4:] == ["--recipe", str(recipe.out / "recipe.yaml"), "--stage", "sft"]


def test_several_machines_without_a_rank_or_an_address_is_one_line_each(recipe_path):
    recipe = load_recipe(recipe_path, ["num_machines=2"])
    with pytest.raises(UsageError) as err:
        machines(recipe, env={})
    assert [line.split(":")[0] for line in err.value.problems] == ["machine_rank", "main_process_ip"]
    with pytest.raises(UsageError, match="machine_rank: 3 is not below num_machines"):
        machines(load_recipe(recipe_path, ["num_machines=2", "machine_rank=3", "main_process_ip=a"]), env={})


@pytest.mark.parametrize("config", sorted(path.stem for path in (named_dir("recipe") / "accelerate").glob("*.yaml")))
def test_each_shipped_accelerate_config_on_one_node_and_on_two(recipe_path, config):
    one = load_recipe(recipe_path, [f"accelerate_config={config}", "processes=8"])
    command = launch_command(one, "dpo", machines(one, env={}), port=12345)
    assert _flag(command, "--config_file").endswith(f"{config}.yaml")
    assert [_flag(command, f) for f in ("--num_processes", "--num_machines", "--main_process_port")] == [
        "8", "1", "12345"]
    assert "--multi_gpu" not in command and "--main_process_ip" not in command
    two = load_recipe(recipe_path, [f"accelerate_config={config}", "processes=8", "num_machines=2"])
    command = launch_command(two, "dpo", machines(two, env={"SLURM_NODEID": "1", "MASTER_ADDR": "head"}))
    assert [_flag(command, f) for f in ("--num_processes", "--num_machines", "--machine_rank")] == ["16", "2", "1"]
    assert _flag(command, "--main_process_ip") == "head"


def test_validate_reads_the_accelerate_config_and_names_the_recipe_line(tmp_path, recipe_path):
    recipe = recipe_path.read_text()
    fsdp = tmp_path / "r_fsdp.yaml"
    fsdp.write_text(recipe + "processes: 8\naccelerate_config: fsdp\n")
    result = CliRunner().invoke(main, ["validate", str(fsdp)])
    assert result.exit_code == 0, result.output
    line = len(recipe.splitlines()) + 2
    assert f"warning: {fsdp}:{line}: accelerate_config: FSDP (fsdp.yaml) needs CUDA GPUs, and this host has none" \
        in result.stderr
    assert host_problems("fsdp") and host_problems(None) == []

    mismatch = tmp_path / "r_mismatch.yaml"
    mismatch.write_text(recipe + "processes: 4\naccelerate_config: deepspeed_zero3\n")
    result = CliRunner().invoke(main, ["validate", str(mismatch)])
    assert result.exit_code == 2
    assert f"error: {mismatch}:{line}: accelerate_config: num_processes 8 in deepspeed_zero3.yaml is not the " \
        "recipe's processes per machine (4); cai train would start 4 on each machine" in result.stderr

    typo = tmp_path / "typo.yaml"
    typo.write_text("distributed_type: MULTI_GPU\nnum_processes: 2\nnum_procesess: 2\n")
    broken = tmp_path / "r_typo.yaml"
    broken.write_text(recipe + f"processes: 2\naccelerate_config: {typo}\n")
    result = CliRunner().invoke(main, ["validate", str(broken)])
    assert result.exit_code == 2
    assert f"{broken}:{line}: accelerate_config: {typo}: accelerate cannot read it" in result.stderr
    assert "num_procesess" in result.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every process under it: torchrun starts its ranks in sessions of their own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for each in tree:
        try:
            os.kill(each, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _machine(recipe: Path, rank: int, port: int, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "cai_kit.cli", "train", str(recipe), "--stages", "sft,dpo",
            "--set", "num_machines=2", "--set", f"machine_rank={rank}", "--set", "main_process_ip=127.0.0.1",
            "--set", f"main_process_port={port}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two machines on two cores
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


@pytest.mark.slow
def test_two_machines_train_one_model_and_resume_after_machine_1_is_killed(recipe_path, tmp_path):
    # SFT long enough to be killed in (200 steps, a checkpoint every 10); a short collective timeout, so that
    # machine 0 stops soon after its peer is gone.
    recipe = tmp_path / "two.yaml"
    recipe.write_text(recipe_path.read_text().replace("max_steps: 4, ", "max_steps: 200, ddp_timeout: 60, ", 1)
                      .replace("save_steps: 2", "save_steps: 10", 1))
    out = load_recipe(recipe).out
    logs = [tmp_path / "machine-0.log", tmp_path / "machine-1.log"]
    started: list[subprocess.Popen] = []
    try:
        port = _free_port()
        first = [_machine(recipe, rank, port, logs[rank]) for rank in (0, 1)]
        started += first
        saved = out / "sft" / "checkpoints" / "checkpoint-10" / "cai-kit-saved.json"
        deadline = time.time() + 300
        while time.time() < deadline and not saved.exists() and first[1].poll() is None:
            time.sleep(0.05)
        assert saved.exists(), logs[1].read_text()[-3000:]
        _kill_tree(first[1].pid)
        first[1].wait()
        assert first[0].wait(timeout=240) == 2, logs[0].read_text()[-3000:]
        assert "rerun `cai train` on every machine to resume" in logs[0].read_text()
        assert not (out / "sft" / ".complete").exists()

        port = _free_port()
        again = [_machine(recipe, rank, port, logs[rank]) for rank in (0, 1)]
        started += again
        for rank, process in enumerate(again):
            assert process.wait(timeout=600) == 0, logs[rank].read_text()[-3000:]
        machine_0, machine_1 = (path.read_text() for path in logs)
        assert "sft: resuming from" in machine_0
        assert "machine 1 of 2: training stages sft, dpo beside machine 0" in machine_1
        for stage, steps in (("sft", 200), ("dpo", 4)):
            records = [json.loads(path.read_text()) for path in sorted((out / stage / "ranks").glob("*.json"))]
            assert [(r["rank"], r["world_size"], r["global_step"]) for r in records] == [(0, 2, steps), (1, 2, steps)]
            assert records[0]["trained_sha256"] == records[1]["trained_sha256"] is not None  # one model on both ranks
        assert (out / "model" / "config.json").is_file()  # machine 0 merged the result; machine 1 wrote no model
    finally:  # a failed run leaves no rank behind
        for process in started:
            _kill_tree(process.pid)


def _fake_bin(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def test_the_slurm_training_script_starts_one_cai_train_per_node_meeting_at_the_first(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_bin(bin_dir, "scontrol", 'echo node-a; echo node-b\n')  # `scontrol show hostnames` of the allocation
    _fake_bin(bin_dir, "srun", f'echo "$MASTER_ADDR:$MASTER_PORT $*" > {tmp_path / "srun.txt"}\n')
    script = Path(__file__).resolve().parent.parent / "recipes" / "slurm" / "train.slurm"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-[a-b]",
           "SLURM_NNODES": "2", "GPUS_PER_NODE": "4"}
    result = subprocess.run(["bash", str(script), "zephyr_cai_mistral7b", "--set", "seed=1"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "srun.txt").read_text().split() == [
        "node-a:29500", "--kill-on-bad-exit=1", "cai", "train", "zephyr_cai_mistral7b", "--set", "processes=4",
        "--set", "seed=1"]


def test_the_vllm_fleet_script_lists_a_server_once_healthy_and_unlists_it_when_it_stops(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A stand-in `vllm serve`: answers /health on its port for 4 s, then stops; srun runs the node's script here.
    server = (
        "import http.server, sys, threading, time\n"
        "port = int(sys.argv[sys.argv.index('--port') + 1])\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers()\n"
        "    def log_message(self, *args): pass\n"
        "s = http.server.HTTPServer(('127.0.0.1', port), H)\n"
        "threading.Thread(target=s.serve_forever, daemon=True).start()\n"
        "time.sleep(4)\n"
    )
    (bin_dir / "fake_vllm.py").write_text(server)
    _fake_bin(bin_dir, "vllm", f'exec {sys.executable} {bin_dir / "fake_vllm.py"} "$@"\n')
    _fake_bin(bin_dir, "srun", 'exec "$@"\n')
    urls = tmp_path / "fleet.txt"
    port = str(_free_port())
    script = Path(__file__).resolve().parent.parent / "recipes" / "slurm" / "vllm_fleet.slurm"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PORT": port, "HEALTH_POLL": "0.2"}
    process = subprocess.Popen(["bash", str(script), "some/model", str(urls)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    listed = ""
    deadline = time.time() + 20
    while time.time() < deadline and not listed:
        listed = urls.read_text() if urls.exists() else ""
        time.sleep(0.1)
    assert listed.split() == [f"http://{socket.gethostname()}:{port}/v1"]
    assert process.wait(timeout=30) == 0, process.stdout.read()
    assert urls.read_text().split() == []  # the stopped server is no longer listed
