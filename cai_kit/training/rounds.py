"""Iterative rounds (`rounds: N`): which model each round started from, and the table of every round's figures.

Round r > 1 regenerates its data with round r-1's model and trains it again in output_dir/round-<r>
(training/train.py `run_train`); these are the bookkeeping around it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai_kit.core.files import write_atomic
from cai_kit.training.generate_runs import MARKER
from cai_kit.training.log import log

ROUND_SOURCE = ".round_source"  # in output_dir/round-<r>: the stamp of the model the round started from


def check_round_source(folder: Path, model: Path) -> None:
    """Record which training of `model` a round started from; warn when a rerun finds it retrained since.

    A round's finished stages are skipped like any other, so a round made from an earlier version of the
    previous round's model would be kept silently: the warning names the folder to delete instead.
    """
    stamp_file = model / ".source"  # final_model's stamp: the stage it was copied from and when that finished
    stamp = stamp_file.read_text() if stamp_file.is_file() else str(model)
    record = folder / ROUND_SOURCE
    if not record.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(record, stamp)
    elif record.read_text() != stamp:
        log(f"WARNING: {folder.name} was made from an earlier training of {model}, retrained since: its finished "
            f"stages are kept; delete {folder} to run it again from the new model")


def write_rounds_table(out: Path, rounds: list[tuple[int, Path]]) -> None:
    """output_dir/rounds.md: each round's headline eval figures (discrimination first) against the base model."""
    from cai_kit.evaluation.report import format_discrimination

    lines = ["| round | model | suite | metric | baseline | model |", "| --- | --- | --- | --- | --- | --- |"]
    for index, folder in rounds:
        marker = folder / "eval" / MARKER
        results = (json.loads(marker.read_text()).get("results") if marker.is_file() else None) or {}
        row = f"| {index} | `{folder / 'model'}` |"
        if not results:
            lines.append(f"{row} - | not evaluated: run the eval stage (`--stages eval`) | - | - |")
        if results.get("discrimination"):
            cells = [format_discrimination(results["discrimination"].get(who)) for who in ("baseline", "model")]
            lines.append(f"{row} harmful, everyday | discrimination | {cells[0]} | {cells[1]} |")
        suites = results.get("suites", {})
        for suite in ("harmful", "everyday", "over_refusal"):
            scores = (suites.get(suite) or {}).get("scores", {})
            if scores:
                cells = [_rate(scores.get(who, {}).get("refused")) for who in ("baseline", "model")]
                lines.append(f"{row} {suite} | refused | {cells[0]} | {cells[1]} |")
        pairwise = (suites.get("helpful") or {}).get("pairwise")
        if pairwise:
            lines.append(f"{row} helpful | win rate | - | {_rate(pairwise['win_rate'])} |")
    lines += _principle_tables(rounds)
    write_atomic(out / "rounds.md", "# Rounds\n\n" + "\n".join(lines) + "\n")
    log(f"rounds: {out / 'rounds.md'}")


def _principle_tables(rounds: list[tuple[int, Path]]) -> list[str]:
    """Each round's `cai test` tables (the constitutions' own tests, per principle), written by its model card."""
    from cai_kit.evaluation.constitution_tests import RESULTS_FILE, table
    from cai_kit.training.model_card import TESTS_DIR

    lines = []
    for index, folder in rounds:
        for path in sorted((folder / TESTS_DIR).glob(f"*/{RESULTS_FILE}")):
            results = json.loads(path.read_text(encoding="utf-8"))
            lines += ["", f"## Round {index}: {results['constitution']['name']}'s tests, per principle", "",
                      table(results).rstrip()]
    return lines


def _rate(value: Any) -> str:
    return f"{value['rate']:.2f}" if isinstance(value, dict) and value.get("rate") is not None else "-"
