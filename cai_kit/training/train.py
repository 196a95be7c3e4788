"""`cai train`: generate, distilled SFT, DPO, eval, in order, each stage in its own folder.

The Zephyr recipe (Tunstall et al. 2023) with the model as its own teacher: SFT on its revised
answers, then DPO (Rafailov et al. 2023) on revision-over-first-answer pairs (Bai et al. 2022).
LoRA by default, so the DPO reference is the same weights with the adapter switched off and only
one copy of the model sits in memory. A finished stage leaves a `.complete` marker and is skipped
on rerun; an interrupted trainer resumes from its newest complete `checkpoint-*` (training/checkpoints.py).

    output_dir/recipe.yaml            the recipe as run (with --set overrides)
    output_dir/generate/<i>-<name>/   one `cai generate` folder per run
    output_dir/sft/                   data/ (train, test, counts), checkpoints/, adapter/, model/ (merged), steps.jsonl
    output_dir/dpo/                   the same, starting from sft/model, and behaviour.png (reward accuracy, margin)
    output_dir/model/                 the result: a plain HF folder with a model card and training curves
    output_dir/eval/                  the eval report of the result

With more than one process (`processes` per machine x `num_machines`) the training stages run under
`accelerate launch` (training/launch.py), each process running
`python -m cai_kit.training.train --recipe output_dir/recipe.yaml --stage sft|dpo` (CPU: DDP over gloo).
On several machines, one `cai train` per machine shares output_dir: machine 0 generates, mixes the data,
merges the model and evaluates; the others wait for each stage's data, train their ranks, and wait for
the stage's `.complete` marker, so a rerun of every machine resumes wherever the run stopped.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError, disk_errors_in
from cai_kit.core.files import write_atomic, write_jsonl
from cai_kit.core.run_lock import LOCK_FILE, run_lock
from cai_kit.training.callbacks import RankRecord, TrimMemory
from cai_kit.training.checkpoints import SaveMarker, newest_complete
from cai_kit.training.curves import BEHAVIOUR_PNG, write_behaviour, write_curves
from cai_kit.training.data_mix import Source, describe, mix
from cai_kit.training.generate_runs import MARKER, generate_stage, is_complete, mark_complete
from cai_kit.training.launch import Machines, launch, machines, world_size
from cai_kit.training.log import log
from cai_kit.training.recipe import STAGES, Recipe, dump_recipe, load_recipe, stage_precision, trl_config
from cai_kit.training.rounds import check_round_source, write_rounds_table
from cai_kit.training.stage_process import needs_own_process, run_in_own_process
from cai_kit.training.steps import STEPS_FILE, StepLog, read_steps

LOGGED = ("train_loss", "eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "train_runtime")


def run_train(recipe: Recipe, stages: list[str] | None = None, callbacks: list[Any] | None = None) -> Path:
    """Run the recipe's stages (or `stages`) in order, `rounds` times; return the final model folder.

    Round 1 writes to output_dir; round r > 1 regenerates with round r-1's model and trains it again in
    output_dir/round-<r> (Self-Rewarding and SPIN report most of their gain in the first 2-3 rounds).
    A finished round's stages are skipped on rerun, like any finished stage.
    """
    where = machines(recipe)
    # One `cai train` per output folder and machine: machines > 0 share machine 0's folder, with locks of their own.
    lock = LOCK_FILE if where.is_main else f".cai-kit.machine-{where.rank}.lock"
    with run_lock(recipe.out, "output_dir (or --set output_dir=...)", name=lock):
        return _train_rounds(recipe, stages, callbacks)


def _train_rounds(recipe: Recipe, stages: list[str] | None, callbacks: list[Any] | None) -> Path:
    if recipe.rounds > 1:
        log(f"round 1 of {recipe.rounds}: training {recipe.model}; each later round trains the one before it again")
    final = run_round(recipe, stages, callbacks)
    rounds = [(1, recipe.out)]
    main = machines(recipe).is_main
    for index in range(2, recipe.rounds + 1):
        if main and not (final / "config.json").is_file():
            raise UsageError(f"rounds: round {index} starts from round {index - 1}'s model, and it has none yet")
        later = recipe.for_round(index, str(final))
        changes = recipe.round_changes(index)
        log(f"round {index} of {recipe.rounds}: generating with {final}"
            + (f"; round_overrides: {', '.join(changes)}" if changes else ""))
        if main:
            check_round_source(later.out, final)
        final = run_round(later, stages, callbacks)
        rounds.append((index, later.out))
    if recipe.rounds > 1:
        write_rounds_table(recipe.out, rounds)
    return final


def run_round(recipe: Recipe, stages: list[str] | None = None, callbacks: list[Any] | None = None) -> Path:
    """One pass of the recipe's stages (or `stages`); return the final model folder (or output_dir)."""
    chosen = [stage for stage in STAGES if stage in (stages or recipe.stages)]
    where = machines(recipe)
    if not where.is_main:
        return _train_beside_machine_0(recipe, [stage for stage in chosen if stage in ("sft", "dpo")], where)
    if {"generate", "sft", "dpo"} & set(chosen):
        from cai_kit.licensing.licence_guard import check_recipe

        check_recipe(recipe)  # before any work: a forbidden licence combination stops here
    recipe.out.mkdir(parents=True, exist_ok=True)
    write_atomic(recipe.out / "recipe.yaml", dump_recipe(recipe))
    log(f"stages {', '.join(chosen)} -> {recipe.out}")
    if "generate" in chosen:
        generate_stage(recipe)
    for stage in ("sft", "dpo"):
        if stage in chosen and getattr(recipe, stage).enabled:
            train_stage(recipe, stage, callbacks)
    final = final_model(recipe)
    if final is None:
        log("no trained model yet (run the sft or dpo stage)" + ("; eval skipped" if "eval" in chosen else ""))
        return recipe.out
    results = eval_stage(recipe, final) if "eval" in chosen else None
    from cai_kit.training.model_card import write_model_card

    write_model_card(recipe, final, results)
    log(f"model: {final}")
    return final


