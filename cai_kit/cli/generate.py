"""`cai generate`: parse the flags into GenerateOptions, run the stage, print the folder."""

from __future__ import annotations

import click

from cai_kit.cli.flags import constitution_option, default, engine_flags, licence_flags, shown
from cai_kit.core.errors import usage_errors
from cai_kit.generation.options import PAIR_MODES, GenerateOptions

G = GenerateOptions


@click.command()
@constitution_option
@click.option(
    "--prompts",
    "-p",
    multiple=True,
    help="Prompt set: shipped name, jsonl/json/csv/parquet file, or hf:NAME[:config][:split]. Repeatable."
    + shown(G, "prompts"),
)
@click.option("--column", default=default(G, "column"), help="Column that holds the prompt text.")
@click.option(
    "--model",
    "-m",
    default=default(G, "model"),
    help="'default' (embedded SmolLM2-135M-Instruct), a folder or a hub id.",
)
@click.option("--engine", default=default(G, "engine"), help="transformers, vllm, openai, openvino or auto.")
@engine_flags
@click.option(
    "--out",
    "-o",
    type=click.Path(),
    help="Output folder; rerun with the same folder to resume. [default: runs/<constitution>-<time>]",
)
@click.option("--limit", type=click.IntRange(0), help="Prompts to process; 0 for all." + shown(G, "limit"))
@click.option("--rounds", type=click.IntRange(1), default=default(G, "rounds"), help="Critique/revision rounds.")
@click.option("--seed", type=int, default=default(G, "seed"))
@click.option("--max-new-tokens", type=click.IntRange(1), default=default(G, "max_new_tokens"))
@click.option("--batch-size", type=click.IntRange(1), default=default(G, "batch_size"))
@click.option("--temperature", type=click.FloatRange(0), default=default(G, "temperature"), help="0 is greedy.")
@click.option(
    "--pairs",
    multiple=True,
    type=click.Choice(PAIR_MODES),
    help="How preference pairs are made: revision (critique/revision, SL-CAI), contrast (answers steered "
    "towards and away from a principle, RLCD) or judge (sampled answers ranked by a judge model, RL-CAI). "
    "Repeatable." + shown(G, "pairs"),
)
@click.option("--judge-model", help="--pairs judge: the open model that judges.  [default: --model]")
@click.option(
    "--judge-samples",
    type=click.IntRange(2),
    help="--pairs judge: answers sampled per prompt." + shown(G, "judge_samples"),
)
@click.option(
    "--judge-margin",
    type=click.FloatRange(0, 0.5),
    help="--pairs judge: drop pairs whose judged preference is within this of 0.5." + shown(G, "judge_margin"),
)
@click.option("--trust-judge", is_flag=True, help="--pairs judge: skip the judge-check gate and use the judge anyway.")
@click.option(
    "--judge-fallback",
    type=click.Choice(["revision", "contrast"]),
    help="--pairs judge: make these pairs instead when the judge fails its check (else the run stops).",
)
@click.option(
    "--few-shot",
    type=click.IntRange(0),
    default=default(G, "few_shot"),
    help="Constitution examples shown before each critique.",
)
@click.option("--push-to-hub", metavar="REPO", help="Upload the finished folder as a dataset repo (token: HF_TOKEN).")
@click.option("--match-examples", is_flag=True, help="Show the sampled principle's own examples first (slower).")
@click.option(
    "--on-error",
    type=click.Choice(["stop", "skip"]),
    default=default(G, "on_error"),
    help="A request the engine could not answer after its retries: stop the run (the rows so far are kept; rerun "
    "to resume) or write its row as an error (never trained on) and go on.",
)
@click.option("--force-new", is_flag=True, help="Discard rows in --out written with another constitution or model.")
@click.option("--trust-remote-code", is_flag=True, help="Run the model repository's own code (off: safer).")
@licence_flags("--model's")
@usage_errors(resume="the rows finished so far are kept: rerun the same command, with --out set to the folder named "
              "above, to resume")
def generate(**kwargs) -> None:
    """Answer prompts, critique and revise the answers against a constitution, write SFT and preference data.

    \b
    Example:
      cai generate --constitution harmless --limit 16 --out runs/demo
      cai generate -c my_constitution.yaml -p helpful -p my_prompts.jsonl --rounds 2
    """
    from cai_kit.engines import parse_engine_options
    from cai_kit.generation.generate import run_generate
    from cai_kit.licensing.licence_guard import parse_overrides

    kwargs["model_licences"] = parse_overrides(kwargs.pop("model_licence"), kwargs["model"])
    kwargs["engine_options"] = parse_engine_options(kwargs.pop("engine_option"), kwargs.pop("base_urls"))
    kwargs["prompts"] = list(kwargs["prompts"]) or None
    kwargs["pairs"] = list(kwargs["pairs"]) or None
    kwargs["constitution"] = str(kwargs["constitution"])
    out = run_generate(GenerateOptions(**{k: v for k, v in kwargs.items() if v is not None}))
    click.echo(str(out))


COMMANDS = [generate]
