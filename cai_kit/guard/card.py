"""A guard folder's card (README.md): what it was fitted on, the choice made on dev, the held-out figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai_kit.core.files import write_atomic
from cai_kit.core.stats import format_rate


def card_text(info: dict[str, Any]) -> str:
    best = info["dev"]["chosen"]
    counts = info["counts"]
    lines = [
        f"# Guard: {info['constitution']['name']} on {info['model']}",
        "",
        "A linear probe on the model's own hidden states at the prompt (`cai guard train`, docs/guard.md). "
        "Above the `overall` threshold the answer is the refusal of the principle whose head scores highest.",
        "",
        f"- model: `{info['model']}` (`{info['model_path']}`, fingerprint `{info['fingerprint']}`); a guard "
        "refuses to load on any other model",
        f"- constitution: `{info['constitution']['name']}` (`{info['constitution']['path']}`, sha256 "
        f"`{info['constitution']['sha256']}`)",
        f"- prompts: harmful {', '.join(info['sets']['harmful'])}; benign {', '.join(info['sets']['benign'])}; "
        "and the principles' own tests",
        "- splits by sha256 of the prompt id: "
        + "; ".join(f"{s} {c['harmful']} harmful, {c['benign']} benign" for s, c in counts.items()),
        f"- chosen on dev (best AUROC, harmful against benign, of {len(info['dev']['tried'])} fits): layer "
        f"{info['layer']} of {info['num_layers']}, pooling `{info['pooling']}`, L2 {info['l2']:g} "
        f"(dev AUROC {best['auroc']:.3f}, dev recall {best['recall']:.2f} at a {info['max_fpr']:.2f} everyday rate)",
        f"- thresholds set on the held-out split: at most {info['max_fpr']:.2f} of its `{info['sets']['fpr_set']}` "
        "prompts flagged (so that row's everyday figure is the calibration, not a test)",
        f"- took {info['seconds']['total']} s, {info['seconds']['forward_per_prompt'] * 1000:.0f} ms of forward pass "
        f"per prompt; {info['created']}",
        "",
        "## Held-out figures",
        "",
        "| head | threshold | n positive | flagged (recall) | AUROC | everyday flagged | benign flagged |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for head in info["heads"]:
        f = info["held_out"][head]
        lines.append(f"| {head} | {info['thresholds'][head]:.4f} | {f['n_positive']} | {format_rate(f['recall'])} | "
                     f"{f['auroc']:.3f} | {format_rate(f['everyday_flagged'])} | {format_rate(f['benign_flagged'])} |")
    lines += ["", "95% Wilson intervals. Measure it on the eval sets, which it never saw:", "",
              f"    cai eval -m {info['model']} --guard DIR -s harmful -s everyday", "",
              "## Refusals", ""]
    lines += [f"- {name}: {text}" for name, text in info["refusals"].items()]
    lines += [f"- (no principle head) {info['fallback_refusal']}", ""]
    return "\n".join(lines)


def write_card(out: Path, info: dict[str, Any]) -> None:
    write_atomic(Path(out) / "README.md", card_text(info))
