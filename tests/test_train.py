"""The training stages on the tiny random model (built in code) with small handwritten JSONL data.

Handwritten rows stand in for `cai generate` output here, so these tests do not depend on it; the
end-to-end test at the bottom runs the real pipeline through the CLI.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from cai_kit.cli import main
from cai_kit.training.data_mix import Source, mix
from cai_kit.training.recipe import load_recipe
from cai_kit.training.train import run_train

REPO = Path(__file__).resolve().parent.parent


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def _changed(before, after) -> bool:
    return any(not torch.equal(before[name].float(), after[name].float()) for name in before if name in after)


def _chats(folder) -> None:
    """The folder loads as a plain HF model and answers through its chat template."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    inputs = tokenizer.apply_chat_template(
        [_user("hello")], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


def test_mix_splits_each_source_before_weighting(tmp_path):
    rows = [{"messages": [_user(f"q{i}"), _assistant(f"a{i}")]} for i in range(10)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    other = [{"prompt": [_user(f"x{i}")], "completion": [_assistant(f"y{i}")]} for i in range(4)]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(row) + "\n" for row in other))
    sources = [Source("a", tmp_path / "a.jsonl", 0.5), Source("b", tmp_path / "b.jsonl", 2.5)]
    train, test, counts = mix(sources, "sft", 0.2, seed=0)
    assert [(c["train"], c["test"]) for c in counts] == [(4, 2), (8, 1)]  # b: 3 kept x 2.5 = 8
    assert len(train) == 12 and len(test) == 3
    assert not {json.dumps(r) for r in train} & {json.dumps(r) for r in test}  # nothing held out is trained on
    assert train[0].keys() == {"prompt", "completion"} and train[0]["completion"][0]["role"] == "assistant"
    assert mix(sources, "sft", 0.2, seed=0)[0] == train  # seeded: a resumed run sees the same rows


def test_judged_pairs_below_min_score_are_left_out_of_dpo(tmp_path):
    def pair(i, score=None):
        row = {"prompt": [_user(f"q{i}")], "chosen": [_assistant("good")], "rejected": [_assistant("bad")]}
        return row if score is None else {**row, "score": score}

    rows = [pair(0, 0.55), pair(1, 0.9), pair(2, 0.95), pair(3)]  # pair 3 is unscored (revision or contrast)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    train, test, counts = mix([Source("p", tmp_path / "p.jsonl", 1.0)], "dpo", 0.0, seed=0, min_score=0.8)
    assert sorted(r["prompt"][0]["content"] for r in train) == ["q1", "q2", "q3"]
    assert counts[0]["below_min_score"] == 1 and all("score" not in r for r in train)
    assert len(mix([Source("p", tmp_path / "p.jsonl", 1.0)], "dpo", 0.0, seed=0)[0]) == 4


