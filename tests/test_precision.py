"""Training precision follows the hardware: `bf16: auto` (or no bf16) is bf16 on a CUDA GPU with bf16 or a CPU
with avx512_bf16/AMX, fp32 elsewhere; explicit true/false are kept. One check (core.precision) serves training
and the generate engine.

Each branch is forced by faking the check (monkeypatch); the last tests ask this machine, whatever it is.
The /proc/cpuinfo texts below are written here, in its format, with made-up flag sets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from cai_kit.core import precision
from cai_kit.core.errors import UsageError
from cai_kit.engines.transformers import pick_dtype
from cai_kit.training.recipe import load_recipe, stage_precision, trl_config
from cai_kit.training.train import run_train

REPO = Path(__file__).resolve().parent.parent
CPUINFO = """processor\t: {n}
vendor_id\t: AuthenticAMD
model name\t: Made-up CPU
flags\t\t: fpu sse sse2 avx avx2 fma{extra}
bugs\t\t: sysret_ss_attrs

"""


def _cpuinfo(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text("".join(CPUINFO.format(n=n, extra=extra) for n in range(2)))
    return path


@pytest.fixture
def cpu(monkeypatch):
    """Fake a CPU-only host whose native bf16 flag is `cpu.flag` (None: AVX2 only) and capability `cpu.level`."""

    class Fake:
        flag: str | None = None
        level = "AVX2"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_flag", lambda: Fake.flag)
    monkeypatch.setattr(precision, "cpu_capability", lambda: Fake.level)
    return Fake


@pytest.mark.parametrize(("extra", "flag"), [(" avx512f avx512_bf16", "avx512_bf16"),
                                             (" avx512f avx512_bf16 amx_bf16 amx_tile", "amx_bf16"),
                                             ("", None), (" avx512f avx512_vnni", None)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, monkeypatch, extra, flag):
    monkeypatch.setattr(precision, "CPUINFO", _cpuinfo(tmp_path, extra))
    assert precision.cpu_bf16_flag() == flag
    assert precision.cpu_has_bf16() is (flag is not None)


def test_no_cpuinfo_means_no_native_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "missing")  # macOS, Windows: no /proc/cpuinfo
    assert precision.cpu_bf16_flag() is None


def test_a_flag_outside_the_flags_line_does_not_count(tmp_path, monkeypatch):
    path = _cpuinfo(tmp_path, "")
    path.write_text(path.read_text().replace("Made-up CPU", "Made-up CPU amx_bf16 edition"))
    monkeypatch.setattr(precision, "CPUINFO", path)
    assert precision.cpu_bf16_flag() is None


def test_hardware_choice_and_its_reason(cpu, monkeypatch):
    assert str(precision.hardware_precision()) == "fp32 (CPU has no native bf16: AVX2)"
    cpu.flag, cpu.level = "avx512_bf16", "AVX512"  # bf16 matmuls measured ~2x slower than fp32 there
    assert str(precision.hardware_precision()) == "fp32 (CPU has avx512_bf16 but no AMX, where bf16 is slower: AVX512)"
    cpu.flag = "amx_bf16"
    assert str(precision.hardware_precision()) == "bf16 (CPU has amx_bf16: AVX512)"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Made-up GPU")
    supported = {"flag": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: supported["flag"])
    assert str(precision.hardware_precision()) == "bf16 (CUDA GPU: Made-up GPU)"
    supported["flag"] = False
    assert str(precision.hardware_precision()) == "fp32 (CUDA GPU without bf16: Made-up GPU)"


def test_explicit_settings_are_kept_and_say_so(cpu):
    forced = precision.training_precision(True)
    assert str(forced) == "bf16 (bf16: true in the recipe; CPU has no native bf16: AVX2; bf16 is slow here)"
    cpu.flag = "avx512_bf16"
    reason = precision.training_precision(True).reason
    assert reason.endswith("where bf16 is slower: AVX2") and reason.count("slow") == 1, "said once"
    cpu.flag = "amx_bf16"
    off = precision.training_precision(False)
    assert not off.bf16 and str(off).startswith("fp32 (bf16: false in the recipe; CPU has amx_bf16")
    assert "slow" not in precision.training_precision(True).reason
    assert precision.training_precision("auto", fp16=True).name == "fp16"
    assert precision.training_precision(None).bf16  # TRL's "unset"
    for bad in ("fast", 1, "true"):
        with pytest.raises(ValueError, match="expected true, false or auto"):
            precision.training_precision(bad)


RECIPE = """model: tiny-random
output_dir: {out}
data:
  sft: [{{path: {data}}}]
  test_split: 0
sft:
  lora: {{r: 4, alpha: 8, dropout: 0.0}}
  trl: {{max_steps: 1, per_device_train_batch_size: 4, activation_checkpointing: false, disable_tqdm: true,
        save_strategy: 'no', report_to: none{bf16}}}
dpo:
  enabled: false
"""


def _recipe(tmp_path: Path, bf16: str | None) -> Path:
    """A recipe over 8 handwritten chats; `bf16` is the sft stage's value, None leaves the key out."""
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Name a colour, {i}."},
                                                     {"role": "assistant", "content": "Blue."}]}) + "\n"
                            for i in range(8)))
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(out=tmp_path / "run", data=data, bf16="" if bf16 is None else f", bf16: {bf16}"))
    return path