def _train_beside_machine_0(recipe: Recipe, stages: list[str], where: Machines) -> Path:
    """Machine `where.rank` > 0: train its ranks of each stage machine 0 trains; the rest is machine 0's work."""
    log(f"machine {where.rank} of {where.count}: training stages {', '.join(stages) or 'none'} beside machine 0 "
        f"({where.address}:{where.port}); generate, data mixing and eval run there")
    for stage in stages:
        if getattr(recipe, stage).enabled:
            train_stage(recipe, stage)
    return recipe.out / "model"


def wait_for(path: Path, what: str, every: float = 60.0) -> None:
    """Block until `path` exists (written by machine 0 on the shared output folder), saying so now and then."""
    started = last = time.monotonic()
    while not path.exists():
        if time.monotonic() - last >= every:
            log(f"still waiting for machine 0 ({what}, {time.monotonic() - started:.0f} s): {path}")
            last = time.monotonic()
        time.sleep(1.0)


def train_stage(recipe: Recipe, stage: str, callbacks: list[Any] | None = None) -> None:
    folder = recipe.out / stage
    if is_complete(folder):
        log(f"{stage}: complete, skipped (delete {folder} to train it again)")
        return
    log(f"{stage}: precision {stage_precision(recipe, stage)}")
    where = machines(recipe)
    with disk_errors_in(folder):  # a full disk while saving data or a checkpoint: one line naming the folder
        if where.is_main:
            prepare_data(recipe, stage)
        else:
            log(f"{stage}: waiting for machine 0 to mix the data")
            wait_for(folder / "data" / "counts.json", f"{stage}: the data")
        if world_size(recipe, where) > 1:
            launch(recipe, stage, where)
        else:
            fit(recipe, stage, callbacks)
    if not where.is_main:
        wait_for(folder / MARKER, f"{stage}: merging and saving the model")
    if not is_complete(folder):
        raise UsageError(f"{stage}: training ended without a model in {folder / 'model'}; see the log above")