def test_soft_labels_flip_training_pairs_with_probability_one_minus_score(tmp_path):
    def pair(i, score=None):
        row = {"prompt": [_user(f"q{i}")], "chosen": [_assistant(f"good{i}")], "rejected": [_assistant(f"bad{i}")]}
        return row if score is None else {**row, "score": score}

    rows = [pair(i, 0.75) for i in range(400)] + [pair(i, 1.0) for i in range(400, 450)] + [pair(450)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    source = [Source("p", tmp_path / "p.jsonl", 1.0)]
    train, test, counts = mix(source, "dpo", 0.1, seed=0, soft_labels=True)
    flipped = [r for r in train if r["chosen"][0]["content"].startswith("bad")]
    assert counts[0]["flipped_by_soft_labels"] == len(flipped)
    scored_75 = [r for r in train if int(r["prompt"][0]["content"][1:]) < 400]
    assert 0.17 < len(flipped) / len(scored_75) < 0.33  # 1 - 0.75, sampled
    assert all(int(r["prompt"][0]["content"][1:]) < 400 for r in flipped)  # score 1.0 and unscored never flip
    assert all(r["chosen"][0]["content"].startswith("good") for r in test)  # held-out pairs keep the judge's label
    assert mix(source, "dpo", 0.1, seed=0, soft_labels=True)[0] == train  # seeded
    hard = mix(source, "dpo", 0.1, seed=0)[0]
    assert all(r["chosen"][0]["content"].startswith("good") for r in hard)


def test_sft_then_dpo_with_lora(recipe_path, tiny_model_path, dpo_trainers):
    from accelerate.utils import is_peft_model

    recipe = load_recipe(recipe_path)
    final = run_train(recipe, ["sft", "dpo"])
    run = recipe.out

    # DPO's reference is the SFT model with the adapter off: no ref_model, no second adapter, one model
    trainer = dpo_trainers[0]
    assert trainer.ref_model is None and is_peft_model(trainer.model)
    assert set(trainer.model.peft_config) == {"default"}
    assert trainer.model.get_base_model().name_or_path == str(run / "sft" / "model")

    base, sft, dpo = _weights(tiny_model_path), _weights(run / "sft" / "model"), _weights(final)
    assert _changed(base, sft) and _changed(sft, dpo)
    assert not any("lora" in name for name in dpo)  # merged: a plain model
    assert final == run / "model"
    _chats(final)
    for name in (
        "README.md",
        "training_curves.png",
        "training_curves.json",
        "chat_template.jinja",
        "generation_config.json",
        "tokenizer.json",
    ):
        assert (final / name).is_file(), name
    curves = json.loads((final / "training_curves.json").read_text())
    assert curves["sft"]["loss"] and curves["dpo"]["rewards/margins"] and curves["dpo"]["eval_rewards/accuracies"]
    card = (final / "README.md").read_text()
    assert "license: apache-2.0" in card and "eval_rewards/accuracies" in card and "| dpo | prefs.jsonl | 12 |" in card
    # metrics.json holds the held-out evaluation run after training: the last one the trainer logged.
    accuracy = json.loads((run / "dpo" / "metrics.json").read_text())["eval"]["eval_rewards/accuracies"]
    logged = [row["eval_rewards/accuracies"] for row in json.loads((run / "dpo" / "log_history.json").read_text())
              if "eval_rewards/accuracies" in row]
    assert logged and accuracy == logged[-1] and 0.0 <= accuracy <= 1.0


class Interrupted(Exception):
    pass


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted


class FirstStep(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_interrupted_sft_resumes_from_its_last_checkpoint(recipe_path, capsys):
    recipe = load_recipe(recipe_path, ["sft.trl.max_steps=6"])
    with pytest.raises(Interrupted):
        run_train(recipe, ["sft"], callbacks=[StopAt(3)])  # checkpoint-2 is on disk, step 3 is lost
    assert (recipe.out / "sft" / "checkpoints" / "checkpoint-2").is_dir()
    assert not (recipe.out / "sft" / ".complete").exists()

    steps = FirstStep()
    run_train(recipe, ["sft"], callbacks=[steps])
    assert steps.steps == [3, 4, 5, 6]  # continued from checkpoint-2, not from 0
    assert "resuming from" in capsys.readouterr().err
    assert json.loads((recipe.out / "sft" / "ranks" / "rank-0.json").read_text())["global_step"] == 6

    run_train(recipe, ["sft"])
    assert "sft: complete, skipped" in capsys.readouterr().err


def test_full_finetune_switch(recipe_path, tiny_model_path):
    recipe = load_recipe(recipe_path, ["sft.full_finetune=true", "sft.trl.max_steps=2"])
    final = run_train(recipe, ["sft"])
    assert not (recipe.out / "sft" / "adapter").exists()
    assert _changed(_weights(tiny_model_path), _weights(final))
    _chats(final)


def test_two_processes_on_cpu(recipe_path):
    """SFT and DPO as 2-process DDP (gloo) through `accelerate launch`; both ranks take part."""
    recipe = load_recipe(recipe_path, ["processes=2"])
    final = run_train(recipe, ["sft", "dpo"])
    for stage in ("sft", "dpo"):
        records = [json.loads(path.read_text()) for path in sorted((recipe.out / stage / "ranks").glob("*.json"))]
        assert [(r["rank"], r["world_size"]) for r in records] == [(0, 2), (1, 2)]
        assert all(r["steps_here"] == 4 for r in records)
    _chats(final)


def test_tiny_recipe_end_to_end_through_the_cli(tmp_path, tiny_model_path, monkeypatch):
    """generate -> sft -> dpo -> eval with recipes/tiny.yaml, then a rerun that skips every stage."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "tiny"
    command = ["train", "recipes/tiny.yaml", "--set", f"output_dir={out}"]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    final = out / "model"
    assert result.stdout.strip().splitlines()[-1] == str(final)
    assert _changed(_weights(tiny_model_path), _weights(final))
    _chats(final)
    card = (final / "README.md").read_text()
    assert "| 0 | harmless (`harmless`) | `" in card and "not generated" not in card  # the recipe names it
    # The card says how the data was made, from what each run's manifest recorded.
    assert "The model wrote its own training data against the constitutions below: it critiqued and revised" in card
    row = r"^\| 0 \| harmless \(`harmless`\) \| `[0-9a-f]{64}` \| red_team \| revision \|$"
    assert re.search(row, card, re.M), card

    again = CliRunner().invoke(main, command)
    assert again.exit_code == 0, again.output
    for stage in ("generate[0]", "generate[1]", "sft", "dpo", "eval"):
        assert f"{stage}: complete, skipped" in again.output
    assert "WARNING" not in again.output
    changed = CliRunner().invoke(main, [*command, "--set", "generate.1.limit=3", "--stages", "generate"])
    assert changed.exit_code == 0, changed.output
    warning = next(line for line in changed.output.splitlines() if line.startswith("cai train: generate[1]"))
    assert "WARNING: the recipe changed since it ran (limit " in warning and "-> 3)" in warning
    assert f"delete {out / 'generate' / '1-helpful'} to generate it again" in warning, warning
    assert "WARNING" not in next(line for line in changed.output.splitlines() if "generate[0]" in line)
    # A run folder copied into another output_dir is the same data: no warning about `out`.
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    copied = CliRunner().invoke(
        main, ["train", "recipes/tiny.yaml", "--set", f"output_dir={moved}", "--stages", "generate"]
    )
    assert copied.exit_code == 0, copied.output
    assert "generate[1]: complete, skipped" in copied.output and "WARNING" not in copied.output


def test_two_rounds_regenerate_with_the_new_model_and_resume(tmp_path, tiny_model_path, monkeypatch):
    """rounds: 2 -> round 2 generates with round 1's model, trains it again, and a rerun skips both rounds."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "tiny"
    command = ["train", "recipes/tiny.yaml", "--set", f"output_dir={out}", "--set", "rounds=2",
               "--set", "eval.suites=[harmful, everyday]", "--set", "round_overrides={2: {sft.lora.r: 2}}"]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    first, second = out / "model", out / "round-2" / "model"
    assert "round 1 of 2: training tiny-random" in result.output
    assert f"round 2 of 2: generating with {first}; round_overrides: sft.lora.r=2" in result.output
    ranks = [json.loads((folder / "sft" / "adapter" / "adapter_config.json").read_text())["r"]
             for folder in (out, out / "round-2")]
    assert ranks == [4, 2]  # round 2 only trains the adapter its round_overrides ask for
    assert result.stdout.strip().splitlines()[-1] == str(second)
    manifest = json.loads((out / "round-2" / "generate" / "0-harmless" / "manifest.json").read_text())
    assert manifest["model"] == str(first)  # round 2's data was written by round 1's model
    assert _changed(_weights(first), _weights(second))
    results = json.loads((out / "round-2" / "eval" / "results.json").read_text())
    assert results["models"]["baseline"]["spec"] == "tiny-random"  # every round is compared with the base model
    card = (second / "README.md").read_text()  # names the base model, and the round it came from
    assert "\nbase_model: tiny-random\n" in card
    assert f"**tiny-random** (licence: apache-2.0) in round 2 of 2, starting from round 1's model (`{first}`)" in card
    table = (out / "rounds.md").read_text()
    for index, model in ((1, first), (2, second)):  # the headline first, then the two rates it is made of
        lines = [line for line in table.splitlines() if line.startswith(f"| {index} | `{model}` |")]
        assert [line.split(" | ")[2:4] for line in lines] == [
            ["harmful, everyday", "discrimination"], ["harmful", "refused"], ["everyday", "refused"]
        ], table
        assert re.search(r"\| [+-]\d\.\d\d \[[+-]\d\.\d\d, [+-]\d\.\d\d\] \(\d\.\d\d - \d\.\d\d\) \|$", lines[0])

    again = CliRunner().invoke(main, command)
    assert again.exit_code == 0, again.output
    assert again.output.count("dpo: complete, skipped") == 2 and again.output.count("eval: complete, skipped") == 2
    assert "WARNING" not in again.output

    # Round 1's DPO trained again: round 2 came from the earlier model, and the rerun says which folder to delete.
    shutil.rmtree(out / "dpo")
    shutil.rmtree(out / "eval")
    redone = CliRunner().invoke(main, command)
    assert redone.exit_code == 0, redone.output
    warning = next(line for line in redone.output.splitlines() if "WARNING" in line)
    assert "round-2 was made from an earlier training of" in warning and f"delete {out / 'round-2'}" in warning


def _two_run_recipe(tmp_path: Path, first: str, second: str, test_split: float):
    """A recipe of two generate runs (`first`, `second`: the inline options after the constitution)."""
    shipped = Path(__file__).resolve().parent.parent / "constitutions"
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(
        f"output_dir: {tmp_path / 'run'}\ngenerate:\n"
        f"  - {{constitution: {shipped / 'harmless.yaml'}{first}}}\n"
        f"  - {{constitution: {shipped / 'helpful.yaml'}{second}}}\n"
        f"data: {{test_split: {test_split}}}\n"
    )
    return recipe_path


def _generated(folder: Path, word: str, count: int) -> None:
    """A finished generate folder whose SFT rows answer `word` and whose pairs prefer it to "no"."""
    folder.mkdir(parents=True)
    prompts = [[_user(f"{word} {i}")] for i in range(count)]
    sft = [{"messages": p + [_assistant(word)]} for p in prompts]
    prefs = [{"prompt": p, "chosen": [_assistant(word)], "rejected": [_assistant("no")]} for p in prompts]
    (folder / "sft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in sft))
    (folder / "prefs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in prefs))
    (folder / ".complete").write_text("{}")


def test_sft_weight_zero_keeps_a_runs_answers_out_of_sft_but_not_out_of_dpo(tmp_path):
    from cai_kit.training.train import prepare_data

    recipe = load_recipe(_two_run_recipe(tmp_path, ", sft_weight: 0", "", test_split=0))
    for index, word in enumerate(["refuse", "answer"]):
        _generated(recipe.generate_dir(index), word, 5)
    assert [c["train"] for c in prepare_data(recipe, "sft")] == [0, 5]
    assert [c["train"] for c in prepare_data(recipe, "dpo")] == [5, 5]
    sft_rows = (recipe.out / "sft" / "data" / "train.jsonl").read_text()
    assert "refuse" not in sft_rows and "answer" in sft_rows


def test_a_run_weighted_zero_in_both_stages_is_not_generated_and_holds_nothing_out(tmp_path, capsys):
    from cai_kit.training.generate_runs import generate_stage
    from cai_kit.training.train import prepare_data

    recipe_path = _two_run_recipe(tmp_path, "", ", weight: 0", test_split=0.2)
    recipe = load_recipe(recipe_path)
    _generated(recipe.generate_dir(0), "refuse", 10)
    generate_stage(recipe)  # run 0 is complete; run 1 would train nothing, so no model is loaded for it
    assert "generate[1]: weight 0 in SFT and DPO" in capsys.readouterr().err
    assert not recipe.generate_dir(1).exists()
    assert [(c["train"], c["test"]) for c in prepare_data(recipe, "dpo")] == [(8, 2)]

    # Weighted 0 in DPO only, it is generated for SFT, and DPO holds none of its rows out either.
    shutil.rmtree(recipe.out / "dpo")
    _generated(recipe.generate_dir(1), "answer", 10)
    recipe = load_recipe(recipe_path, ["generate.1.sft_weight=1"])
    assert [(c["train"], c["test"]) for c in prepare_data(recipe, "dpo")] == [(8, 2), (0, 0)]
    assert [(c["train"], c["test"]) for c in prepare_data(recipe, "sft")] == [(8, 2), (8, 2)]


def test_the_rounds_table_says_which_rounds_were_not_evaluated(tmp_path):
    """A run with `--stages generate,sft,dpo` has no eval yet: rounds.md says so instead of an empty table."""
    from cai_kit.core.stats import difference, rate
    from cai_kit.training.generate_runs import mark_complete
    from cai_kit.training.rounds import write_rounds_table

    harmful, everyday = rate(30, 100), rate(5, 100)
    scores = {"harmful": {"baseline": {"refused": rate(8, 100)}, "model": {"refused": harmful}},
              "everyday": {"baseline": {"refused": rate(1, 100)}, "model": {"refused": everyday}}}
    headline = {"model": difference(harmful, everyday) | {"harmful_refused": harmful, "everyday_refused": everyday}}
    results = {"suites": {suite: {"scores": s} for suite, s in scores.items()}, "discrimination": headline}
    mark_complete(tmp_path / "eval", results=results)
    write_rounds_table(tmp_path, [(1, tmp_path), (2, tmp_path / "round-2")])
    rows = (tmp_path / "rounds.md").read_text().splitlines()[4:]
    assert rows[0].endswith("| harmful, everyday | discrimination | - | +0.25 [+0.15, +0.35] (0.30 - 0.05) |")
    assert rows[1].endswith("| harmful | refused | 0.08 | 0.30 |")
    assert rows[2].endswith("| everyday | refused | 0.01 | 0.05 |")
    assert rows[3] == (f"| 2 | `{tmp_path / 'round-2' / 'model'}` | - | not evaluated: run the eval stage "
                       "(`--stages eval`) | - | - |")
    assert len(rows) == 4


def test_vllm_stages_run_in_a_process_of_their_own(tmp_path, tiny_model_path, monkeypatch, capsys):
    """The generate and eval stages of an isolated engine (vllm; here the transformers engine stands in, as vllm
    needs CUDA) run as a child process, which writes the same folders the in-process stage does."""
    from cai_kit.training import stage_process
    from cai_kit.training.train import eval_stage

    monkeypatch.setattr(stage_process, "ISOLATED_ENGINES", {"transformers"})
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml", [f"output_dir={tmp_path / 'tiny'}"])
    run_train(recipe, ["generate"])
    assert capsys.readouterr().err.count("the transformers engine runs in a process of its own") == 2
    for index in range(2):
        folder = recipe.generate_dir(index)
        assert (folder / ".complete").is_file() and (folder / ".generate-options.json").is_file()
        assert len((folder / "generations.jsonl").read_text().splitlines()) == 6
    results = eval_stage(recipe, Path(tiny_model_path))
    assert "the transformers engine runs in a process of its own" in capsys.readouterr().err
    assert results["suites"] and (recipe.out / "eval" / "report.md").is_file()
