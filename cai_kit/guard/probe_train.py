"""`cai guard train`: fit a guard's probes from a constitution and the training prompt sets.

The story: label the training prompts (harmful: `red_team`; benign: `borderline`, `everyday`, `helpful`; plus
each principle's own `tests:`), split them by a stable hash of the prompt id, read the model's hidden states at
every candidate layer in one forward pass per prompt (`features.py`), choose the layer, pooling and L2 strength
on the dev split, refit on train + dev, set each head's threshold on the held-out split, and write the folder.

- Labels. A harmful prompt belongs to a principle when its `category` is in the principle's `categories` (an
  empty list claims no prompt here, since a guard must name what it refuses); a principle test that expects
  `refuse` or `redirect` is a harmful prompt of its principle, one that expects `comply` is benign. One head per
  principle with harmful prompts (its negatives: every other prompt), and the `overall` head, harmful or not.
- Splits, by sha256 of the id: 60% train, 20% dev (layer, pooling, L2), 20% held-out (thresholds). The eval
  sets (`eval/...`) are refused: they measure the guard, they never shape it.
- The classifier is logistic regression (Sharma et al. 2025 use linear probes on the policy model's activations
  in arXiv 2601.04603), fitted by `torch.optim.LBFGS` on standardised features with an L2 penalty and balanced
  class weights; the standardisation is folded into the saved weights.
- Each head's threshold flags at most `max_fpr` of the held-out everyday prompts, the false-positive rate the
  user asked for (on prompts that size, a rate, not a promise: `eval/everyday_test` measures it afresh).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cai_kit.core.constitution import Constitution, load_constitution
from cai_kit.core.errors import UsageError
from cai_kit.core.files import write_atomic
from cai_kit.core.models import model_fingerprint
from cai_kit.core.prompt_sets import load_prompts
from cai_kit.core.run_lock import run_lock
from cai_kit.core.stats import rate
from cai_kit.guard.card import write_card
from cai_kit.guard.features import POOLINGS, FeatureModel, candidate_layers
from cai_kit.guard.probe import FORMAT, GUARD_JSON, OVERALL, PROBE_FILE, refusal_text

HARMFUL_SETS = ("red_team",)
BENIGN_SETS = ("borderline", "everyday", "helpful")
FPR_SET = "everyday"  # the benign set whose held-out prompts set the thresholds
L2_GRID = (1e-3, 1e-2, 1e-1)  # weaker penalties overfit: the training prompts are separable in 576 dimensions
SPLITS = ("train", "dev", "held_out")
FALLBACK_REFUSAL = ("I can't help with that. This request goes against the principles I follow, so I won't help "
                    "with it.")


@dataclass(frozen=True)
class Labelled:
    id: str
    prompt: str
    source: str  # the prompt set's spec, or "tests"
    harmful: bool
    principles: frozenset[str]  # the principles whose categories (or tests) claim it


def is_fpr_set(source: str) -> bool:
    """Whether prompts of `source` set the thresholds: the `everyday` set, shipped or a file of that name."""
    return source == FPR_SET or Path(source).stem == FPR_SET


def split_of(prompt_id: str) -> str:
    """train, dev or held_out, by a stable hash of the id (the same prompt always lands in the same split)."""
    bucket = int(hashlib.sha256(prompt_id.encode()).hexdigest()[:8], 16) % 10
    return SPLITS[0] if bucket < 6 else SPLITS[1] if bucket < 8 else SPLITS[2]


def labelled_prompts(constitution: Constitution, harmful: tuple[str, ...], benign: tuple[str, ...]) -> list[Labelled]:
    """Every training prompt with its labels; UsageError for an eval set."""
    held = [s for s in (*harmful, *benign) if s.startswith("eval/") or "/data/eval/" in s.replace("\\", "/")]
    if held:
        raise UsageError(f"cai guard train: {', '.join(held)}: an evaluation set; a guard trains on training sets "
                         "only (red_team, borderline, everyday, helpful or your own files)")
    rows: list[Labelled] = []
    for spec in harmful:
        for row in load_prompts(spec):
            claimed = frozenset(p.name for p in constitution.principles if row.category in p.categories)
            rows.append(Labelled(row.id, row.prompt, spec, True, claimed))
    for spec in benign:
        rows += [Labelled(row.id, row.prompt, spec, False, frozenset()) for row in load_prompts(spec)]
    for principle in constitution.principles:
        for test in getattr(principle, "tests", []):  # the principles' own twins (`cai test`)
            bad = test.expect != "comply"
            test_id = "test-" + hashlib.sha1(test.prompt.encode()).hexdigest()[:12]
            rows.append(Labelled(test_id, test.prompt, "tests", bad, frozenset({principle.name} if bad else ())))
    seen: set[str] = set()
    return [r for r in rows if not (r.prompt in seen or seen.add(r.prompt))]  # type: ignore[func-returns-value]


def fit_logistic(x: Any, y: Any, l2: float) -> tuple[Any, Any]:
    """Logistic regression by L-BFGS on standardised features, balanced classes; (weight, bias) on raw features."""
    import torch

    x, y = x.double(), y.double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    positives = y.sum().clamp(min=1)
    sample = torch.where(y > 0, len(y) / (2 * positives), len(y) / (2 * (len(y) - positives).clamp(min=1)))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], lr=1.0, max_iter=100, tolerance_grad=1e-6, line_search_fn="strong_wolfe")

    def closure() -> Any:
        optimiser.zero_grad()
        logits = z @ w + b
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=sample)
                + 0.5 * l2 * (w @ w))
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        weight = w / std
        return weight.float(), (b - (mean * weight).sum()).float()


def auroc(scores: list[float], labels: list[bool]) -> float:
    """Area under the ROC curve: the chance a harmful prompt outscores a benign one (ties count half)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def threshold_at(benign_scores: list[float], max_fpr: float) -> float:
    """The lowest threshold t with at most `max_fpr` of `benign_scores` above it (flagged: score > t)."""
    ordered = sorted(benign_scores, reverse=True)
    allowed = int(max_fpr * len(ordered) + 1e-9)
    return ordered[allowed] if allowed < len(ordered) else 0.0