def prepare_data(recipe: Recipe, stage: str) -> list[dict[str, Any]]:
    """Mix the stage's sources into data/train.jsonl and data/test.jsonl, once (a resumed run reuses them)."""
    data = recipe.out / stage / "data"
    if (data / "counts.json").is_file():
        counts = json.loads((data / "counts.json").read_text(encoding="utf-8"))
        log(describe(stage, counts) + " (mixed earlier)")
        return counts
    name = "sft.jsonl" if stage == "sft" else "prefs.jsonl"
    sources = []
    for index, run in enumerate(recipe.generate):
        path = recipe.generate_dir(index) / name
        if run.trains_nothing and not path.is_file():  # weighted 0 in both stages: never generated
            continue
        if not path.is_file():
            raise UsageError(f"{stage}: generate[{index}] has no {path}; run the generate stage first "
                             "(cai train RECIPE --stages generate)")
        weight = run.sft_weight if stage == "sft" and run.sft_weight is not None else run.weight
        sources.append(Source(f"generate[{index}] {Path(run.constitution).stem}", path, weight))
    for item in recipe.data.sft if stage == "sft" else recipe.data.prefs:
        sources.append(Source(Path(item.path).name, Path(item.path), item.weight))
    if not sources:
        raise UsageError(f"{stage}: no data: add a generate run or data.{'sft' if stage == 'sft' else 'prefs'} files")
    min_score = recipe.data.min_score if stage == "dpo" else 0.0
    soft = recipe.data.soft_labels and stage == "dpo"
    train, test, counts = mix(sources, stage, recipe.data.test_split, recipe.seed, min_score, soft)
    if not train:
        raise UsageError(f"{stage}: no training rows in {', '.join(str(s.path) for s in sources)}")
    write_jsonl(data / "train.jsonl", train)
    write_jsonl(data / "test.jsonl", test)
    write_atomic(data / "counts.json", json.dumps(counts, indent=1) + "\n")  # last: it marks the data as mixed
    log(describe(stage, counts))
    return counts


def input_model(recipe: Recipe, stage: str) -> str:
    """The folder a stage starts from: the base model for SFT, the merged SFT model for DPO."""
    from cai_kit.core.models import resolve_model

    if stage == "dpo" and recipe.sft.enabled:
        sft = recipe.out / "sft"
        if not is_complete(sft):
            raise UsageError(f"dpo starts from the SFT model, and {sft / 'model'} is not trained yet; "
                             "run the sft stage first (or set sft.enabled: false to start from the base model)")
        return str(sft / "model")
    return resolve_model(recipe.model)


def fit(recipe: Recipe, stage: str, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train one stage in this process (one rank of a multi-process run, or the only one)."""
    import trl
    from accelerate import PartialState
    from datasets import load_dataset
    from peft import LoraConfig

    section = getattr(recipe, stage)
    folder = recipe.out / stage
    args = trl_config(recipe, stage)
    precision = precision_record(recipe, stage, args)
    base = input_model(recipe, stage)
    datasets = {split: load_dataset("json", data_files=str(folder / "data" / f"{split}.jsonl"), split="train")
                for split in ("train", "test") if (folder / "data" / f"{split}.jsonl").stat().st_size}
    peft_config = None if section.full_finetune else LoraConfig(
        r=section.lora.r, lora_alpha=section.lora.alpha, lora_dropout=section.lora.dropout,
        target_modules=section.lora.target_modules, task_type="CAUSAL_LM")
    trainer_class = trl.SFTTrainer if stage == "sft" else trl.DPOTrainer
    # A model path (not an instance) lets TRL load it with `trl.model_init_kwargs` (dtype, attention).
    # With a peft_config and no ref_model, DPOTrainer computes the reference log-probs with the adapter
    # disabled: the reference is the starting model, and no second copy is loaded.
    trainer = trainer_class(model=base, args=args, train_dataset=datasets["train"],
                            eval_dataset=datasets.get("test"), peft_config=peft_config,
                            callbacks=[RankRecord(folder / "ranks", stage), TrimMemory(), SaveMarker(),
                                       StepLog(folder / STEPS_FILE), *(callbacks or [])])
    if stage == "dpo" and trainer.is_world_process_zero():
        reference = ("the starting model with the LoRA adapter off (one copy in memory)" if peft_config
                     else "the starting model's log-probs, computed before training (one copy in memory)"
                     if args.precompute_ref_log_probs else "a frozen copy of the starting model (two in memory)")
        log(f"dpo: reference model = {reference}")
    zero = trainer.is_world_process_zero()
    # The newest complete checkpoint: a kill during a save leaves a newer folder that is skipped (and removed).
    last = newest_complete(Path(args.output_dir), lambda line: log(f"{stage}: {line}") if zero else None, remove=zero)
    if last and zero:
        log(f"{stage}: resuming from {last}")
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    metrics: dict[str, Any] = {"train": result.metrics, "precision": precision}
    if "test" in datasets:
        metrics["eval"] = trainer.evaluate()
    weights = folder / ("model" if section.full_finetune else "adapter")
    trainer.save_model(str(weights))  # every rank: DeepSpeed ZeRO-3 and FSDP gather the shards here
    if trainer.is_world_process_zero():
        write_atomic(folder / "log_history.json", json.dumps(trainer.state.log_history, indent=1) + "\n")
        write_atomic(folder / "metrics.json", json.dumps(metrics, indent=1, default=str) + "\n")
        shown = {**metrics["train"], **metrics.get("eval", {})}
        log(f"{stage}: " + ", ".join(f"{key} {shown[key]:.4g}" for key in LOGGED if key in shown))
        if stage == "dpo":
            log(f"dpo: {write_behaviour({recipe.out.name: read_steps(folder / STEPS_FILE)}, folder / BEHAVIOUR_PNG)}")
    del trainer
    gc.collect()
    if PartialState().is_main_process:
        if peft_config is not None:
            merge_adapter(base, weights, folder / "model", precision["weights"], recipe.trust_remote_code)
        mark_complete(folder, start=base, metrics=metrics)
    return metrics


def precision_record(recipe: Recipe, stage: str, args: Any) -> dict[str, str]:
    """A stage's precision for metrics.json, its .complete marker and the model card.

    bf16 is autocast: TRL keeps the weights it trains in `model_init_kwargs`' dtype (float32 unless set), and
    the merged model is saved in that same dtype, so a small LoRA delta is not rounded away when it is folded
    into the base weights.
    """
    precision = stage_precision(recipe, stage)
    weights = str((args.model_init_kwargs or {}).get("dtype", "float32"))
    return {"compute": precision.name, "reason": precision.reason, "weights": weights}


def merge_adapter(base: str, adapter: Path, target: Path, dtype: Any, trust_remote_code: bool) -> None:
    """Fold the LoRA adapter into the base weights and save a plain model folder (with tokenizer)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, trust_remote_code=trust_remote_code,
                                                 use_safetensors=True)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").is_file() else base
    staged = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staged, ignore_errors=True)
    merged.save_pretrained(staged, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code).save_pretrained(staged)
    shutil.rmtree(target, ignore_errors=True)
    staged.rename(target)


