"""The `cai` command line: thin wrappers that parse, call one library function, and print."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cai_kit.errors import usage_errors

_usage_errors = usage_errors  # one line per problem on stderr, exit status 2


def _engine_flags(func):
    """`--engine-option KEY=VALUE` and `--base-url URL`, for the commands that load an engine."""
    url_help = "OpenAI-compatible server for --engine openai, e.g. http://127.0.0.1:8000/v1; repeatable."
    option_help = "Engine option, VALUE read as YAML (e.g. max_concurrency=32); repeatable. README: Scaling out."
    func = click.option("--base-url", "base_urls", multiple=True, metavar="URL", help=url_help)(func)
    return click.option("--engine-option", multiple=True, metavar="KEY=VALUE", help=option_help)(func)


def _licence_flags(whose: str):
    """`--model-licence` and `--accept-licence-risk`, for the commands whose outputs train a model."""

    def add(func):
        help_licence = (
            f"A model's licence where its card has none (a bare ID is {whose}). Repeatable; see `cai licence`."
        )
        func = click.option("--model-licence", multiple=True, metavar="[MODEL=]ID", help=help_licence)(func)
        risk_help = "Go ahead where a licence forbids training on a model's outputs."
        return click.option("--accept-licence-risk", is_flag=True, help=risk_help)(func)

    return add


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="cai-kit")
def main() -> None:
    """cai-kit: an open model critiques, revises and judges its own answers, then trains on them.

    \b
    Quickstart (CPU, embedded SmolLM2-135M-Instruct, no flags needed):
      cai generate --constitution constitutions/harmless.yaml
      cai train recipes/zephyr_cai.yaml
    \b
    Edit constitutions:   cai ls; cai cp harmless my.yaml; cai validate my.yaml
    """


@main.command()
@click.option("--constitution", "-c", required=True, type=click.Path(path_type=Path), help="Constitution YAML file.")
@click.option(
    "--prompts",
    "-p",
    multiple=True,
    help="Prompt set: shipped name, jsonl/json/csv/parquet file, or "
    "hf:NAME[:config][:split]. Repeatable. [default: red_team, helpful]",
)
@click.option("--column", default="prompt", help="Column that holds the prompt text.")
@click.option(
    "--model", "-m", default="default", help="'default' (embedded SmolLM2-135M-Instruct), a folder or a hub id."
)
@click.option("--engine", default="transformers", help="transformers, vllm, openai or auto.")
@_engine_flags
@click.option(
    "--out",
    "-o",
    type=click.Path(),
    help="Output folder; rerun with the same folder to resume. [default: runs/<constitution>-<time>]",
)
@click.option("--limit", type=click.IntRange(0), help="Prompts to process; 0 for all.  [default: 48]")
@click.option("--rounds", type=click.IntRange(1), default=1, help="Critique/revision rounds per prompt.")
@click.option("--seed", type=int, default=0)
@click.option("--max-new-tokens", type=click.IntRange(1), default=128)
@click.option("--batch-size", type=click.IntRange(1), default=32)
@click.option("--temperature", type=click.FloatRange(0), default=0.0, help="0 is greedy.")
@click.option(
    "--pairs",
    multiple=True,
    type=click.Choice(["revision", "contrast", "judge"]),
    help="How preference pairs are made: revision (critique/revision, SL-CAI), contrast (answers steered "
    "towards and away from a principle, RLCD) or judge (sampled answers ranked by a judge model, RL-CAI). "
    "Repeatable.  [default: revision]",
)
@click.option("--judge-model", help="--pairs judge: the open model that judges.  [default: --model]")
@click.option(
    "--judge-samples", type=click.IntRange(2), help="--pairs judge: answers sampled per prompt.  [default: 2]"
)
@click.option(
    "--judge-margin",
    type=click.FloatRange(0, 0.5),
    help="--pairs judge: drop pairs whose judged preference is within this of 0.5.  [default: 0.1]",
)
@click.option("--trust-judge", is_flag=True, help="--pairs judge: skip the judge-check gate and use the judge anyway.")
@click.option(
    "--judge-fallback",
    type=click.Choice(["revision", "contrast"]),
    help="--pairs judge: make these pairs instead when the judge fails its check (else the run stops).",
)
@click.option(
    "--few-shot", type=click.IntRange(0), default=2, help="Constitution examples shown before each critique."
)
@click.option("--push-to-hub", metavar="REPO", help="Upload the finished folder as a dataset repo (token: HF_TOKEN).")
@click.option("--match-examples", is_flag=True, help="Show the sampled principle's own examples first (slower).")
@click.option("--force-new", is_flag=True, help="Discard rows in --out written with another constitution or model.")
@click.option("--trust-remote-code", is_flag=True, help="Run the model repository's own code (off: safer).")
@_licence_flags("--model's")
@_usage_errors
def generate(**kwargs) -> None:
    """Answer prompts, critique and revise the answers against a constitution, write SFT and preference data.

    \b
    Example:
      cai generate --constitution constitutions/harmless.yaml --limit 16 --out runs/demo
      cai generate -c constitutions/helpful.yaml -p helpful -p my_prompts.jsonl --rounds 2
    """
    from cai_kit.engines import parse_engine_options
    from cai_kit.generate import GenerateOptions, run_generate
    from cai_kit.licence_guard import parse_overrides

    kwargs["model_licences"] = parse_overrides(kwargs.pop("model_licence"), kwargs["model"])
    kwargs["engine_options"] = parse_engine_options(kwargs.pop("engine_option"), kwargs.pop("base_urls"))
    kwargs["prompts"] = list(kwargs["prompts"]) or None
    kwargs["pairs"] = list(kwargs["pairs"]) or None
    kwargs["constitution"] = str(kwargs["constitution"])
    out = run_generate(GenerateOptions(**{k: v for k, v in kwargs.items() if v is not None}))
    click.echo(str(out))


@main.command(name="eval")
@click.option("--model", "-m", default="default", help="Model to evaluate: 'default', a folder or a hub id.")
@click.option("--baseline", "-b", help="Model before training, scored alongside; needed for the helpful win rate.")
@click.option(
    "--suite",
    "-s",
    "suites",
    multiple=True,
    default=["all"],
    help="harmful, over_refusal, helpful or all. Repeatable.",
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
    "[default: eval/harmful, eval/over_refusal, eval/helpful]",
)
@click.option("--limit", type=click.IntRange(0), help="Prompts per suite, spread over categories; 0 or unset: all.")
@click.option(
    "--constitution",
    "-c",
    help="Constitution whose judge questions the helpful judge asks. [default: constitutions/helpful.yaml]",
)
@click.option("--engine", default="transformers", help="transformers, vllm, openai or auto.")
@_engine_flags
@click.option("--batch-size", type=click.IntRange(1), default=32)
@click.option("--max-new-tokens", type=click.IntRange(1), default=128)
@click.option("--seed", type=int, default=0)
@click.option(
    "--out",
    "-o",
    type=click.Path(),
    help="Report folder; answers cached there are reused on rerun. [default: runs/eval-<time>]",
)
@click.option("--trust-remote-code", is_flag=True, help="Run the model repository's own code (off: safer).")
@_usage_errors
def eval_command(**kwargs) -> None:
    """Score harm, over-refusal and helpfulness of a model against its baseline; write a report with plots.

    \b
    Example:
      cai eval --model default --suite all --limit 20 --out runs/eval-base
      cai eval -m runs/train/final -b default --judge-model default --out runs/eval-after
      cai eval -m my_model -s harmful -p hf:walledai/HarmBench:standard:train --limit 50
    """
    from cai_kit.engines import parse_engine_options
    from cai_kit.eval_report import summary_table
    from cai_kit.evaluate import make_options, parse_prompt_overrides, run_eval

    kwargs["engine_options"] = parse_engine_options(kwargs.pop("engine_option"), kwargs.pop("base_urls"))
    kwargs["prompts"] = parse_prompt_overrides(list(kwargs["prompts"]), list(kwargs["suites"]))
    kwargs["suites"] = list(kwargs["suites"])
    results = run_eval(make_options(**{k: v for k, v in kwargs.items() if v is not None}))
    click.echo(summary_table(results))
    click.echo(f"report: {results['options']['out']}/report.md")


@main.command(name="judge-check")
@click.option("--judge-model", default="default", help="Judge model: 'default', a folder or a hub id.")
@click.option(
    "--constitution", "-c", help="Constitution whose judge questions are asked. [default: one general question]"
)
@click.option("--limit", type=click.IntRange(0), help="Pairs to judge, spread over the kinds; 0 or unset: all.")
@click.option("--cot", is_flag=True, help="The judge reasons first; label probabilities clamped to 0.4-0.6.")
@click.option("--out", "-o", help="Folder for results.json. [default: runs/judge-check-<time>]")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), default=0.65, help="PASS needs at least this accuracy.")
@click.option("--min-consistency", type=click.FloatRange(0, 1), default=0.6, help="...and this order consistency.")
@click.option("--engine", default="transformers", help="transformers, vllm, openai or auto.")
@click.option("--batch-size", type=click.IntRange(1), default=32)
@click.option("--trust-remote-code", is_flag=True, help="Run the model repository's own code (off: safer).")
@_usage_errors
def judge_check(**kwargs) -> None:
    """Measure a judge model on pairs with a known better answer; exit status 1 when it fails the thresholds.

    \b
    Example:
      cai judge-check --judge-model default
      cai judge-check --judge-model my_judge_folder -c constitutions/harmless.yaml --cot --limit 30
    """
    from cai_kit.judge_check import JudgeCheckOptions, format_table, run_judge_check

    results = run_judge_check(JudgeCheckOptions(**kwargs))
    click.echo(format_table(results))
    click.echo(f"results: {results['options']['out']}/results.json")
    sys.exit(0 if results["passed"] else 1)


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a recipe value (parsed as YAML); repeatable.",
)
@click.option("--stages", default=None, help="Subset of generate,sft,dpo,eval [default: the recipe's].")
@_licence_flags("the recipe model's")
@_usage_errors
def train(
    recipe: Path,
    overrides: tuple[str, ...],
    stages: str | None,
    model_licence: tuple[str, ...],
    accept_licence_risk: bool,
) -> None:
    """Run a recipe: generate, SFT, DPO, eval; finished stages are skipped and trainers resume on rerun.

    \b
    Example:
      cai train recipes/zephyr_cai.yaml
      cai train recipes/tiny.yaml --set sft.trl.max_steps=4 --stages sft,dpo
    """
    from cai_kit.licence_guard import parse_overrides
    from cai_kit.recipe import load_recipe, parse_stages
    from cai_kit.train import run_train

    loaded = load_recipe(recipe, overrides + (("accept_licence_risk=true",) if accept_licence_risk else ()))
    loaded.model_licences.update(parse_overrides(model_licence, loaded.model))
    click.echo(run_train(loaded, parse_stages(stages) if stages else None))


@main.command(name="licence")
@click.argument("models", nargs=-1, required=True)
@click.option("--target", "-t", help="A model to be trained on their outputs: print the guard's verdict for each.")
@click.option("--model-licence", multiple=True, metavar="MODEL=ID", help="A model's licence where its card has none.")
@_usage_errors
def licence(models: tuple[str, ...], target: str | None, model_licence: tuple[str, ...]) -> None:
    """Print each model's licence (from its card, or an override) and what it lets its outputs train.

    \b
    Example:
      cai licence default
      cai licence ./llama-2-7b-chat --target default
    """
    from cai_kit.licence_guard import licence_report, parse_overrides

    bare_for = models[0] if len(models) == 1 else None
    click.echo(licence_report(list(models), target, parse_overrides(model_licence, bare_for)))


from cai_kit.cli_authoring import COMMANDS as AUTHORING_COMMANDS  # noqa: E402  (constitution, schema, try, diff, view)
from cai_kit.cli_files import COMMANDS as FILE_COMMANDS  # noqa: E402  (validate, ls, cp, env)

for command in FILE_COMMANDS + AUTHORING_COMMANDS:
    main.add_command(command)


if __name__ == "__main__":
    main()