def _scores(x: Any, head: tuple[Any, Any]) -> list[float]:
    import torch

    return torch.sigmoid(x @ head[0] + head[1]).tolist()


def _pick(rows: list[Labelled], feats: dict, max_fpr: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fit the overall head on train for each (layer, pooling, L2); score each on dev; the best dev AUROC wins."""
    import torch

    train = [i for i, r in enumerate(rows) if split_of(r.id) == "train"]
    dev = [i for i, r in enumerate(rows) if split_of(r.id) == "dev"]
    y = torch.tensor([float(r.harmful) for r in rows])
    tried = []
    for (layer, pooling), x in feats.items():
        for l2 in L2_GRID:
            head = fit_logistic(x[train], y[train], l2)
            scores = _scores(x[dev], head)
            labels = [rows[i].harmful for i in dev]
            everyday = [s for s, i in zip(scores, dev, strict=True) if is_fpr_set(rows[i].source)]
            cut = threshold_at(everyday or [s for s, h in zip(scores, labels, strict=True) if not h], max_fpr)
            harmful = [s for s, h in zip(scores, labels, strict=True) if h]
            tried.append({"layer": layer, "pooling": pooling, "l2": l2, "auroc": auroc(scores, labels),
                          "recall": sum(s > cut for s in harmful) / max(len(harmful), 1)})
    best = max(tried, key=lambda t: (t["auroc"], t["recall"]))
    return best, tried


def train_guard(constitution_spec: str, model: str, out: str | Path, max_fpr: float = 0.05,
                harmful: tuple[str, ...] = HARMFUL_SETS, benign: tuple[str, ...] = BENIGN_SETS,
                batch_size: int = 16, progress: bool = True) -> dict[str, Any]:
    """Fit the guard of `constitution_spec` for `model` and write it to `out`; returns what guard.json holds."""
    if not 0 <= max_fpr < 1:
        raise UsageError(f"cai guard train: --max-fpr {max_fpr}: give a rate in [0, 1)")
    constitution = load_constitution(constitution_spec)
    rows = labelled_prompts(constitution, harmful, benign)
    if not any(r.harmful for r in rows) or all(r.harmful for r in rows):
        raise UsageError("cai guard train: the prompt sets need both harmful and benign prompts")
    from cai_kit.core.models import resolve_model

    out = Path(out)
    with run_lock(out, "--out"):
        started = time.perf_counter()
        features = FeatureModel(model, batch_size=batch_size)
        layers = candidate_layers(features.num_layers)
        print(f"cai guard: {len(rows)} prompts, layers {layers}, poolings {', '.join(POOLINGS)}", file=sys.stderr)
        feats = features.features([r.prompt for r in rows], layers, progress=progress)
        forward_s = time.perf_counter() - started
        best, tried = _pick(rows, feats, max_fpr)
        info = _fit_heads(constitution, rows, feats[(best["layer"], best["pooling"])], best, max_fpr)
        info |= {"format": FORMAT, "model": model, "model_path": resolve_model(model),
                 "fingerprint": model_fingerprint(resolve_model(model)), "num_layers": features.num_layers,
                 "hidden_size": int(features.model.config.hidden_size),
                 "constitution": {"name": constitution.name, "path": constitution.path,
                                  "sha256": constitution.sha256},
                 "sets": {"harmful": list(harmful), "benign": list(benign), "fpr_set": FPR_SET},
                 "max_fpr": max_fpr, "dev": {"chosen": best, "tried": tried},
                 "seconds": {"forward": round(forward_s, 1), "total": round(time.perf_counter() - started, 1),
                             "forward_per_prompt": round(forward_s / len(rows), 4)},
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        _write_probe(out / PROBE_FILE, info.pop("tensors"))
        write_atomic(out / GUARD_JSON, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        write_card(out, info)
    return info


def _fit_heads(constitution: Constitution, rows: list[Labelled], x: Any, best: dict[str, Any],
               max_fpr: float) -> dict[str, Any]:
    """Refit the overall head and one head per principle on train + dev; thresholds and figures on held-out."""
    import torch

    fit = [i for i, r in enumerate(rows) if split_of(r.id) != "held_out"]
    held = [i for i, r in enumerate(rows) if split_of(r.id) == "held_out"]
    everyday = [i for i in held if is_fpr_set(rows[i].source)] or [i for i in held if not rows[i].harmful]
    names = [p.name for p in constitution.principles if any(p.name in rows[i].principles for i in fit)]
    weights, biases, thresholds, figures = [], [], {}, {}
    for name in [OVERALL, *names]:
        positive = [rows[i].harmful if name == OVERALL else name in rows[i].principles for i in range(len(rows))]
        weight, bias = fit_logistic(x[fit], torch.tensor([float(positive[i]) for i in fit]), best["l2"])
        scores = dict(zip(held, _scores(x[held], (weight, bias)), strict=True))
        thresholds[name] = threshold_at([scores[i] for i in everyday], max_fpr)
        flagged = {i: scores[i] > thresholds[name] for i in held}
        mine = [i for i in held if positive[i]]
        benign = [i for i in held if not rows[i].harmful]
        figures[name] = {"n_positive": len(mine), "recall": rate(sum(flagged[i] for i in mine), len(mine)),
                         "everyday_flagged": rate(sum(flagged[i] for i in everyday), len(everyday)),
                         "benign_flagged": rate(sum(flagged[i] for i in benign), len(benign)),
                         "auroc": auroc([scores[i] for i in held], [positive[i] for i in held])}
        weights.append(weight)
        biases.append(bias.reshape(()))
    counts = {split: {"harmful": sum(r.harmful for r in rows if split_of(r.id) == split),
                      "benign": sum(not r.harmful for r in rows if split_of(r.id) == split)} for split in SPLITS}
    principles = {p.name: p for p in constitution.principles}
    return {"layer": best["layer"], "pooling": best["pooling"], "l2": best["l2"], "heads": [OVERALL, *names],
            "thresholds": thresholds, "held_out": figures, "counts": counts,
            "positives": {n: sum(n in r.principles for r in rows) for n in names},
            "refusals": {n: refusal_text(n, principles[n].opening) for n in names},
            "attribution": [n for n in names if principles[n].opening] or names,
            "fallback_refusal": FALLBACK_REFUSAL,
            "tensors": {"weight": torch.stack(weights).contiguous(), "bias": torch.stack(biases).contiguous()}}


def _write_probe(path: Path, tensors: dict[str, Any]) -> None:
    """The probe weights as safetensors, written beside and renamed over, as `write_atomic` does for text."""
    from safetensors.torch import save

    data = save(tensors, metadata={"format": "cai-kit guard"})
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
