"""`cai try`: one prompt through the critique/revision loop, printed for a person to read.

The fast way to tune a principle: edit its text, run one prompt through it with `--principle`, read
the critique and the revision, repeat. It runs the same `critique_and_revise` as `cai generate`, and
says whether `cai generate`'s filters would keep the result.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from typing import Any

import click
from pydantic import PrivateAttr

from cai_kit.core.constitution import Constitution, Principle, load_constitution
from cai_kit.core.errors import UsageError
from cai_kit.core.prompt_sets import PromptRow
from cai_kit.engines import load_engine
from cai_kit.generation.failures import EngineFailed, StopOnError
from cai_kit.generation.filters import Candidate, row_status
from cai_kit.generation.lengths import check_lengths
from cai_kit.generation.loop import critique_and_revise
from cai_kit.generation.options import FILTERS, HELPING_TAGS, GenerateOptions


class _Pinned(Constitution):
    """The constitution with every critique/revision step given one principle (`--principle`)."""

    _pinned: str = PrivateAttr(default="")

    def principle_for(self, prompt_id: str, round_index: int, seed: int, category: str = "") -> Principle:
        return self.get(self._pinned)


def pin(constitution: Constitution, name: str) -> Constitution:
    """A copy of `constitution` that always picks principle `name`; UsageError listing the names if none."""
    constitution.get(name)  # an unknown name fails here, before any model loads
    pinned = _Pinned.model_validate(constitution.model_dump())
    pinned._pinned, pinned._path, pinned._sha256 = name, constitution.path, constitution.sha256
    return pinned


def try_prompt(
    options: GenerateOptions, prompt: str, principle: str | None = None, category: str = ""
) -> dict[str, Any]:
    """Run one prompt through `options.rounds` critique/revision rounds; return the row with its filter `status`."""
    if not prompt.strip():
        raise UsageError('cai try: the prompt is empty: give the text to try, as in cai try -c harmless "how do I '
                         'pick a lock?"')
    constitution = load_constitution(options.constitution)
    if principle:
        constitution = pin(constitution, principle)
    asked = PromptRow("try", prompt, category, "cai try", where="cai try")
    check_lengths(options, constitution, [asked], [constitution.get(principle)] if principle else None)
    print(f"cai try: loading {options.model} ...", file=sys.stderr)
    engine = load_engine(
        options.engine,
        options.model,
        batch_size=1,
        trust_remote_code=options.trust_remote_code,
        **options.engine_options,
    )
    try:  # a failed request's text says why it failed: it is not an answer to critique or revise
        row = critique_and_revise(StopOnError(engine), constitution, [asked], options)[0]
    except EngineFailed as err:
        raise UsageError(f"engine {options.engine!r}: the request failed ({err})") from None
    finally:
        engine.close()
    last = constitution.get(row["steps"][-1]["principle"])
    helping = bool(HELPING_TAGS & set(last.tags))
    candidate = Candidate(prompt=row["prompt"], final=row["final"], initial=row["initial"],
                          finish_reason=row["finish_reason"], helping=helping, examples=constitution.examples)
    row["status"] = row_status(candidate, FILTERS)
    row["pinned"] = bool(principle)
    return row


def try_tests(options: GenerateOptions, principle: str) -> str:
    """`cai try --tests`: the principle's tests answered by `options.model` (as `cai test` does), each verdict
    and the principle's row. Nothing is kept: the answers go to a temporary folder."""
    import tempfile

    from cai_kit.evaluation.constitution_tests import format_tests, run_tests, table
    from cai_kit.evaluation.options import make_options

    with tempfile.TemporaryDirectory(prefix="cai-try-") as out:
        settings = make_options(model=options.model, engine=options.engine, engine_options=options.engine_options,
                                max_new_tokens=options.max_new_tokens, seed=options.seed, out=out,
                                trust_remote_code=options.trust_remote_code)
        results = run_tests(options.constitution, settings, [principle])
    return f"{format_tests(results)}\n\n{table(results)}"


def _block(title: str, text: str, width: int, colour: str) -> list[str]:
    lines = [click.style(title, fg=colour, bold=True)]
    for paragraph in (text.strip() or "(empty)").splitlines() or [""]:
        lines += textwrap.wrap(paragraph, width=width, initial_indent="  ", subsequent_indent="  ") or [""]
    return lines + [""]


def format_trace(row: dict[str, Any], width: int | None = None) -> str:
    """The prompt, the first answer, then per round the principle, its critique and the revision."""
    width = width or min(shutil.get_terminal_size((100, 24)).columns, 120)
    lines = _block("PROMPT", row["prompt"], width, "white") + _block("INITIAL ANSWER", row["initial"], width, "blue")
    how = "forced with --principle" if row.get("pinned") else "sampled by weight"
    for number, step in enumerate(row["steps"], start=1):
        title = textwrap.wrap(f"-- round {number}: principle '{step['principle']}' ({how})", width=width)
        title[-1] = f"{title[-1]} ".ljust(width, "-")[: max(width, len(title[-1]))]
        lines += [click.style(line, fg="magenta", bold=True) for line in title] + [""]
        lines += _block("CRITIQUE", step["critique"], width, "yellow")
        lines += _block("REVISION", step["revision"], width, "green")
    if row["status"] == "ok":
        verdict = click.style("kept", fg="green", bold=True)
    else:
        verdict = click.style(f"filtered ({row['status']})", fg="red", bold=True)
    lines += [f"cai generate filters: {verdict}", f"finish reason: {row['finish_reason']}"]
    return "\n".join(lines)
