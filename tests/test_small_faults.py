"""The smaller faults of a long run: empty files, folders given as files, an empty constitution name, Ctrl-C,
and merging an adapter into a base model that has no safetensors weights.

Every file here is written by the test itself; the model is the tiny random Llama built in code.
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
import torch
from click.testing import CliRunner
from fake_openai_server import FakeServers
from safetensors.torch import load_file

from cai_kit.cli import main

REPO = Path(__file__).resolve().parent.parent
CONSTITUTION = REPO / "constitutions" / "harmless.yaml"


def test_an_empty_file_does_not_validate(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = CliRunner().invoke(main, ["validate", str(empty)])
    assert result.exit_code == 2, result.output
    assert "ok" not in result.output
    assert f"error: {empty}:1: the file is empty" in result.output
    train = CliRunner().invoke(main, ["train", str(empty)])
    assert train.exit_code == 2 and f"error: {empty}:1: (top level): the file is empty" in train.output


def test_a_folder_is_called_a_folder_not_a_missing_file(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path}: is a folder, not a YAML file"


@pytest.mark.parametrize("name", ["", " "])
def test_constitution_new_with_an_empty_name_is_one_line(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["constitution", "new", name])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {name!r}: give the constitution a name, e.g. `cai constitution new kind`"
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_generate_says_the_run_resumes_and_it_does(tmp_path):
    servers = FakeServers(tmp_path)
    try:
        url, _, _ = servers.start("--delay", "0.1")
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"id": f"q{k}", "prompt": f"question {k}"}) + "\n" for k in range(20)))
        out = tmp_path / "out"
        args = [sys.executable, "-m", "cai_kit.cli", "generate", "-c", str(CONSTITUTION), "-p", str(prompts), "-m",
                "m", "--limit", "0", "-o", str(out), "--engine", "openai", "--base-url", url, "--batch-size", "2"]
        with (tmp_path / "cli.log").open("w") as stderr:
            # Ctrl-C as in a terminal: a parent started in the background by a shell ignores SIGINT, and the
            # child would inherit that and never see the signal.
            process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO,
                                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        generations = out / "generations.jsonl"
        deadline = time.time() + 120
        while not (generations.exists() and generations.read_text().count("\n") >= 2):
            assert process.poll() is None and time.time() < deadline, (tmp_path / "cli.log").read_text()[-2000:]
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        text = (tmp_path / "cli.log").read_text()
        assert process.returncode == 130, text[-2000:]
        assert "Aborted!" not in text and "Traceback" not in text
        assert "interrupted (Ctrl-C); the rows finished so far are kept: rerun the same command, with --out" in text
        kept = generations.read_text().count("\n")
        assert 2 <= kept < 20
        rerun = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert f"{kept} rows already done, {20 - kept} to go" in rerun.stderr
        ids = [json.loads(line)["id"] for line in generations.read_text().splitlines()]
        assert sorted(ids) == sorted(f"q{k}" for k in range(20))
    finally:
        servers.stop_all()


def test_ctrl_c_during_train_says_the_run_resumes(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("cai_kit.training.train.run_train", interrupted)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'run'}\ngenerate: [{{constitution: {CONSTITUTION}}}]\n")
    result = CliRunner().invoke(main, ["train", str(recipe)])
    assert result.exit_code == 130, result.output
    assert "Aborted!" not in result.output
    assert "interrupted (Ctrl-C); finished stages, generated rows and complete checkpoints are kept" in result.output


def test_merge_adapter_loads_safetensors_only(tmp_path, tiny_model_path):
    """A base model folder whose weights are a pickled pytorch_model.bin is refused, not unpickled."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cai_kit.training.train import merge_adapter

    adapter = tmp_path / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM")).save_pretrained(adapter)
    merge_adapter(tiny_model_path, adapter, tmp_path / "merged", "float32", False)  # safetensors: merges
    assert (tmp_path / "merged" / "model.safetensors").is_file()

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_path, pickled)
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(OSError, match="model.safetensors"):
        merge_adapter(str(pickled), adapter, tmp_path / "merged-from-bin", "float32", False)
    assert not (tmp_path / "merged-from-bin").exists()
