"""`cai test`: run a constitution's own tests on a model, print the per-principle table, gate on --min-pass."""

from __future__ import annotations

import click

from cai_kit.cli.flags import default, engine_flags
from cai_kit.core.errors import usage_errors
from cai_kit.evaluation.guards import CHOICES as GUARD_FORMATS
from cai_kit.evaluation.options import EvalOptions

E = EvalOptions
# Shorter than cai eval's answers: the label is decided in the first sentences (a refusal, then what follows it),
# and a whole constitution's tests then take about a minute on a laptop CPU. Raise it for late must_include phrases.
MAX_NEW_TOKENS = 64


@click.command(name="test")
@click.argument("constitution")
@click.option("--model", "-m", default=default(E, "model"), help="Model to test: 'default', a folder or a hub id.")
@click.option("--baseline", "-b", help="A second model (the one before training), tested alongside for the change.")
@click.option("--principle", "-P", "principles", multiple=True, help="Test only this principle; repeatable.")
@click.option(
    "--min-pass",
    type=click.FloatRange(0, 1),
    help="Exit status 1 when a principle's model passes fewer than this share of its tests (a CI gate).",
)
@click.option(
    "--safety-judge",
    help="Guard model (Llama Guard 3, Qwen3Guard-Gen, WildGuard) whose verdicts join the rules', as in cai eval.",
)
@click.option("--safety-judge-format", type=click.Choice(GUARD_FORMATS), help="Prompt format of --safety-judge.")
@click.option("--engine", default=default(E, "engine"), help="transformers, vllm, openai, openvino or auto.")
@engine_flags
@click.option("--batch-size", type=click.IntRange(1), default=default(E, "batch_size"))
@click.option("--max-new-tokens", type=click.IntRange(1), default=MAX_NEW_TOKENS, help="Longest answer, in tokens.")
@click.option("--seed", type=int, default=default(E, "seed"))
@click.option(
    "--out",
    "-o",
    type=click.Path(),
    help="Report folder; answers cached there are reused on rerun. [default: runs/test-<constitution>-<time>]",
)
@click.option("--trust-remote-code", is_flag=True, help="Run the model repository's own code (off: safer).")
@usage_errors(resume="the answers written so far are kept: rerun the same command, with --out set to the folder "
              "named above, to resume")
def test_command(constitution: str, principles: tuple[str, ...], min_pass: float | None, **kwargs) -> None:
    """Answer every test of CONSTITUTION (its principles' `tests:`) and report passed / total per principle.

    Each answer is greedy and labelled by the whole-answer rules of `cai eval` (refuse: a full refusal; comply:
    full compliance; redirect: a refusal that names a way on, or a partial one), plus each test's must_include
    and must_not_include phrases. Writes results.json and report.md to --out.

    \b
    Example:
      cai test harmless -m default
      cai test my.yaml -m runs/my_run/model -b default --min-pass 0.8
      cai test my.yaml -m default --principle kind
    """
    from cai_kit.engines import parse_engine_options
    from cai_kit.evaluation.constitution_tests import below, run_tests, table
    from cai_kit.evaluation.options import make_options

    kwargs["engine_options"] = parse_engine_options(kwargs.pop("engine_option"), kwargs.pop("base_urls"))
    options = make_options(**{k: v for k, v in kwargs.items() if v is not None})
    results = run_tests(constitution, options, list(principles) or None)
    click.echo(table(results, min_pass))
    click.echo(f"report: {results['options']['out']}/report.md")
    failing = below(results, min_pass) if min_pass is not None else []
    if failing:
        click.echo(f"below --min-pass {min_pass:g}: {', '.join(failing)}", err=True)
        raise SystemExit(1)


COMMANDS = [test_command]
