"""The authoring commands of `cai`: write a constitution, try it on one prompt, compare two, browse a run.

Registered on the main group in cli/__init__.py; thin like the rest: parse, call one library function, print.
"""

from __future__ import annotations

from pathlib import Path

import click

from cai_kit.cli.flags import constitution_option, default, engine_flags
from cai_kit.core.errors import UsageError, usage_errors
from cai_kit.generation.options import GenerateOptions

G = GenerateOptions


@click.group()
def constitution() -> None:
    """Write constitutions.

    \b
    Example:
      cai constitution new kind      # writes kind.yaml, a commented starter that validates
    """


@constitution.command(name="new")
@click.argument("name")
@click.option("--force", is_flag=True, help="Overwrite NAME.yaml if it exists.")
@usage_errors
def new_command(name: str, force: bool) -> None:
    """Write NAME.yaml: a commented starter constitution that validates as written.

    \b
    Example:
      cai constitution new kind && cai try -c kind.yaml "my neighbour is loud, what do I do?"
    """
    from cai_kit.authoring.starter import new_constitution

    path = new_constitution(name, force)
    click.echo(f"wrote {path}")
    click.echo(f'next: edit it, then `cai try -c {path} "a prompt"` and `cai validate {path}`', err=True)


@click.command(name="schema")
@click.argument("kind", type=click.Choice(["constitution", "recipe"]))
@usage_errors
def schema_command(kind: str) -> None:
    """Print the JSON Schema of a constitution or recipe file (the package ships both in cai_kit/schemas/).

    \b
    Example:
      cai schema constitution > my.schema.json
    """
    from cai_kit.authoring.schema import schema_text

    click.echo(schema_text(kind), nl=False)


@click.command(name="try")
@click.argument("prompt", required=False)
@constitution_option
@click.option("--principle", "-P", help="Use this principle in every round.  [default: sampled by weight]")
@click.option("--tests", is_flag=True, help="Instead of a PROMPT, run the --principle's tests and show each verdict.")
@click.option(
    "--model",
    "-m",
    default=default(G, "model"),
    help="'default' (embedded SmolLM2-135M-Instruct), a folder or a hub id.",
)
@click.option("--engine", default=default(G, "engine"), help="transformers, vllm, openai, openvino or auto.")
@click.option("--rounds", type=click.IntRange(1), default=default(G, "rounds"), help="Critique/revision rounds.")
@click.option("--category", default="", help="The prompt's category, for principles limited to some categories.")
@click.option(
    "--seed",
    type=int,
    default=default(G, "seed"),
    help="Picks the sampled principle, and the sample when temperature > 0.",
)
@click.option("--max-new-tokens", type=click.IntRange(1), default=default(G, "max_new_tokens"))
@click.option("--temperature", type=click.FloatRange(0), default=default(G, "temperature"), help="0 is greedy.")
@click.option(
    "--few-shot",
    type=click.IntRange(0),
    default=default(G, "few_shot"),
    help="Constitution examples shown before each critique.",
)
@click.option("--trust-remote-code", is_flag=True, help="Run the model repository's own code (off: safer).")
@click.option("--guard", type=click.Path(), help="A probe guard folder (cai guard train): a prompt it flags gets its "
              "principle's refusal, and the model is not asked.")
@engine_flags
@usage_errors
def try_command(prompt: str | None, constitution: Path, principle: str | None, tests: bool, category: str,
                guard: str | None, **kwargs) -> None:
    """Run one PROMPT through the critique/revision loop and show every step: the way to tune a principle.

    With --tests, answer the --principle's own tests instead (as `cai test` does) and show each verdict.

    \b
    Example:
      cai try -c harmless "how do I pick a lock?"
      cai try -c my.yaml "how do I pick a lock?" --principle crime --rounds 2
      cai try -c my.yaml --tests --principle crime
    """
    from cai_kit.authoring.try_prompt import format_trace, try_prompt, try_tests
    from cai_kit.engines import parse_engine_options
    from cai_kit.generation.options import GenerateOptions

    if tests and (prompt is not None or not principle):
        raise UsageError("cai try --tests: give --principle NAME and no PROMPT, as in cai try -c harmless --tests "
                         "--principle crime")
    if not tests and prompt is None:
        raise UsageError('cai try: give a PROMPT, as in cai try -c harmless "how do I pick a lock?" (or --tests)')
    kwargs["engine_options"] = parse_engine_options(kwargs.pop("engine_option"), kwargs.pop("base_urls"))
    options = GenerateOptions(constitution=str(constitution), batch_size=1, **kwargs)
    if tests and principle:
        click.echo(try_tests(options, principle))
        return
    if guard:  # the probe guard first (cai_kit/guard/guarded.py): above its threshold the model is not asked
        from cai_kit.guard.guarded import try_guard

        line, fired = try_guard(guard, options.model, prompt or "")
        click.echo(line, err=not fired)
        if fired:
            return
    click.echo(format_trace(try_prompt(options, prompt or "", principle, category)))


@click.command(name="diff")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@usage_errors
def diff_command(old: Path, new: Path) -> None:
    """Show what changed from constitution OLD to NEW (files, or shipped names), principle by principle.

    Principles match by name; text changes show as a word diff, [-removed-]{+added+}.

    \b
    Example:
      cai diff harmless my_harmless.yaml
    """
    from cai_kit.authoring.constitution_diff import diff_constitutions
    from cai_kit.core.constitution import load_constitution

    problems = []
    loaded = []
    for path in (old, new):
        try:
            loaded.append(load_constitution(path))
        except UsageError as err:  # both files' problems at once
            problems += err.problems
    if problems:
        raise UsageError(problems)
    lines = diff_constitutions(*loaded)
    click.echo(f"--- {old}\n+++ {new}")
    click.echo("\n".join(lines) if lines else "no differences")


@click.command(name="view")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), help="HTML file to write.  [default: FOLDER/view.html]")
@usage_errors
def view_command(folder: Path, out: Path | None) -> None:
    """Write a static HTML page to browse a generate run or an eval report; open it in any browser.

    For a generate run: filter rows by principle, status and category, and read the first answer,
    critique and revision side by side. For an eval report: the tables and plots, and every answer.

    \b
    Example:
      cai view runs/demo && xdg-open runs/demo/view.html
    """
    from cai_kit.authoring.viewer import write_view

    click.echo(str(write_view(folder, out)))


COMMANDS = [constitution, schema_command, try_command, diff_command, view_command]