def final_model(recipe: Recipe) -> Path | None:
    """Copy the last trained stage's model to output_dir/model and draw the curves; None before training."""
    trained = [stage for stage in ("sft", "dpo") if getattr(recipe, stage).enabled and is_complete(recipe.out / stage)]
    if not trained:
        return None
    source = recipe.out / trained[-1] / "model"
    target = recipe.out / "model"
    stamp = f"{source} {(recipe.out / trained[-1] / MARKER).stat().st_mtime_ns}"
    if (target / ".source").is_file() and (target / ".source").read_text() == stamp:
        return target
    staged = target.with_name(".model.partial")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(source, staged)
    histories = {stage: json.loads((recipe.out / stage / "log_history.json").read_text())
                 for stage in trained if (recipe.out / stage / "log_history.json").is_file()}
    write_curves(histories, staged)
    (staged / ".source").write_text(stamp)
    shutil.rmtree(target, ignore_errors=True)
    staged.rename(target)
    return target


def eval_stage(recipe: Recipe, model: Path) -> dict[str, Any] | None:
    """Evaluate the result against the base model, if the recipe has an eval section."""
    folder = recipe.out / "eval"
    if recipe.eval is None:
        log("eval: the recipe has no eval section; skipped")
        return None
    if is_complete(folder):
        log(f"eval: complete, skipped ({folder})")
        return json.loads((folder / MARKER).read_text()).get("results")
    from cai_kit.evaluation.evaluate import run_eval
    from cai_kit.evaluation.options import EvalOptions

    settings = recipe.eval.model_dump(exclude_unset=True)
    options = EvalOptions(**settings, model=str(model), baseline=recipe.base_model, out=str(folder))
    if needs_own_process(options.engine):  # vllm: its GPU memory is freed when the process ends
        run_in_own_process("eval", options.model_dump(mode="json"), folder)
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    else:
        results = run_eval(options)
    mark_complete(folder, results=results)
    return results


def main(argv: list[str] | None = None) -> None:
    """Entry point of each process under `accelerate launch`; users run `cai train` instead."""
    parser = argparse.ArgumentParser(prog="python -m cai_kit.training.train", description=main.__doc__)
    parser.add_argument("--recipe", required=True, help="the resolved recipe (output_dir/recipe.yaml)")
    parser.add_argument("--stage", required=True, choices=["sft", "dpo"])
    args = parser.parse_args(argv)
    try:
        fit(load_recipe(args.recipe), args.stage)
    except UsageError as err:
        for line in err.problems:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
