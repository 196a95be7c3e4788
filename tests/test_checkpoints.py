"""A checkpoint that a kill cut short is skipped, and the trainer resumes from the newest complete one.

The slow test kills a real `cai train` process (SIGKILL) at the moment a checkpoint folder appears, once
in SFT and once in DPO, and checks that each rerun says which checkpoint it skipped and why, resumes
from the one before, and that the last rerun finishes. The other tests make incomplete checkpoints by
hand (files left out or cut short) from a real one written by a 2-step SFT run.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cai_kit.training.checkpoints import checkpoint_problem, newest_complete
from cai_kit.training.recipe import load_recipe
from cai_kit.training.train import run_train

REPO = Path(__file__).resolve().parent.parent
STEPS = ["sft.trl.max_steps=24", "sft.trl.save_steps=4", "dpo.trl.max_steps=24", "dpo.trl.save_steps=4"]


def _train_command(out: Path) -> list[str]:
    command = [sys.executable, "-m", "cai_kit.cli", "train", "recipes/tiny.yaml", "--set", f"output_dir={out}"]
    for setting in STEPS:
        command += ["--set", setting]
    return command + ["--stages", "generate,sft,dpo"]


def _kill_when_saving(command: list[str], checkpoints: Path, step: int, log: Path, wait_s: float = 600) -> bool:
    """Start `command`, SIGKILL it the moment checkpoint-<step> appears; return whether that checkpoint was
    still being written (no trainer_state.json yet, the file the trainer writes last)."""
    target, before = checkpoints / f"checkpoint-{step}", checkpoints / f"checkpoint-{step - 4}"
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle, cwd=REPO)
    deadline = time.time() + wait_s
    try:
        while not before.is_dir():  # the slow part (generation, the first steps): poll gently
            assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        spins = 0
        while not target.is_dir():  # the last few steps: spin, so the kill lands inside the save
            spins += 1
            if spins % 10000 == 0:
                assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    return not (target / "trainer_state.json").is_file()


@pytest.mark.slow
def test_kill_during_checkpoint_save_in_sft_and_dpo_then_rerun_finishes(tmp_path):
    out = tmp_path / "run"
    command = _train_command(out)
    # Run 1 is killed while SFT writes checkpoint-8; run 2 resumes SFT and is killed while DPO writes its
    # checkpoint-8; run 3 resumes DPO and finishes.
    for stage in ("sft", "dpo"):
        landed = _kill_when_saving(command, out / stage / "checkpoints", 8, tmp_path / f"{stage}-killed.log")
        assert landed, "the kill should land while checkpoint-8 is being written"
        assert not (out / stage / ".complete").exists()
    final = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    resumed = (tmp_path / "dpo-killed.log").read_text()  # the run that resumed SFT and was killed in DPO
    for stage, log_text in (("sft", resumed), ("dpo", final.stderr)):
        skipped = f"{stage}: skipped {out / stage / 'checkpoints' / 'checkpoint-8'} (incomplete: "
        assert skipped in log_text, log_text[-3000:]
        assert f"{stage}: resuming from {out / stage / 'checkpoints' / 'checkpoint-4'}" in log_text
        assert json.loads((out / stage / "ranks" / "rank-0.json").read_text())["global_step"] == 24
        assert (out / stage / ".complete").is_file()
    assert (out / "model" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A real SFT checkpoint (LoRA adapter, optimizer, scheduler, trainer state) from a 2-step run."""
    root = tmp_path_factory.mktemp("ckpt")
    rows = [
        {"id": f"s{i}", "messages": [{"role": "user", "content": f"hello {i}"},
                                     {"role": "assistant", "content": "Hello, how can I help?"}]}
        for i in range(8)
    ]
    (root / "sft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = root / "recipe.yaml"
    recipe.write_text(f"""model: tiny-random
output_dir: {root / "run"}
data: {{test_split: 0.0, sft: [{{path: {root / "sft.jsonl"}}}]}}
sft:
  lora: {{r: 4, alpha: 8}}
  trl: {{max_steps: 2, save_steps: 2, per_device_train_batch_size: 4, bf16: false, disable_tqdm: true}}
dpo: {{enabled: false}}
""")
    run_train(load_recipe(recipe), ["sft"])
    return root / "run" / "sft" / "checkpoints" / "checkpoint-2"


def _copy(saved: Path, tmp_path: Path, step: int) -> Path:
    folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
    shutil.copytree(saved, folder)
    return folder


def test_a_complete_checkpoint_passes(saved, tmp_path):
    folder = _copy(saved, tmp_path, 2)
    assert checkpoint_problem(folder) is None
    (folder / "cai-kit-saved.json").unlink(missing_ok=True)  # one from before the marker: checked file by file
    assert checkpoint_problem(folder) is None


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("rm trainer_state.json", "no trainer_state.json"),
        ("rm optimizer.pt", "no optimizer.pt"),
        ("rm scheduler.pt", "no scheduler.pt"),
        ("rm adapter_model.safetensors", "no model weights"),
        ("cut trainer_state.json", "trainer_state.json is not valid JSON"),
        ("cut optimizer.pt", "optimizer.pt is cut short"),
        ("cut adapter_model.safetensors", "adapter_model.safetensors is cut short"),
        ("empty adapter_model.safetensors", "adapter_model.safetensors is cut short"),
    ],
)
def test_an_incomplete_checkpoint_says_what_is_missing(saved, tmp_path, damage, expected):
    folder = _copy(saved, tmp_path, 2)
    (folder / "cai-kit-saved.json").unlink()  # a kill mid-save comes before the marker
    action, name = damage.split()
    path = folder / name
    if action == "rm":
        path.unlink()
    elif action == "cut":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    else:
        path.write_bytes(b"")
    assert expected in (checkpoint_problem(folder) or "")


