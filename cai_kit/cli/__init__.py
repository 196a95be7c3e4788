"""The `cai` command line: thin wrappers that parse, call one library function, and print.

One module per group of commands: generate, eval, judge (judge-check), train (train, plot, licence), files
(validate, ls, cp, env), authoring (constitution, schema, try, diff, view) and constitution_tests (test).
"""

from __future__ import annotations

import click

from cai_kit import __version__
from cai_kit.cli import authoring, constitution_tests, files, generate, guard, judge, train
from cai_kit.cli import eval as eval_commands


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(version=__version__, prog_name="cai-kit")
def main() -> None:
    """cai-kit: an open model critiques, revises and judges its own answers, then trains on them.

    \b
    Quickstart (CPU, embedded SmolLM2-135M-Instruct, no flags needed):
      cai generate --constitution harmless
      cai train zephyr_cai
    \b
    Edit constitutions:   cai ls; cai cp harmless my.yaml; cai validate my.yaml
    Test them:            cai test my.yaml -m default
    """


for module in (generate, eval_commands, judge, train, files, authoring, constitution_tests, guard):
    for command in module.COMMANDS:
        main.add_command(command)


if __name__ == "__main__":
    main()
