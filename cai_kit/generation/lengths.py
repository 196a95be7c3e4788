"""Prompts and principles checked against the model's context before `cai generate` or `cai try` generates.

The longest conversation the critique/revision loop builds is the revision request: the system prompt, the
few-shot examples, the prompt, the answer, the critique request, the critique, the revision request and the
principle's opening, then the revision; three replies of up to max_new_tokens each. Rounds do not make it
longer (each round starts again from the last revision). Contrast and judge pairs build shorter ones (one
steering message and one reply; or two answers under the judge's question), so this one bounds every mode.
`cai_kit/engines/context.py` counts it.
"""

from __future__ import annotations

from cai_kit.core.config_file import line_of, read_yaml
from cai_kit.core.constitution import Constitution, Principle
from cai_kit.core.errors import UsageError, capped
from cai_kit.core.prompt_sets import PromptRow
from cai_kit.engines import Conversation
from cai_kit.engines.context import ContextBudget, too_long
from cai_kit.generation.loop import few_shot_turns
from cai_kit.generation.options import GenerateOptions
from cai_kit.generation.rows import assistant, system_turns, user
from cai_kit.prompts import render

REPLIES = 3  # the answer, the critique and the revision
Frame = tuple[Conversation, Conversation]  # the turns before the prompt, and after it


def around_prompt(constitution: Constitution, principle: Principle, options: GenerateOptions) -> Frame:
    """The turns before and after the prompt in its revision request under `principle`. The answer and the
    critique are left empty: they are generated, and counted as max_new_tokens each."""
    before = system_turns(constitution) + few_shot_turns(
        constitution, principle, options.few_shot, options.match_examples
    )
    after = [
        assistant(""),
        user(render("critique_request", principle=principle)),
        assistant(""),
        user(render("revision_request", principle=principle)),
    ]
    return before, after + ([assistant(principle.opening)] if principle.opening else [])


def check_lengths(
    options: GenerateOptions,
    constitution: Constitution,
    prompts: list[PromptRow],
    principles: list[Principle] | None = None,
) -> None:
    """UsageError with one line per principle, then per prompt, whose longest conversation does not fit the
    model's context; nothing when all fit or the limit is unknown (the openai engine). `principles` are the
    ones a prompt may get (default: the constitution's, by each prompt's category as sampling picks them)."""
    budget = ContextBudget(options.engine, options.model, options.trust_remote_code)
    if budget.limit is None:
        return
    new_tokens = REPLIES * options.max_new_tokens
    generated = f"{REPLIES} x max_new_tokens {options.max_new_tokens} to generate"
    frames = {p.name: around_prompt(constitution, p, options) for p in principles or constitution.principles}
    problems = []
    for index, principle in enumerate(constitution.principles):
        needed = budget.over(_with(frames[principle.name], ""), new_tokens) if principle.name in frames else None
        if needed:  # too long whatever the prompt: said once, not once per prompt
            why = f"its critique/revision conversation before any prompt, with {generated}"
            problems.append(
                too_long(_principle_at(constitution, index), f"principle {principle.name!r}", needed, budget, why)
            )
            del frames[principle.name]
    sizes = {name: budget.bound(_with(frame, "")) for name, frame in frames.items()}
    by_name = {p.name: p for p in constitution.principles}
    for row in prompts:
        candidates = [name for name in frames if _may_get(row, by_name[name])] or list(frames)
        if not candidates:
            continue
        worst = max(candidates, key=sizes.__getitem__)
        needed = budget.over(_with(frames[worst], row.prompt), new_tokens)
        if needed:
            problems.append(
                too_long(
                    row.where or row.source,
                    f"prompt {row.id!r}",
                    needed,
                    budget,
                    f"in its longest critique/revision conversation, with {generated}",
                )
            )
    if problems:
        raise UsageError(capped(problems))


def _principle_at(constitution: Constitution, index: int) -> str:
    """`file:line: principles[i]` (the file is read again for its line map; only when one is too long)."""
    if not constitution.path:
        return f"{constitution.name}: principles[{index}]"
    _, lines = read_yaml(constitution.path)
    return f"{constitution.path}:{line_of(lines, ('principles', index))}: principles[{index}]"


def _with(frame: Frame, prompt: str) -> Conversation:
    before, after = frame
    return [*before, user(prompt), *after]


def _may_get(row: PromptRow, principle: Principle) -> bool:
    # As Constitution.principle_for samples: a principle limited to categories is for prompts of those.
    return not row.category or not principle.categories or row.category in principle.categories
