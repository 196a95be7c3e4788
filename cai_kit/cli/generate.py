"""`cai generate`: parse the flags into GenerateOptions, run the stage, print the folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cai_kit.cli.flags import (
    default,
    engine_flags,
    flag_name,
    licence_flags,
    options_table,
    schema_options,
    schema_values,
)
from cai_kit.core.errors import UsageError, usage_errors
from cai_kit.generation.options import GenerateOptions

G = GenerateOptions
# Fields whose flags other commands share, hand-written in flags.py, and the flags they are set with (the docs'
# option table names these).
SHARED = {
    "engine_options": "--engine-option KEY=VALUE, --base-url URL",
    "model_licences": "--model-licence [MODEL=]ID",
    "accept_licence_risk": "--accept-licence-risk",
}
# Every other field of GenerateOptions is a flag of its own, named for it; here only short names and click types.
FLAGS: dict[str, dict[str, Any]] = {
    "constitution": {"short": ("-c",), "type": click.Path(path_type=Path)},
    "prompts": {"short": ("-p",)},
    "model": {"short": ("-m",)},
    "out": {"short": ("-o",), "type": click.Path()},
    "push_to_hub": {"metavar": "REPO"},
}


@click.command()
@schema_options(G, set(SHARED), FLAGS)
@engine_flags
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
    from pydantic import ValidationError

    from cai_kit.engines import parse_engine_options
    from cai_kit.generation.generate import run_generate
    from cai_kit.licensing.licence_guard import parse_overrides

    kwargs["model_licences"] = parse_overrides(kwargs.pop("model_licence"), kwargs["model"] or default(G, "model"))
    kwargs["engine_options"] = parse_engine_options(kwargs.pop("engine_option"), kwargs.pop("base_urls"))
    kwargs["constitution"] = str(kwargs["constitution"])
    try:
        options = GenerateOptions(**schema_values(G, kwargs))
    except ValidationError as err:  # click checks types, ranges and choices first: this is what is left
        raise UsageError([f"{flag_name(str(error['loc'][0]))}: {error['msg']}" for error in err.errors()]) from None
    out = run_generate(options)
    click.echo(str(out))


def options_markdown() -> str:
    """The option table of docs/cli.md (tests/test_options_once.py checks that the page holds this)."""
    return options_table(G, SHARED, FLAGS)


COMMANDS = [generate]
