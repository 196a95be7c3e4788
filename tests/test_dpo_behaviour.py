"""DPO as a full fine-tune (a frozen reference copy, or precomputed reference log-probs), the per-step
behaviour file steps.jsonl and its figures (behaviour.png, `cai plot`), and the loss variants a recipe reaches.

The tiny random model (built in code) trains on the handwritten pairs of conftest's `recipe_path`, DPO alone
(from the base model) unless a test says otherwise; the last test runs recipes/tiny.yaml through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import TrainerCallback

from cai_kit.cli import main
from cai_kit.core.errors import UsageError
from cai_kit.training.recipe import load_recipe
from cai_kit.training.steps import find_steps, read_steps
from cai_kit.training.train import run_train

REPO = Path(__file__).resolve().parent.parent
DPO_ONLY = ["sft.enabled=false", "dpo.trl.eval_strategy=steps", "dpo.trl.eval_steps=2"]
REWARD_KEYS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
               "logps/chosen", "logps/rejected"}
PNG = b"\x89PNG\r\n\x1a\n"


class Interrupted(Exception):
    pass


class StopAfter(TrainerCallback):
    """Stops the run after step `step` was logged (so its row is on disk and its checkpoint is not)."""

    def __init__(self, step):
        self.step = step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == self.step:
            raise Interrupted


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def _same(weights: dict[str, torch.Tensor], model) -> bool:
    """Every tensor of `weights` equals the model's own of that name (and there are some)."""
    state = model.state_dict()
    shared = [name for name in weights if name in state]
    return bool(shared) and all(torch.equal(weights[name].float(), state[name].float()) for name in shared)


def _load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


def _rows(run: Path, split: str) -> list[dict]:
    return [row for row in read_steps(run / "dpo" / "steps.jsonl") if row["split"] == split]


def test_full_dpo_keeps_a_frozen_reference_copy_and_logs_every_step(recipe_path, tiny_model_path, dpo_trainers):
    recipe = load_recipe(recipe_path, [*DPO_ONLY, "dpo.full_finetune=true"])
    final = run_train(recipe, ["dpo"])
    trainer, stage = dpo_trainers[0], recipe.out / "dpo"
    base = _weights(tiny_model_path)

    assert trainer.ref_model is not None and not hasattr(trainer.model, "peft_config")
    assert _same(base, trainer.ref_model)  # four steps at lr 1e-3 later, the reference is the starting model
    assert not _same(base, trainer.model) and not _same(base, _load(final))
    assert (stage / "model" / "model.safetensors").is_file() and not (stage / "adapter").exists()
    assert (stage / ".complete").is_file() and (final / "README.md").is_file()

    train, test = _rows(recipe.out, "train"), _rows(recipe.out, "test")
    assert [row["step"] for row in train] == [1, 2, 3, 4]
    assert [row["step"] for row in test] == [2, 4]  # eval at step 4 and the stage's final eval: one row
    assert all(REWARD_KEYS <= row.keys() for row in train + test) and all("learning_rate" in row for row in train)
    assert not any(key.startswith("eval_") for row in test for key in row)
    assert train[0]["rewards/margins"] == 0.0 and train[-1]["rewards/margins"] != 0.0  # the policy left the reference
    assert (stage / "behaviour.png").read_bytes().startswith(PNG)


def test_precomputed_reference_survives_a_resume_without_duplicate_rows(recipe_path, dpo_trainers, capsys):
    recipe = load_recipe(recipe_path, [*DPO_ONLY, "dpo.full_finetune=true", "dpo.trl.precompute_ref_log_probs=true",
                                       "dpo.trl.max_steps=6"])
    with pytest.raises(Interrupted):
        run_train(recipe, ["dpo"], callbacks=[StopAfter(3)])  # checkpoint-2 is on disk; step 3's row too
    assert [row["step"] for row in _rows(recipe.out, "train")] == [1, 2, 3]
    assert "computed before training" in capsys.readouterr().err

    run_train(recipe, ["dpo"])
    assert "resuming from" in capsys.readouterr().err
    first, resumed = dpo_trainers
    assert first.ref_model is None and resumed.ref_model is None  # no copy: log-probs computed up front
    # The resumed run computes them again from the starting model, not from checkpoint-2's weights.
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        assert first.train_dataset[column] == resumed.train_dataset[column]
    assert [row["step"] for row in _rows(recipe.out, "train")] == [1, 2, 3, 4, 5, 6]
    assert [row["step"] for row in _rows(recipe.out, "test")] == [2, 4, 6]
    assert (recipe.out / "dpo" / ".complete").is_file()


