"""`cai train` (run a recipe's stages), `cai plot` (how DPO runs trained) and `cai licence` (what a model's
licence lets its outputs train)."""

from __future__ import annotations

from pathlib import Path

import click

from cai_kit.cli.flags import licence_flags, set_option
from cai_kit.core.errors import disk_errors_in, usage_errors


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@set_option
@click.option("--stages", default=None, help="Subset of generate,sft,dpo,eval [default: the recipe's].")
@licence_flags("the recipe model's")
@usage_errors(resume="finished stages, generated rows and complete checkpoints are kept: rerun the same command "
              "to resume")
def train(
    recipe: Path,
    overrides: tuple[str, ...],
    stages: str | None,
    model_licence: tuple[str, ...],
    accept_licence_risk: bool,
) -> None:
    """Run a recipe (a YAML file, or a shipped name: `cai ls`): generate, SFT, DPO, eval; finished stages are
    skipped and trainers resume on rerun.

    \b
    Example:
      cai train zephyr_cai
      cai train tiny --set sft.trl.max_steps=4 --stages sft,dpo
      cai train my_recipe.yaml
    """
    from cai_kit.licensing.licence_guard import parse_overrides
    from cai_kit.training.recipe import load_recipe, parse_stages
    from cai_kit.training.train import run_train

    loaded = load_recipe(recipe, overrides + (("accept_licence_risk=true",) if accept_licence_risk else ()))
    loaded.model_licences.update(parse_overrides(model_licence, loaded.model))
    with disk_errors_in(loaded.out):  # a full disk that names no file is said to be under output_dir
        click.echo(run_train(loaded, parse_stages(stages) if stages else None))


@click.command(name="licence")
@click.argument("models", nargs=-1, required=True)
@click.option("--target", "-t", help="A model to be trained on their outputs: print the guard's verdict for each.")
@click.option("--model-licence", multiple=True, metavar="MODEL=ID", help="A model's licence where its card has none.")
@usage_errors
def licence(models: tuple[str, ...], target: str | None, model_licence: tuple[str, ...]) -> None:
    """Print each model's licence (from its card, or an override) and what it lets its outputs train.

    \b
    Example:
      cai licence default
      cai licence ./llama-2-7b-chat --target default
    """
    from cai_kit.licensing.licence_guard import licence_report, parse_overrides

    bare_for = models[0] if len(models) == 1 else None
    click.echo(licence_report(list(models), target, parse_overrides(model_licence, bare_for)))


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("behaviour.png"),
              help="The figure to write (PNG).")
@usage_errors
def plot(runs: tuple[Path, ...], output: Path) -> None:
    """Draw DPO reward accuracy and margin over steps, train (solid) against held-out (dashed), one colour per
    run; each RUN is a `cai train` output folder (its dpo stage and each round's), a stage folder or a
    steps.jsonl file.

    \b
    Example:
      cai plot runs/zephyr_cai -o behaviour.png
      cai plot runs/lora runs/full runs/ipo -o losses.png
    """
    from cai_kit.training.curves import plot_runs

    click.echo(plot_runs(list(runs), output))


COMMANDS = [train, plot, licence]
