"""Training benchmark: our SFT stage against a plain SFTTrainer, our DPO stage's memory against DPO with a
separate reference model. Prints a table and the ratios.

    python benchmarks/train_throughput.py                      # default model, 32 rows, a few minutes on 2 cores
    python benchmarks/train_throughput.py --rows 128 --model PATH
    python benchmarks/train_throughput.py --variants sft-ours,dpo-ours --bf16 false   # then --bf16 true: the precision

Every variant runs in its own subprocess on the same rows (prompts from data/train, answers of CAI
length), one epoch, batch 8, LoRA r16 all-linear, and reports its training time and its own peak
RSS. The variants:

- sft-ours:       `cai_kit.training.train.fit` with the sft section of recipes/zephyr_cai.yaml (`bf16: auto`:
                  bf16 autocast where the CPU has AMX, fp32 elsewhere; `--bf16` sets it for every variant;
                  the header names the CPU and the precision)
- sft-trl:        `trl.SFTTrainer` with a default `SFTConfig` (gradient checkpointing on) and the same LoRA
                  config; only its precision is ours (TRL's default, bf16, crawls on an AVX2-only CPU)
- dpo-ours:       `cai_kit.training.train.fit`, dpo section of recipes/zephyr_cai.yaml (reference = adapter off)
- dpo-ref-copy:   the same LoRA DPO, given a separately loaded reference model
- dpo-trl:        `trl.DPOTrainer` defaults: full fine-tune, TRL loads the reference copy itself

tokens/s counts every token of the chat-templated rows (prompt and answer) once per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ["sft-ours", "sft-trl", "dpo-ours", "dpo-ref-copy", "dpo-trl"]
FILLER = ("Here is what you can do safely. First, check the facts with a trusted source. Then take it one step "
          "at a time, and ask someone qualified if you are unsure. This keeps you and other people out of harm's "
          "way while you get what you need.").split()


def make_data(folder: Path, rows: int, seed: int = 0) -> None:
    """sft.jsonl and prefs.jsonl from the shipped training prompts, with answers of typical CAI length."""
    rng = random.Random(seed)
    prompts = []
    for name in ("red_team", "helpful"):
        for line in (REPO / "data" / "train" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                prompts.append(json.loads(line)["prompt"])
    rng.shuffle(prompts)

    def answer() -> str:
        words = FILLER[: rng.randint(20, len(FILLER))]
        return " ".join(rng.sample(words, len(words)))  # shuffled: chosen and rejected differ, lengths alike

    sft, prefs = [], []
    for index, prompt in enumerate(prompts[:rows]):
        user = {"role": "user", "content": prompt}
        sft.append({"id": str(index), "messages": [user, {"role": "assistant", "content": answer()}]})
        prefs.append({"id": str(index), "prompt": [user], "chosen": [{"role": "assistant", "content": answer()}],
                      "rejected": [{"role": "assistant", "content": answer()}]})
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (("sft.jsonl", sft), ("prefs.jsonl", prefs)):
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in data), encoding="utf-8")


def count_tokens(model: str, folder: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    counts = {}
    for stage, name in (("sft", "sft.jsonl"), ("dpo", "prefs.jsonl")):
        total = 0
        for line in (folder / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            chats = ([row["messages"]] if stage == "sft"
                     else [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]])
            total += sum(len(tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"])
                         for chat in chats)
        counts[stage] = total
    return counts


def _ours(stage: str, model: str, work: Path, bf16: str) -> tuple[float, str]:
    from cai_kit.training.recipe import load_recipe, stage_precision
    from cai_kit.training.train import fit, prepare_data

    data = work / "data"
    overrides = [f"model={model}", f"output_dir={work / 'run'}", "generate=[]", "eval=null", "data.test_split=0",
                 f"data.sft=[{{path: {data / 'sft.jsonl'}}}]", f"data.prefs=[{{path: {data / 'prefs.jsonl'}}}]",
                 "sft.enabled=false" if stage == "dpo" else "dpo.enabled=false"]
    for section in ("sft", "dpo"):
        overrides += [f"{section}.trl.num_train_epochs=1", f"{section}.trl.eval_strategy='no'",
                      f"{section}.trl.save_strategy='no'", f"{section}.trl.disable_tqdm=true",
                      f"{section}.trl.bf16={bf16}"]
    recipe = load_recipe(REPO / "recipes" / "zephyr_cai.yaml", overrides)
    prepare_data(recipe, stage)
    return float(fit(recipe, stage)["train"]["train_runtime"]), stage_precision(recipe, stage).name


def _trl(stage: str, model: str, work: Path, separate_ref: bool, bf16: str) -> tuple[float, str]:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from cai_kit.core.precision import training_precision

    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    # TRL's own default is bf16 whatever the CPU; the same precision as ours keeps the comparison about the rest.
    common = {"output_dir": str(work / "run"), "num_train_epochs": 1, "save_strategy": "no", "report_to": "none",
              "disable_tqdm": True, "use_cpu": not torch.cuda.is_available(),
              "bf16": training_precision(_bool(bf16)).bf16}
    if stage == "sft":
        data = load_dataset("json", data_files=str(work / "data" / "sft.jsonl"), split="train")
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=data, peft_config=lora)
    else:
        data = load_dataset("json", data_files=str(work / "data" / "prefs.jsonl"), split="train")
        args = DPOConfig(**common)
        if separate_ref:  # the LoRA run of dpo-ours, but with the reference as its own model
            ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
            trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, peft_config=lora)
        else:  # TRL's defaults: full fine-tune, and TRL loads the reference copy itself
            trainer = DPOTrainer(model=model, args=args, train_dataset=data)
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started, "bf16" if trainer.args.bf16 else "fp32"


def _bool(bf16: str) -> bool | str:
    return {"true": True, "false": False}.get(bf16, bf16)


def run_variant(variant: str, model: str, work: Path, bf16: str) -> None:
    """Child process: train one variant, print its time and this process's peak RSS as one JSON line."""
    stage = variant.split("-")[0]
    if variant.endswith("ours"):
        seconds, precision = _ours(stage, model, work, bf16)
    else:
        seconds, precision = _trl(stage, model, work, separate_ref=variant == "dpo-ref-copy", bf16=bf16)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    row = {"variant": variant, "train_s": round(seconds, 1), "peak_rss_mb": round(peak_mb), "precision": precision}
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default', 'tiny-random', a folder or a hub id")
    parser.add_argument("--rows", type=int, default=32, help="chats and preference pairs")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--bf16", choices=["auto", "true", "false"], default="auto",
                        help="training precision of every variant (the recipe's trl.bf16)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cai_kit.core.models import resolve_model
    from cai_kit.core.precision import cpu_summary, training_precision

    model = resolve_model(args.model)
    if args.variant:
        run_variant(args.variant, model, Path(args.work), args.bf16)
        return
    with tempfile.TemporaryDirectory(prefix="cai-train-bench-") as tmp:
        work = Path(tmp)
        make_data(work / "data", args.rows)
        tokens = count_tokens(model, work / "data")
        print(f"model {args.model}, {args.rows} rows, {tokens['sft']} SFT tokens, {tokens['dpo']} DPO tokens, "
              f"{os.cpu_count()} CPUs ({cpu_summary()}), precision {training_precision(_bool(args.bf16))}, "
              f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
        results = {}
        for variant in args.variants.split(","):
            command = [sys.executable, __file__, "--variant", variant, "--model", model, "--work", str(work / variant),
                       "--bf16", args.bf16]
            (work / variant).mkdir()
            (work / variant / "data").symlink_to(work / "data")
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode or not lines:
                print(f"{variant}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
                continue
            result = json.loads(lines[-1])
            result["tokens_s"] = round(tokens[variant.split("-")[0]] / result["train_s"])
            results[variant] = result
            print(f"{variant:<14} {result['train_s']:>8.1f} s {result['tokens_s']:>8} tokens/s "
                  f"{result['peak_rss_mb']:>8} MB peak RSS  {result['precision']}", flush=True)
    if {"sft-ours", "sft-trl"} <= results.keys():
        ratio = results["sft-ours"]["tokens_s"] / results["sft-trl"]["tokens_s"]
        print(f"SFT tokens/s, ours / plain SFTTrainer: {ratio:.2f}x")
    for other in ("dpo-ref-copy", "dpo-trl"):
        if {"dpo-ours", other} <= results.keys():
            ratio = results["dpo-ours"]["peak_rss_mb"] / results[other]["peak_rss_mb"]
            print(f"DPO peak RSS, ours / {other}: {ratio:.2f}x (target <= 0.7x)")


if __name__ == "__main__":
    main()
