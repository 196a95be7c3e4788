"""`cai diff A.yaml B.yaml`: what changed between two constitutions, principle by principle.

Principles are matched by name (a renamed principle shows as one removed and one added), examples
by their prompt, judge questions by their text. Changed text is shown as a word diff, `[-old-]{+new+}`,
with long unchanged stretches shortened, so a reworded critique reads in one line.
"""

from __future__ import annotations

import difflib
from typing import Any

import click

from cai_kit.core.constitution import Constitution, Example, Principle

TEXT_FIELDS = ("critique", "revision", "opening")
LIST_FIELDS = ("tags", "categories")
CONTEXT_WORDS = 5  # unchanged words kept on each side of a change


def word_diff(old: str | None, new: str | None) -> str:
    """`[-removed-]{+added+}` word diff of two texts, coloured where the terminal takes colour."""
    if old is None or new is None:
        return f"{_show(old)} -> {_show(new)}"
    a, b = old.split(), new.split()
    parts: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            same = a[i1:i2]
            if len(same) > 2 * CONTEXT_WORDS:
                head = same[:CONTEXT_WORDS] if i1 > 0 else []
                tail = same[-CONTEXT_WORDS:] if i2 < len(a) else []
                same = [*head, "...", *tail]
            parts += same
            continue
        if i2 > i1:
            parts.append(click.style(f"[-{' '.join(a[i1:i2])}-]", fg="red"))
        if j2 > j1:
            parts.append(click.style(f"{{+{' '.join(b[j1:j2])}+}}", fg="green"))
    return " ".join(parts)


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    text = " ".join(str(value).split())
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _shares(constitution: Constitution) -> dict[str, float]:
    total = sum(p.weight for p in constitution.principles)
    return {p.name: p.weight / total for p in constitution.principles}


def _principle_changes(old: Principle, new: Principle, old_share: float, new_share: float) -> list[str]:
    lines = []
    shares = f"{old_share:.0%} -> {new_share:.0%} of steps"
    if old.weight != new.weight:
        lines.append(f"weight: {old.weight:g} -> {new.weight:g} (sampled {shares})")
    elif abs(old_share - new_share) >= 0.005:
        lines.append(f"sampled {shares} (weight {old.weight:g} unchanged; other principles changed)")
    for field in TEXT_FIELDS:
        if getattr(old, field) != getattr(new, field):
            lines.append(f"{field}: {word_diff(getattr(old, field), getattr(new, field))}")
    for field in LIST_FIELDS:
        before, after = getattr(old, field), getattr(new, field)
        if before != after:
            added = [f"+{item}" for item in after if item not in before]
            removed = [f"-{item}" for item in before if item not in after]
            lines.append(f"{field}: {' '.join(added + removed) or 'reordered'} (now {after or '[]'})")
    return lines + _test_changes(old, new)


def _test_changes(old: Principle, new: Principle) -> list[str]:
    """Tests added, removed or changed (matched by prompt), one line each."""
    before, after = {t.prompt: t for t in old.tests}, {t.prompt: t for t in new.tests}
    lines = [click.style(f"- test {_show(t.prompt)} (expect {t.expect})", fg="red")
             for t in old.tests if t.prompt not in after]
    for test in new.tests:
        if test.prompt not in before:
            lines.append(click.style(f"+ test {_show(test.prompt)} (expect {test.expect})", fg="green"))
        elif before[test.prompt] != test:
            was = before[test.prompt]
            lines.append(click.style(f"~ test {_show(test.prompt)}", fg="yellow")
                         + f" expect {was.expect} -> {test.expect}" * (was.expect != test.expect)
                         + " phrases changed" * (was.model_dump() | {"expect": test.expect} != test.model_dump()))
    if lines:
        lines.insert(0, f"tests: {len(old.tests)} -> {len(new.tests)}")
    return lines


def _example_label(example: Example) -> str:
    about = f" ({example.principle})" if example.principle else ""
    return f"{_show(example.prompt)}{about}"


def diff_constitutions(a: Constitution, b: Constitution) -> list[str]:
    """Lines describing every difference from `a` to `b`; empty when they mean the same."""
    lines: list[str] = []
    for field in ("name", "description", "system_prompt"):
        if getattr(a, field) != getattr(b, field):
            lines.append(f"{field}: {word_diff(getattr(a, field), getattr(b, field))}")

    old = {p.name: p for p in a.principles}
    new = {p.name: p for p in b.principles}
    old_shares, new_shares = _shares(a), _shares(b)
    for name in [p.name for p in a.principles if p.name not in new]:
        lines.append(click.style(f"- principle {name!r}", fg="red") + f" (was {old_shares[name]:.0%} of steps)")
    for principle in b.principles:
        name = principle.name
        if name not in old:
            lines.append(click.style(f"+ principle {name!r}", fg="green") + f" ({new_shares[name]:.0%} of steps)")
            lines += [
                f"    {field}: {_show(getattr(principle, field))}"
                for field in TEXT_FIELDS
                if getattr(principle, field)
            ]
            lines += [f"    tests: {len(principle.tests)}"] if principle.tests else []
            continue
        changes = _principle_changes(old[name], principle, old_shares[name], new_shares[name])
        if changes:
            lines.append(click.style(f"~ principle {name!r}", fg="yellow"))
            lines += [f"    {change}" for change in changes]
    common_old = [p.name for p in a.principles if p.name in new]
    common_new = [p.name for p in b.principles if p.name in old]
    if common_old != common_new:
        lines.append("principles reordered (order matters only for reading; sampling goes by weight)")

    lines += [click.style(f"- judge: {_show(q)}", fg="red") for q in a.judge if q not in b.judge]
    lines += [click.style(f"+ judge: {_show(q)}", fg="green") for q in b.judge if q not in a.judge]

    old_examples = {e.prompt: e for e in a.examples}
    new_examples = {e.prompt: e for e in b.examples}
    for example in a.examples:
        if example.prompt not in new_examples:
            lines.append(click.style(f"- example {_example_label(example)}", fg="red"))
    for example in b.examples:
        before = old_examples.get(example.prompt)
        if before is None:
            lines.append(click.style(f"+ example {_example_label(example)}", fg="green"))
        elif before != example:
            lines.append(click.style(f"~ example {_show(example.prompt)}", fg="yellow"))
            for field in ("answer", "critique", "revision", "principle"):
                if getattr(before, field) != getattr(example, field):
                    lines.append(f"    {field}: {word_diff(getattr(before, field), getattr(example, field))}")
    return lines
