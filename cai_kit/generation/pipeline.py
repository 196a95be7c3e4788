"""Rows in flight: how the chunks of a generate run are handed to the engine and come back to be written.

A local engine (transformers, openvino, vllm) batches: it takes a chunk of `batch_size` prompts, and each step
of the chunk (first answers, critiques, revisions) waits for its slowest row. An engine that serves concurrent
requests (the openai engine, `concurrent = True`) gets chunks of one row from `batch_size` threads instead:
each row goes on to its next step as soon as its last one returns, and is written as it finishes, so no
server waits for another row's slowest request (llm-swarm's per-row chains). `--lockstep` keeps the chunks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from itertools import islice
from typing import Any

from cai_kit.core.prompt_sets import PromptRow

Rows = list[dict[str, Any]]
Work = Callable[[str, list[PromptRow]], Rows]


def finished_rows(work: Work, pending: Sequence[tuple[str, list[PromptRow]]], batch_size: int,
                  concurrent: bool) -> Generator[Rows, None, None]:
    """`work(mode, chunk)` over every pending row, yielding rows as they finish: chunks of `batch_size` in order,
    or, for a concurrent engine, rows one by one from `batch_size` threads."""
    if concurrent:
        return as_finished(work, [(mode, [row]) for mode, rows in pending for row in rows], batch_size)
    chunks = [(mode, rows[start : start + batch_size]) for mode, rows in pending
              for start in range(0, len(rows), batch_size)]
    return (work(mode, chunk) for mode, chunk in chunks)


GATHER_S = 0.05  # rows finishing this close together are appended together


def as_finished(
    work: Callable[[str, list[PromptRow]], list[dict[str, Any]]],
    chunks: Iterable[tuple[str, list[PromptRow]]],
    in_progress: int,
) -> Generator[list[dict[str, Any]], None, None]:
    """`work(mode, chunk)` for every chunk from `in_progress` threads, yielding finished rows in the order they
    finish (the caller writes them, from this one thread). Rows that finish within GATHER_S of the first come
    together, in the chunks' order, so one append (one fsync per file) takes them, and only then do as many
    new chunks start: `in_progress` counts the rows not yet handed back. After a failure no chunk is started;
    the ones in progress finish and are yielded, then the first failure is raised."""
    todo = enumerate(chunks)
    pool = ThreadPoolExecutor(max_workers=in_progress, thread_name_prefix="cai-row")
    running: dict[Future, int] = {}
    failure: BaseException | None = None
    try:
        for number, chunk in todo:
            running[pool.submit(work, *chunk)] = number
            if len(running) == in_progress:
                break
        while running:
            finished: list[tuple[int, list[dict[str, Any]]]] = []
            deadline: float | None = None
            while running and (deadline is None or time.monotonic() < deadline):
                left = None if deadline is None else deadline - time.monotonic()
                done, _ = wait(running, timeout=left, return_when=FIRST_COMPLETED)
                deadline = deadline or time.monotonic() + GATHER_S
                for future in done:
                    number = running.pop(future)
                    if future.exception() is not None:
                        failure = failure or future.exception()
                    else:
                        finished.append((number, future.result()))
            for number, chunk in islice(todo, len(finished) if failure is None else 0):
                running[pool.submit(work, *chunk)] = number
            if finished:
                yield [row for _, rows in sorted(finished, key=lambda pair: pair[0]) for row in rows]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C, or the caller stopped: leave the rest
    if failure is not None:
        raise failure