@pytest.mark.parametrize(("bf16", "flag", "expected"), [
    ("auto", "amx_bf16", True), ("auto", "avx512_bf16", False), ("auto", None, False),
    (None, "amx_bf16", True), (None, None, False),  # no key: auto, not TRL's default (true)
    ("true", None, True), ("false", "amx_bf16", False),
])
def test_trl_config_follows_the_setting_and_the_hardware(tmp_path, cpu, bf16, flag, expected):
    cpu.flag = flag
    recipe = load_recipe(_recipe(tmp_path, bf16))
    assert trl_config(recipe, "sft").bf16 is expected
    assert stage_precision(recipe, "sft").bf16 is expected
    assert trl_config(recipe, "dpo").bf16 is (flag == "amx_bf16")  # the dpo section sets no bf16: auto


def test_set_override_and_a_bad_value(tmp_path, cpu):
    path = _recipe(tmp_path, "false")
    cpu.flag = "amx_bf16"
    assert trl_config(load_recipe(path, ["sft.trl.bf16=auto"]), "sft").bf16 is True
    with pytest.raises(UsageError) as caught:
        load_recipe(path, ["sft.trl.bf16=fast"])
    expected = "--set sft.trl.bf16=fast: sft.trl.bf16: expected true, false or auto (got 'fast')"
    assert caught.value.problems == [expected]


class SeenArgs(TrainerCallback):
    def __init__(self):
        self.bf16: bool | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bf16 = args.bf16


@pytest.mark.parametrize(("flag", "compute", "reason"), [("amx_bf16", "bf16", "CPU has amx_bf16: AVX2"),
                                                         (None, "fp32", "CPU has no native bf16: AVX2")])
def test_stage_logs_records_and_cards_its_precision(tmp_path, cpu, capsys, flag, compute, reason):
    cpu.flag = flag
    recipe = load_recipe(_recipe(tmp_path, "auto"))
    seen = SeenArgs()
    final = run_train(recipe, ["sft"], callbacks=[seen])
    assert seen.bf16 is (compute == "bf16")  # what the trainer ran with
    assert f"cai train: sft: precision {compute} ({reason})\n" in capsys.readouterr().err
    record = {"compute": compute, "reason": reason, "weights": "float32"}
    assert json.loads((recipe.out / "sft" / "metrics.json").read_text())["precision"] == record
    assert json.loads((recipe.out / "sft" / ".complete").read_text())["metrics"]["precision"] == record
    card = (final / "README.md").read_text()
    assert "## Training precision" in card and f"| sft | {compute} | {reason} | float32 |" in card
    # bf16 autocast never changes what is stored: the merged model keeps float32 weights
    assert {tensor.dtype for tensor in load_file(final / "model.safetensors").values()} == {torch.float32}


def test_the_engine_uses_the_same_check(cpu):
    assert pick_dtype("auto") == torch.float32
    cpu.flag = "avx512_bf16"
    assert pick_dtype("auto") == torch.float32
    cpu.flag = "amx_bf16"
    assert pick_dtype("auto") == torch.bfloat16
    assert pick_dtype("fp32") == torch.float32  # an explicit dtype is kept


def test_this_machine_resolves_auto_consistently():
    """Whatever this machine is: the shipped CPU recipe's `auto` matches the hardware check, and the check
    matches PyTorch's own CPU feature probe (cpuinfo, a different reader of the same CPUID bits)."""
    recipe = load_recipe(REPO / "recipes" / "zephyr_cai.yaml")
    chosen = precision.hardware_precision()
    assert trl_config(recipe, "sft").bf16 is chosen.bf16 and trl_config(recipe, "dpo").bf16 is chosen.bf16
    if not torch.cuda.is_available():
        assert chosen.bf16 is (precision.cpu_bf16_flag() == "amx_bf16")
        assert chosen.reason.endswith(torch.backends.cpu.get_cpu_capability())
    probe = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(probe):
        assert precision.cpu_has_bf16() is any(check() for check in probe)


def test_tiny_recipe_keeps_fp32_and_gpu_recipe_keeps_bf16(monkeypatch):
    monkeypatch.chdir(REPO)
    assert trl_config(load_recipe("recipes/tiny.yaml"), "sft").bf16 is False
    gpu = load_recipe("recipes/zephyr_cai_mistral7b.yaml")
    assert trl_config(gpu, "sft").bf16 is True and trl_config(gpu, "dpo").bf16 is True


def test_benchmark_header_names_the_cpu():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "matmul_precision.py"), "--size", "32",
                           "--seconds", "0.01"], capture_output=True, text=True, cwd=REPO, check=True)
    header = done.stdout.splitlines()[0]
    assert header.startswith(f"cpu {torch.backends.cpu.get_cpu_capability()}, native bf16 "
                             f"{precision.cpu_bf16_flag() or 'no'}")
    assert "fp32 / bf16 = " in done.stdout


def test_training_benchmark_trains_in_the_precision_asked(tmp_path):
    """`benchmarks/train_throughput.py --bf16 false` (the fp32 side of a precision comparison) says so and trains."""
    env = {**os.environ, "CAI_KIT_CACHE": os.environ.get("CAI_KIT_CACHE", str(tmp_path))}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--model", "tiny-random",
                           "--rows", "8", "--variants", "sft-ours", "--bf16", "false"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "precision fp32 (bf16: false in the recipe; " in done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("sft-ours"))
    assert row.endswith("fp32") and " s " in row
