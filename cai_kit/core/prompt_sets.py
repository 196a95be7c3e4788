"""Prompt sets: the ones shipped in data/, local files, and datasets from the Hugging Face Hub.

A spec is one of
- a shipped name, a key of SHIPPED (`red_team`, `helpful`, `borderline`, `eval/harmful`, ...);
- a local file: `.jsonl`, `.json` (a list of objects, or `{"data": [...]}`), `.csv` or `.parquet`;
- `hf:NAME[:config][:split]`, anything `datasets.load_dataset` takes as a name, a local folder included.

Local files are read here rather than through `datasets.load_dataset`: that way a bad JSON line is
reported with its line number, nothing is written to the datasets cache, and a small file loads in
milliseconds. Every form ends in the same rows, so a set loads the same whatever file it is stored in.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cai_kit.core.errors import UsageError, capped, read_utf8
from cai_kit.core.files import numbered_lines
from cai_kit.core.shipped import shipped_file

SHIPPED = {
    "red_team": "data/train/red_team.jsonl",
    "helpful": "data/train/helpful.jsonl",
    "borderline": "data/train/borderline.jsonl",
    "everyday": "data/train/everyday.jsonl",
    "eval/harmful": "data/eval/harmful.jsonl",
    "eval/harmful_test": "data/eval/harmful_test.jsonl",  # fresh harmful prompts no recipe choice looked at
    "eval/over_refusal": "data/eval/over_refusal.jsonl",
    "eval/helpful": "data/eval/helpful.jsonl",
    "eval/everyday_dev": "data/eval/everyday_dev.jsonl",
    "eval/everyday_test": "data/eval/everyday_test.jsonl",
}
T = TypeVar("T")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# Columns tried, in order, when the asked-for column is missing: hh-rlhf transcripts and chat datasets.
FALLBACK_COLUMNS = ("chosen", "messages")
_FIRST_HUMAN_TURN = re.compile(r"Human:(.*?)(?=\n\s*(?:Human|Assistant):|\Z)", re.DOTALL)


@dataclass(frozen=True)
class PromptRow:
    id: str
    prompt: str
    category: str = ""
    source: str = ""  # the spec it came from
    where: str = field(default="", compare=False)  # "file:line" (or "file: row N") for error messages


def load_prompts(spec: str, column: str = "prompt", limit: int | None = None) -> list[PromptRow]:
    """Load one prompt set; `limit` None or 0 means all.

    The id is the row's `id` field, else `p-` + the first 12 hex digits of the prompt's sha1, so the same
    prompt keeps its id across runs (generation resumes by id). Every bad row is reported at once (one line
    each, `capped`). Two rows with one id and different prompts are an error naming both places:
    generation resumes by id, so one of them would silently never be answered. A row that repeats an earlier
    one (same id, same prompt) is dropped, with a note on stderr.
    """
    _check_limit(spec, limit)
    label, records = _read(spec)
    rows: list[PromptRow] = []
    first: dict[str, PromptRow] = {}
    problems: list[str] = []
    repeats: list[str] = []
    for where, record in records:
        try:
            row = _to_row(spec, label, where, record, column)
        except UsageError as err:
            problems += err.problems
            continue
        if row.id not in first:
            first[row.id] = row
            rows.append(row)
        elif first[row.id].prompt == row.prompt:
            repeats.append(f"{row.where} repeats {first[row.id].where}")
        else:
            problems.append(
                f"{row.where}: id {row.id!r} is also the id of a different prompt at "
                f"{first[row.id].where}; give each prompt its own id"
            )
    if problems:
        raise UsageError(capped(problems))
    if repeats:
        print(
            f"cai: {label}: {len(repeats)} repeated rows dropped (same id and prompt): {', '.join(repeats[:3])}"
            f"{' ...' if len(repeats) > 3 else ''}",
            file=sys.stderr,
        )
    if not rows:
        raise UsageError(f"{label}: contains no prompts")
    return rows[:limit] if limit else rows


def load_many(specs: list[str], column: str = "prompt", limit: int | None = None) -> list[PromptRow]:
    """Load several sets, dropping repeated ids (first wins).

    Without a limit the sets are concatenated in order. With one, rows are taken round-robin, one from each
    set in turn, so `--limit 48` over a harmful and a helpful set still holds both kinds.
    """
    if not specs:
        raise UsageError("no prompt sets given")
    _check_limit(", ".join(specs), limit)
    sets = [load_prompts(spec, column=column) for spec in specs]
    ordered = round_robin(sets) if limit else (row for rows in sets for row in rows)
    rows: list[PromptRow] = []
    seen: set[str] = set()
    for row in ordered:
        if row.id in seen:
            continue
        seen.add(row.id)
        rows.append(row)
        if limit and len(rows) == limit:
            break
    return rows


def read_records(spec: str) -> tuple[str, list[tuple[str, Any]]]:
    """The raw records of a set, each with where it sits ("line N", "row N"), and the label error messages name:
    for readers of other schemas than a prompt column (the public benchmarks of `cai eval`)."""
    label, records = _read(spec)
    return label, list(records)


def round_robin(groups: Iterable[list[T]]) -> list[T]:
    """One item from each group in turn (order kept within a group), until every group is used up."""
    groups = list(groups)
    deepest = max(map(len, groups), default=0)
    return [group[depth] for depth in range(deepest) for group in groups if depth < len(group)]


def _check_limit(label: str, limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise UsageError(f"{label}: limit must be 0 (all) or more, got {limit}")


# Reading: each reader yields (where, record) pairs, `where` being "line N" or "row N" for error messages.


def _read(spec: str) -> tuple[str, Iterable[tuple[str, Any]]]:
    """Return the label that error messages name (a file path where there is one) and the raw records."""
    if spec.startswith("hf:"):
        return spec, _read_hub(spec)
    if spec in SHIPPED:
        path = shipped_file("data", SHIPPED[spec].removeprefix("data/"))
        if not path.is_file():
            raise UsageError(f"{path}: shipped set '{spec}' is missing from this install; reinstall cai-kit")
        return SHIPPED[spec], _read_file(SHIPPED[spec], path)
    path = Path(spec).expanduser()
    if path.is_dir():
        raise UsageError(f"{spec}: is a folder; give a file, or hf:{spec} to load it with datasets")
    if not path.is_file():
        names = ", ".join(SHIPPED)
        raise UsageError(f"{spec}: no such file (shipped sets: {names}; hub datasets: hf:NAME[:config][:split])")
    return spec, _read_file(spec, path)


def _read_file(label: str, path: Path) -> list[tuple[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(label, read_utf8(path, label))
    if suffix == ".json":
        return _read_json(label, read_utf8(path, label))
    if suffix == ".csv":
        # Row 1 is the header, so data row N sits on file row N + 1 (if no cell spans lines).
        rows = csv.DictReader(io.StringIO(read_utf8(path, label), newline=""))
        return [(f"line {n}", record) for n, record in enumerate(rows, start=2)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # a dependency of datasets

        return [(f"row {n}", record) for n, record in enumerate(pq.read_table(path).to_pylist(), start=1)]
    raise UsageError(f"{label}: unknown file type '{suffix}' (use {', '.join(SUFFIXES)}, or hf:NAME)")


def _read_jsonl(label: str, text: str) -> list[tuple[str, Any]]:
    records, problems = [], []
    for n, line in numbered_lines(text):
        try:
            records.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(f"{label}:{n}: not valid JSON ({e.msg}, column {e.colno})")
    if problems:
        raise UsageError(capped(problems))
    return records


def _read_json(label: str, text: str) -> list[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines under a .json name, as many hub datasets store them
            return _read_jsonl(label, text)
        raise UsageError(f"{label}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UsageError(f'{label}: expected a list of objects or {{"data": [...]}}, got {type(data).__name__}')
    return [(f"row {n}", record) for n, record in enumerate(data, start=1)]


def _read_hub(spec: str) -> Iterator[tuple[str, Any]]:
    name, config, split = (spec[len("hf:") :].split(":", 2) + ["", ""])[:3]
    if not name:
        raise UsageError(f"{spec}: give a dataset name, as in hf:Anthropic/hh-rlhf or hf:NAME:CONFIG:SPLIT")
    import datasets

    try:
        dataset = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as e:  # any failure here is the spec or the network: say so in one line, no traceback
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(
            f"{spec}: could not be loaded ({type(e).__name__}: {reason}); "
            "check the name, config and split, and that the Hugging Face Hub is reachable (HF_HUB_OFFLINE unset)"
        ) from None
    return ((f"row {n}", record) for n, record in enumerate(dataset, start=1))


# Turning a record into a PromptRow.


def _to_row(spec: str, label: str, where: str, record: Any, column: str) -> PromptRow:
    at = f"{label}:{where.split()[-1]}" if where.startswith("line") else f"{label}: {where}"
    if not isinstance(record, dict):
        raise UsageError(f"{at}: expected an object with a '{column}' field, got {type(record).__name__}")
    present = [c for c in (column, *FALLBACK_COLUMNS) if c in record]
    if not present:
        columns = ", ".join(str(c) for c in record) or "none"
        raise UsageError(f"{at}: no column '{column}' (columns: {columns}); choose one with --column")
    text = _prompt_text(record[present[0]])
    if text is None:
        kind = type(record[present[0]]).__name__
        raise UsageError(f"{at}: column '{present[0]}' holds a {kind}, not text, a transcript or chat messages")
    if not text:
        raise UsageError(f"{at}: empty prompt in column '{present[0]}'")
    raw_id = record.get("id")
    row_id = str(raw_id) if raw_id not in (None, "") else "p-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
    category = record.get("category")
    category = "" if category is None else str(category)
    return PromptRow(id=row_id, prompt=text, category=category, source=spec, where=at)


def _prompt_text(value: Any) -> str | None:
    """The prompt in a cell: plain text, the first human turn of an hh-rlhf transcript, or the first user
    message of a chat (`[{"role": "user", "content": ...}]`, ShareGPT's `from`/`value` too). None if neither."""
    if value is None:
        return ""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("Human:") and "Assistant:" in stripped:
            match = _FIRST_HUMAN_TURN.search(stripped)
            return match.group(1).strip() if match else ""
        return stripped
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        for message in value:
            if message.get("role", message.get("from")) in ("user", "human"):
                return _message_text(message.get("content", message.get("value")))
        return ""
    return None


def _message_text(content: Any) -> str:
    if isinstance(content, list):  # content parts, as in multimodal chat formats: keep the text ones
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text").strip()
    return "" if content is None else str(content).strip()