@pytest.mark.parametrize(
    ("settings", "losses"),
    [
        (["dpo.trl.loss_type=sigmoid"], ["sigmoid"]),
        (["dpo.trl.loss_type=[sigmoid,sft]", "dpo.trl.loss_weights=[1.0,1.0]"], ["sigmoid", "sft"]),
        (["dpo.trl.loss_type=ipo"], ["ipo"]),
        (["dpo.trl.loss_type=robust", "dpo.trl.label_smoothing=0.1"], ["robust"]),
    ],
)
def test_loss_variants_train_from_a_recipe(recipe_path, dpo_trainers, settings, losses):
    recipe = load_recipe(recipe_path, ["sft.enabled=false", "dpo.trl.max_steps=2", *settings])
    run_train(recipe, ["dpo"])
    assert dpo_trainers[0].loss_types == losses
    train = _rows(recipe.out, "train")
    assert [row["step"] for row in train] == [1, 2] and all(REWARD_KEYS <= row.keys() for row in train)
    assert len(_rows(recipe.out, "test")) == 1  # no eval during training: the stage's final eval


def test_a_loss_setting_that_trl_would_ignore_or_renamed_fails_at_load(recipe_path):
    with pytest.raises(UsageError) as err:
        load_recipe(recipe_path, ["dpo.trl.label_smoothing=0.1"])
    assert "dpo.trl.label_smoothing: ignored by loss_type ['sigmoid']" in str(err.value)
    assert "loss_type: robust" in str(err.value)
    with pytest.raises(UsageError) as err:
        load_recipe(recipe_path, ["dpo.trl.rpo_alpha=1.0"])
    assert "dpo.trl.rpo_alpha: not an option of trl.DPOConfig (renamed: use 'loss_type: [sigmoid, sft]'" in str(
        err.value)


def _steps_file(folder: Path, margins: list[float]) -> Path:
    """A steps file in the shape StepLog writes (its writing is tested above), for the plotting tests."""
    rows = [{"step": step, "epoch": step / 4, "split": split, "rewards/accuracies": 0.5 + margin / 4,
             "rewards/margins": margin * (1 if split == "train" else 0.5)}
            for step, margin in enumerate(margins, start=1) for split in ("train", "test")]
    folder.mkdir(parents=True)
    (folder / "steps.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"step": 9, "spl')
    return folder / "steps.jsonl"


def test_cai_plot_overlays_runs_and_their_rounds(tmp_path):
    _steps_file(tmp_path / "lora" / "dpo", [0.1, 0.2, 0.4])
    _steps_file(tmp_path / "full" / "dpo", [0.2, 0.6, 1.2])
    _steps_file(tmp_path / "full" / "round-2" / "dpo", [0.3, 0.5, 0.9])
    assert len(read_steps(tmp_path / "lora" / "dpo" / "steps.jsonl")) == 6  # the line a kill cut short is left out
    assert [label for label, _ in find_steps(tmp_path / "full")] == ["full round 1", "full round 2"]
    assert [label for label, _ in find_steps(tmp_path / "lora" / "dpo")] == ["lora"]
    assert [label for label, _ in find_steps(tmp_path / "lora" / "dpo" / "steps.jsonl")] == ["lora"]

    out = tmp_path / "figures" / "both.png"
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "lora"), str(tmp_path / "full"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out) and out.read_bytes().startswith(PNG)
    alone = tmp_path / "lora.png"
    assert CliRunner().invoke(main, ["plot", str(tmp_path / "lora"), "-o", str(alone)]).exit_code == 0
    assert alone.read_bytes() != out.read_bytes()


def test_cai_plot_says_which_folder_has_no_dpo_steps(tmp_path):
    (tmp_path / "empty").mkdir()
    sft = tmp_path / "run" / "sft"
    sft.mkdir(parents=True)
    (sft / "steps.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 2.0}) + "\n")
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "empty"), str(sft), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (f"error: {tmp_path / 'empty'}: no steps.jsonl here, in {tmp_path / 'empty' / 'dpo'} or in "
                        "its rounds (a DPO stage writes dpo/steps.jsonl as it trains)")
    assert lines[1].startswith(f"error: {sft / 'steps.jsonl'}: no rewards/accuracies or rewards/margins rows")
    assert not (tmp_path / "x.png").exists()


def test_tiny_recipe_with_full_dpo_through_the_cli(tmp_path, monkeypatch):
    """generate -> sft -> full DPO -> eval with recipes/tiny.yaml, then `cai plot` on the run."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "tiny"
    result = CliRunner().invoke(main, ["train", "recipes/tiny.yaml", "--set", f"output_dir={out}",
                                       "--set", "dpo.full_finetune=true"])
    assert result.exit_code == 0, result.output
    assert "dpo: reference model = a frozen copy of the starting model" in result.output
    assert not _same(_weights(out / "sft" / "model"), _load(out / "model"))
    assert not (out / "dpo" / "adapter").exists() and (out / "eval" / ".complete").is_file()
    assert "eval_rewards/accuracies" in (out / "model" / "README.md").read_text()
    assert _rows(out, "train") and (out / "dpo" / "behaviour.png").read_bytes().startswith(PNG)
    plotted = CliRunner().invoke(main, ["plot", str(out), "-o", str(tmp_path / "tiny.png")])
    assert plotted.exit_code == 0, plotted.output
