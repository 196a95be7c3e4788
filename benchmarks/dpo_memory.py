"""DPO memory benchmark: the DPO stage of `cai train` with LoRA, and as a full fine-tune with its reference as a
frozen copy or as log-probs computed before training. Prints each one's time and peak RSS, and the ratios to LoRA.

    python benchmarks/dpo_memory.py                                   # default model, 32 pairs, 1 epoch
    python benchmarks/dpo_memory.py --prefs runs/x/generate/0-harmless/prefs.jsonl --pairs 64 --model PATH

Each variant runs in its own subprocess on the same first N pairs (of --prefs, or made like
train_throughput.py's: prompts from data/train, answers of CAI length), with the dpo section of
recipes/zephyr_cai.yaml (one epoch, no held-out split, no checkpoints), and reports its own peak RSS,
the stage's time (loading the model and reference, precomputing, training, saving) and the trainer's:

- lora:              LoRA r16; the reference is the starting model with the adapter off (the default)
- full-ref-copy:     `dpo.full_finetune: true`; TRL loads a frozen copy of the starting model as reference
- full-precomputed:  `dpo.full_finetune: true` and `dpo.trl.precompute_ref_log_probs: true`; the reference
                     log-probs of every pair are computed by the starting model before its first step
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {
    "lora": [],
    "full-ref-copy": ["dpo.full_finetune=true"],
    "full-precomputed": ["dpo.full_finetune=true", "dpo.trl.precompute_ref_log_probs=true"],
}


def take_pairs(source: Path | None, count: int, target: Path) -> int:
    """Write the first `count` pairs of `source` (or made ones) to `target`; return how many there are."""
    if source is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from train_throughput import make_data

        make_data(target.parent / "made", count)
        source = target.parent / "made" / "prefs.jsonl"
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()][:count]
    target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def run_variant(variant: str, model: str, prefs: Path, work: Path) -> dict[str, float]:
    """Child process: the DPO stage of `cai train` for one variant; its times and this process's peak RSS."""
    os.environ["HF_DATASETS_CACHE"] = str(work / "datasets")  # precomputed log-probs are cached: never reuse them
    from cai_kit.training.recipe import load_recipe
    from cai_kit.training.train import fit, prepare_data

    overrides = [f"model={model}", f"output_dir={work / 'run'}", "generate=[]", "eval=null", "data.test_split=0",
                 f"data.prefs=[{{path: {prefs}}}]", "sft.enabled=false", "dpo.trl.num_train_epochs=1",
                 "dpo.trl.eval_strategy='no'", "dpo.trl.save_strategy='no'", "dpo.trl.disable_tqdm=true",
                 *VARIANTS[variant]]
    recipe = load_recipe(REPO / "recipes" / "zephyr_cai.yaml", overrides)
    prepare_data(recipe, "dpo")
    started = time.perf_counter()
    metrics = fit(recipe, "dpo")
    return {"stage_s": round(time.perf_counter() - started, 1), "train_s": round(metrics["train"]["train_runtime"], 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default', 'tiny-random', a folder or a hub id")
    parser.add_argument("--prefs", type=Path, help="a prefs.jsonl of `cai generate` [default: made pairs]")
    parser.add_argument("--pairs", type=int, default=32, help="how many pairs (the first N)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cai_kit.core.models import resolve_model
    from cai_kit.core.precision import cpu_summary

    model = resolve_model(args.model)
    if args.variant:
        print(json.dumps(run_variant(args.variant, model, args.work / "prefs.jsonl", args.work)), flush=True)
        return
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cai-dpo-bench-") as tmp:
        pairs = take_pairs(args.prefs, args.pairs, Path(tmp) / "prefs.jsonl")
        print(f"model {args.model}, {pairs} pairs, {os.cpu_count()} CPUs ({cpu_summary()}), OMP_NUM_THREADS "
              f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
        for variant in args.variants.split(","):
            work = Path(tmp) / variant
            work.mkdir()
            (work / "prefs.jsonl").symlink_to(Path(tmp) / "prefs.jsonl")
            command = [sys.executable, __file__, "--variant", variant, "--model", model, "--work", str(work)]
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode or not lines:
                print(f"{variant}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
                continue
            results[variant] = json.loads(lines[-1])
            print(f"{variant:<17} {results[variant]['stage_s']:>8.1f} s stage {results[variant]['train_s']:>8.1f} s "
                  f"training {results[variant]['peak_rss_mb']:>8} MB peak RSS", flush=True)
    for variant in [name for name in results if name != "lora" and "lora" in results]:
        ratios = {key: results[variant][key] / results["lora"][key] for key in ("stage_s", "train_s", "peak_rss_mb")}
        print(f"{variant} / lora: stage time {ratios['stage_s']:.2f}x, training time {ratios['train_s']:.2f}x, "
              f"peak RSS {ratios['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
