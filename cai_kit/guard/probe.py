"""A trained guard, loaded: `Guard.load(DIR).score(prompts)` and `.check(prompts)`.

A guard folder (written by `cai guard train`, `probe_train.py`) holds
- `probe.safetensors`: `weight` [heads, hidden] and `bias` [heads], one logistic-regression head per row,
  standardisation folded in, so a head's score is sigmoid(features @ weight + bias);
- `guard.json`: the heads' names (`overall` first, then one per principle), each head's threshold, the layer
  and pooling, the model it was fitted on with its fingerprint, the constitution's name and sha256, and each
  principle's refusal;
- `README.md`: the card, with its dev and held-out figures.

The decision is the overall head's: a prompt is flagged when its score is above the overall threshold (set
so that at most `max_fpr` of the held-out everyday prompts are flagged). The principle that fired is the
principle head with the highest score among the principles with an `opening` (a refusal in their own words;
a principle without one, such as harmless' `help_with_the_safe_part`, asks the model to keep helping, so it
names a refusal only when no principle has an opening). Each principle head also has its own threshold, in
the card, for a reader who wants one principle's decision alone.

A guard reads one model's hidden states: it refuses to load on another model (by `model_fingerprint`, which
changes with the weights, and with their files' modification times: a copied model folder needs a guard fitted
on the copy), and says so in one line, as it does for a missing folder or a damaged probe file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError
from cai_kit.core.files import whole_safetensors
from cai_kit.core.models import model_fingerprint

GUARD_JSON, PROBE_FILE = "guard.json", "probe.safetensors"
OVERALL = "overall"
FORMAT = 1
RETRAIN = "retrain it with cai guard train"


_DANGLING = ("but", "or", "because", "and", "so")


def refusal_text(name: str, opening: str | None) -> str:
    """The refusal a guard answers with when principle `name` fires: the principle's own `opening` (its last
    dangling word, "but", "or", "because", cut off) and one sentence naming the principle."""
    words = (opening or "I can't help with that").strip().split()
    while len(words) > 1 and words[-1].lower().strip(",") in _DANGLING:
        words.pop()
    first = " ".join(words).rstrip(" ,;:—-")
    first += "" if first.endswith((".", "!", "?")) else "."
    return f"{first} This request goes against my {name.replace('_', ' ')} principle, so I won't help with it."


@dataclass(frozen=True)
class Check:
    """One prompt's verdict: its overall score, whether it is above the threshold, and the principle that fired."""

    score: float
    flagged: bool
    principle: str | None  # the principle head with the highest score, when flagged
    refusal: str | None  # that principle's refusal, when flagged


class Guard:
    """Probe heads on one model's hidden states at the prompt."""

    def __init__(self, folder: Path, info: dict[str, Any], weight: Any, bias: Any, model: str):
        self.folder, self.info, self.weight, self.bias = folder, info, weight, bias
        self.heads: list[str] = info["heads"]
        self.thresholds: dict[str, float] = info["thresholds"]
        self.model_spec = model  # the --model value it was loaded for (checked: the same weights)
        self._features: Any = None

    @classmethod
    def load(cls, folder: str | Path, model: str | None = None) -> Guard:
        """Read a guard folder; `model` (default: the one it was fitted on) must be that model, by fingerprint.

        Every problem is one UsageError line: no such folder, a file missing or damaged, another model.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise UsageError(f"guard {folder}: no such folder; make one with cai guard train CONSTITUTION -m MODEL "
                             f"--out {folder}")
        info = _read_info(folder)
        probe = folder / PROBE_FILE
        if not probe.is_file():
            raise UsageError(f"guard {folder}: {PROBE_FILE} is missing; {RETRAIN}")
        try:
            from safetensors.torch import load_file

            if not whole_safetensors(probe):
                raise ValueError("cut short")
            tensors = load_file(str(probe))
            weight, bias = tensors["weight"], tensors["bias"]
        except Exception as err:  # safetensors raises its own error types, and KeyError for a missing tensor
            raise UsageError(f"guard {folder}: {PROBE_FILE} is damaged ({str(err).splitlines()[0][:120]}); "
                             f"{RETRAIN}") from None
        heads = len(info["heads"])
        if tuple(weight.shape) != (heads, info["hidden_size"]) or tuple(bias.shape) != (heads,):
            raise UsageError(f"guard {folder}: {PROBE_FILE} does not match {GUARD_JSON} (shapes "
                             f"{tuple(weight.shape)}, {tuple(bias.shape)}); {RETRAIN}")
        check_model(folder, info, model or info["model"])
        return cls(folder, info, weight.float(), bias.float(), model or info["model"])

    def features(self, prompts: list[str]) -> Any:
        from cai_kit.guard.features import FeatureModel

        if self._features is None:
            self._features = FeatureModel(self.model_spec)
        layer, pooling = self.info["layer"], self.info["pooling"]
        return self._features.features(prompts, [layer])[(layer, pooling)]

    def head_scores(self, prompts: list[str]) -> Any:
        """[n, heads] probabilities, `overall` first."""
        import torch

        if not prompts:
            return torch.zeros(0, len(self.heads))
        return torch.sigmoid(self.features(prompts) @ self.weight.T + self.bias)

    def score(self, prompts: list[str]) -> list[float]:
        """The overall head's probability per prompt; above `thresholds['overall']` is flagged."""
        return [float(s) for s in self.head_scores(prompts)[:, 0]]

    def check(self, prompts: list[str]) -> list[Check]:
        """Per prompt: its score, whether it is flagged, and the principle that fired (None when not flagged)."""
        checks = []
        for row in self.head_scores(prompts).tolist():
            flagged = row[0] > self.thresholds[OVERALL]
            principle = None
            named = [k for k, head in enumerate(self.heads) if head in self.info["attribution"]]
            if flagged and named:
                principle = self.heads[max(named, key=lambda k: row[k])]
            refusal = self.info["refusals"].get(principle or "", self.info["fallback_refusal"]) if flagged else None
            checks.append(Check(row[0], flagged, principle, refusal))
        return checks

    def close(self) -> None:
        self._features = None


def _read_info(folder: Path) -> dict[str, Any]:
    path = folder / GUARD_JSON
    if not path.is_file():
        raise UsageError(f"guard {folder}: {GUARD_JSON} is missing, so this is not a guard folder; {RETRAIN}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        missing = [k for k in ("heads", "thresholds", "layer", "pooling", "model", "fingerprint", "hidden_size",
                               "refusals", "fallback_refusal", "attribution") if k not in info]
    except (ValueError, UnicodeDecodeError, TypeError) as err:
        raise UsageError(f"guard {folder}: {GUARD_JSON} is damaged ({err}); {RETRAIN}") from None
    if missing or info.get("format") != FORMAT or any(not math.isfinite(t) for t in info["thresholds"].values()):
        raise UsageError(f"guard {folder}: {GUARD_JSON} is damaged or of another version "
                         f"(missing: {', '.join(missing) or 'none'}); {RETRAIN}")
    return info


def check_model(folder: Path, info: dict[str, Any], spec: str) -> None:
    """UsageError unless `spec` is the model the guard was fitted on (same fingerprint)."""
    from cai_kit.core.models import resolve_model

    fingerprint = model_fingerprint(resolve_model(spec))
    if fingerprint != info["fingerprint"]:
        raise UsageError(f"guard {folder} was fitted on model {info['model']!r} (fingerprint {info['fingerprint']}), "
                         f"not on {spec!r} (fingerprint {fingerprint}): a probe reads one model's hidden states; "
                         f"fit one for this model with cai guard train CONSTITUTION -m {spec} --out DIR")