def test_newest_complete_skips_incomplete_ones_and_says_why(saved, tmp_path):
    for step in (2, 4, 6):
        _copy(saved, tmp_path, step)
    (tmp_path / "checkpoints" / "checkpoint-6" / "cai-kit-saved.json").unlink()
    (tmp_path / "checkpoints" / "checkpoint-6" / "optimizer.pt").unlink()
    (tmp_path / "checkpoints" / "checkpoint-10").mkdir()  # a kill right after the folder was made
    said: list[str] = []
    chosen = newest_complete(tmp_path / "checkpoints", said.append)
    assert chosen == tmp_path / "checkpoints" / "checkpoint-4"
    assert said == [
        f"skipped {tmp_path / 'checkpoints' / 'checkpoint-10'} (incomplete: no trainer_state.json)",
        f"skipped {tmp_path / 'checkpoints' / 'checkpoint-6'} (incomplete: no optimizer.pt)",
    ]
    assert newest_complete(tmp_path / "nothing", said.append) is None


def _sharded(tmp_path: Path, kind: str) -> Path:
    """A checkpoint folder in the shape DeepSpeed ZeRO-3 or FSDP leaves (file names as transformers and accelerate
    write them; the tensors are stand-ins), with no cai-kit marker: checked file by file."""
    import torch

    folder = tmp_path / kind / "checkpoint-4"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text('{"global_step": 4}')
    state = {"step": torch.zeros(2)}
    if kind == "deepspeed":
        (folder / "latest").write_text("global_step4")
        (folder / "global_step4").mkdir()
        for rank in (0, 1):
            torch.save(state, folder / "global_step4" / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
            torch.save(state, folder / "global_step4" / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
    else:
        torch.save(state, folder / "pytorch_model_fsdp.bin")
        (folder / "optimizer_0").mkdir()
        (folder / "optimizer_0" / "__0_0.distcp").write_bytes(b"shard")
        (folder / "optimizer_0" / ".metadata").write_bytes(b"written last")
        torch.save(state, folder / "scheduler.pt")
    return folder


@pytest.mark.parametrize(
    "kind, damage, expected",
    [
        ("deepspeed", None, None),
        ("deepspeed", "global_step4/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
         "global_step4/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt is cut short"),
        ("deepspeed", "latest", "no model weights"),  # without `latest` it is read as a plain checkpoint
        ("fsdp", None, None),
        ("fsdp", "optimizer_0/.metadata", "optimizer_0/ has no .metadata (cut short)"),
        ("fsdp", "pytorch_model_fsdp.bin", "pytorch_model_fsdp.bin is cut short"),
        ("fsdp", "scheduler.pt", "no scheduler.pt"),
    ],
)
def test_deepspeed_and_fsdp_checkpoints_are_resumed_from_when_whole(tmp_path, kind, damage, expected):
    folder = _sharded(tmp_path, kind)
    if damage and damage.endswith((".pt", ".bin")) and damage != "scheduler.pt":
        data = (folder / damage).read_bytes()
        (folder / damage).write_bytes(data[: len(data) // 2])  # a kill mid-write
    elif damage:
        (folder / damage).unlink()
    problem = checkpoint_problem(folder)
    assert problem == expected if expected is None else expected in (problem or ""), problem
