"""What a request the engine could not answer does to a `cai generate` run.

An engine hands such a request back as a completion with finish_reason "error" whose text says why (the
openai engine after its retries: HTTP 500, a timeout, an answer that is not JSON). That text is not an
answer: passed on, it was critiqued and revised as one, and a run of nothing but failures ended with
exit status 0. With `on_error: stop` (the default) the first failure ends the run: `StopOnError` raises
`EngineFailed`, the chunk in progress is dropped, every row finished before it stays on disk, and a
rerun resumes. With `on_error: skip` the pair modes write the row with finish_reason "error", empty answers
and the reason in `error`, and send nothing of it on; the next run generates it again.
"""

from __future__ import annotations

from typing import Any

from cai_kit.engines import Completion, Conversation, Engine, GenParams


class EngineFailed(Exception):
    """A request the engine could not answer, with `on_error: stop`."""


class StopOnError:
    """An engine whose failed requests raise EngineFailed instead of coming back as completions."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.model_name = getattr(engine, "model_name", "")

    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        replies = self.engine.generate(conversations, params)
        for reply in replies:
            if reply.finish_reason == "error":
                raise EngineFailed(reply.text)
        return replies

    def __getattr__(self, name: str) -> Any:  # logprobs, close, generated_tokens: the engine's own
        return getattr(self.engine, name)


def first_error(*completions: Completion) -> str | None:
    """The text of the first failed completion (why it failed), or None when every one was answered."""
    return next((c.text or "no reason given" for c in completions if c.finish_reason == "error"), None)


def stopped_message(engine: str, reason: str, kept: int, folder: object) -> str:
    """The one line a run stopped by a failed request ends with."""
    return (
        f"engine {engine!r}: a request failed ({reason}); the {kept} rows finished so far are kept in {folder}: "
        "fix the server and rerun the same command to resume (or pass --on-error skip, `on_error: skip` in a "
        "recipe, to write such rows as errors and go on)"
    )
