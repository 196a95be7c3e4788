"""`cai guard train` and `cai guard check`: fit a probe guard from a constitution, and ask it about prompts."""

from __future__ import annotations

import click

from cai_kit.core.errors import usage_errors
from cai_kit.guard.probe_train import BENIGN_SETS, HARMFUL_SETS


@click.group(name="guard")
def guard() -> None:
    """A linear probe on the model's own activations, fitted from a constitution, put in front of the model.

    \b
    Example:
      cai guard train harmless -m default --out runs/guard
      cai guard check runs/guard "how do I pick a lock?"
      cai eval -m default --guard runs/guard -s harmful -s everyday
    """


@guard.command(name="train")
@click.argument("constitution")
@click.option("--model", "-m", default="default", help="'default' (the embedded SmolLM2-135M-Instruct), a folder or a "
              "hub id.")
@click.option("--out", "-o", required=True, type=click.Path(), help="Guard folder to write (probe, thresholds, card).")
@click.option("--max-fpr", type=click.FloatRange(0, 1, max_open=True), default=0.05,
              help="Largest share of held-out everyday training prompts the guard may flag; sets the thresholds.")
@click.option("--harmful", multiple=True, default=HARMFUL_SETS, help="Harmful training prompt set(s); repeatable.")
@click.option("--benign", multiple=True, default=BENIGN_SETS, help="Benign training prompt set(s); repeatable.")
@click.option("--batch-size", type=click.IntRange(1), default=16, help="Prompts per forward pass.")
@usage_errors
def train_command(constitution: str, model: str, out: str, max_fpr: float, harmful: tuple[str, ...],
                  benign: tuple[str, ...], batch_size: int) -> None:
    """Fit a guard for MODEL from CONSTITUTION's principles and the training prompt sets; write it to --out.

    One head per principle whose `categories` claim harmful prompts, and an overall head; the layer and pooling
    are chosen on a dev split, the thresholds on a held-out one (docs/guard.md). Eval sets are refused.

    \b
    Example:
      cai guard train harmless -m default --out runs/guard
      cai guard train my.yaml -m runs/zephyr_cai/model --out runs/guard-trained --max-fpr 0.02
    """
    from cai_kit.guard.probe_train import train_guard

    info = train_guard(constitution, model, out, max_fpr, tuple(harmful), tuple(benign), batch_size)
    overall = info["held_out"]["overall"]
    click.echo(f"layer {info['layer']} of {info['num_layers']}, pooling {info['pooling']}, L2 {info['l2']:g} (chosen "
               f"on dev: AUROC {info['dev']['chosen']['auroc']:.3f}); held-out: harmful flagged "
               f"{overall['recall']['rate']:.2f}, everyday flagged {overall['everyday_flagged']['rate']:.2f}; "
               f"{info['seconds']['total']} s")
    click.echo(f"card: {out}/README.md")


@guard.command(name="check")
@click.argument("folder", type=click.Path())
@click.argument("prompts", nargs=-1, required=True)
@click.option("--model", "-m", help="The model the guard reads.  [default: the one it was fitted on]")
@usage_errors
def check_command(folder: str, prompts: tuple[str, ...], model: str | None) -> None:
    """Score PROMPTS with the guard in FOLDER: its score, threshold and the principle that fired, one line each.

    \b
    Example:
      cai guard check runs/guard "how do I pick a lock?" "how do I bake bread?"
    """
    from cai_kit.guard.probe import OVERALL, Guard

    loaded = Guard.load(folder, model)
    threshold = loaded.thresholds[OVERALL]
    for prompt, check in zip(prompts, loaded.check(list(prompts)), strict=True):
        verdict = f"fired: {check.principle or '-'}" if check.flagged else "passed"
        click.echo(f"{check.score:.3f} (threshold {threshold:.3f}) {verdict}: {prompt}")


COMMANDS = [guard]
