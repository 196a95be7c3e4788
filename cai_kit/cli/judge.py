"""`cai judge-check`: measure a judge model on pairs with a known better answer."""

from __future__ import annotations

import sys

import click

from cai_kit.cli.flags import default, engine_flags
from cai_kit.core.errors import usage_errors
from cai_kit.judging.judge_check import JudgeCheckOptions

J = JudgeCheckOptions


@click.command(name="judge-check")
@click.option("--judge-model", default=default(J, "judge_model"), help="Judge model: 'default', a folder or a hub id.")
@click.option(
    "--constitution",
    "-c",
    help="Constitution (a file or a shipped name) whose judge questions are asked. "
    "[default: one general question]",
)
@click.option("--limit", type=click.IntRange(0), help="Pairs to judge, spread over the kinds; 0 or unset: all.")
@click.option("--cot", is_flag=True, help="The judge reasons first; label probabilities clamped to 0.4-0.6.")
@click.option("--out", "-o", help="Folder for results.json. [default: runs/judge-check-<time>]")
@click.option(
    "--min-accuracy",
    type=click.FloatRange(0, 1),
    default=default(J, "min_accuracy"),
    help="PASS needs at least this accuracy.",
)
@click.option(
    "--min-consistency",
    type=click.FloatRange(0, 1),
    default=default(J, "min_consistency"),
    help="...and this order consistency.",
)
@click.option("--engine", default=default(J, "engine"), help="transformers, vllm, openai, openvino or auto.")
@click.option("--batch-size", type=click.IntRange(1), default=default(J, "batch_size"))
@click.option("--trust-remote-code", is_flag=True, help="Run the model repository's own code (off: safer).")
@engine_flags
@usage_errors
def judge_check(**kwargs) -> None:
    """Measure a judge model on pairs with a known better answer; exit status 1 when it fails the thresholds.

    \b
    Example:
      cai judge-check --judge-model default
      cai judge-check --judge-model my_judge_folder -c harmless --cot --limit 30
    """
    from cai_kit.engines import parse_engine_options
    from cai_kit.judging.judge_check import format_table, run_judge_check

    kwargs["engine_options"] = parse_engine_options(kwargs.pop("engine_option"), kwargs.pop("base_urls"))
    results = run_judge_check(JudgeCheckOptions(**kwargs))
    click.echo(format_table(results))
    click.echo(f"results: {results['options']['out']}/results.json")
    sys.exit(0 if results["passed"] else 1)


COMMANDS = [judge_check]
