"""Answer retention without a judge: how likely the model finds good reference answers, before and after.

Each helpful prompt of `data/eval/helpful.jsonl` has a `reference` answer written for this project.
The model scores every reference token after the prompt (teacher forcing, no generation); the mean
negative log-likelihood per token is one number per prompt. Against the baseline, the per-prompt
difference (model - baseline) says whether training moved the model away from answering well: a
rising NLL means it forgot how to answer, whatever a judge thinks. The means carry 95% bootstrap
intervals over prompts (`core/stats.py`), the difference a paired one.

It needs an engine with per-token log-probs (`token_logprobs`, the transformers engine); for any other
the report says "not measured: engine X gives no per-token log-probs". A prompt set without references
(or whose `reference` column is missing) is "not measured" too. Scores are cached in the report folder
(`retention_<role>.json`), keyed by the model and the references, so a rerun loads no model for them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError
from cai_kit.core.files import write_atomic
from cai_kit.core.prompt_sets import PromptRow, load_prompts
from cai_kit.core.stats import mean_interval
from cai_kit.engines import Engine


def load_references(spec: str, rows: list[PromptRow]) -> dict[str, str] | str:
    """The reference answer of each prompt id, or why there are none (a one-line reason)."""
    try:
        references = {row.id: row.prompt for row in load_prompts(spec, column="reference")}
    except UsageError:
        return f"not measured: {spec} has no `reference` answers"
    missing = [row.id for row in rows if not references.get(row.id)]
    # A set with no `reference` column falls back to a transcript column that holds the prompt itself.
    echoed = all(references.get(row.id) == row.prompt for row in rows)
    if missing or echoed:
        return f"not measured: {spec} has no `reference` answer for {len(missing) or len(rows)} prompts"
    return {row.id: references[row.id] for row in rows}


def reference_nll(role: str, identity: dict[str, Any], rows: list[PromptRow], references: dict[str, str],
                  out: Path, engine: Engine | None, load) -> tuple[dict[str, float] | str, Engine | None]:
    """Mean per-token NLL of each prompt's reference under one model, cached in `retention_<role>.json`.

    `load()` builds the engine when the cache does not hold every prompt; returns (NLL by prompt id, or why
    it was not measured; the engine if one is open).
    """
    digest = hashlib.sha256(json.dumps([[r.id, r.prompt, references[r.id]] for r in rows]).encode()).hexdigest()
    key = {**identity, "references": digest[:16]}
    path = out / f"retention_{role}.json"
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return cached["nll"], engine
    engine = engine or load()
    scorer = getattr(engine, "token_logprobs", None)
    if scorer is None:
        return f"not measured: engine {identity.get('engine', '?')} gives no per-token log-probs", engine
    chats = [[{"role": "user", "content": row.prompt}] for row in rows]
    per_token = scorer(chats, [references[row.id] for row in rows])
    nll = {row.id: -sum(logps) / max(len(logps), 1) for row, logps in zip(rows, per_token, strict=True)}
    write_atomic(path, json.dumps({"key": key, "nll": nll}, indent=1))
    return nll, engine


def retention_summary(nll: dict[str, dict[str, float] | str], ids: list[str]) -> dict[str, Any]:
    """Per role the mean NLL with its interval (or why not measured) and, with both, the paired difference."""
    summary: dict[str, Any] = {}
    for role, values in nll.items():
        summary[role] = (mean_interval([values[i] for i in ids]) if isinstance(values, dict)
                         else {"not_measured": values})
    model, baseline = nll.get("model"), nll.get("baseline")
    if isinstance(model, dict) and isinstance(baseline, dict):
        summary["difference"] = mean_interval([model[i] - baseline[i] for i in ids])
    return summary
