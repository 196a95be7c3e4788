"""The probe guard on the eval sets it never saw: the figures of docs/results.md, "The probe guard".

    cai guard train harmless -m default --out runs/guard
    cai eval -m default --guard runs/guard -s harmful -s everyday --limit 0 --out runs/guard-eval
    python benchmarks/guard_default.py runs/guard --eval runs/guard-eval/results.json

Scores every prompt of eval/everyday_test, eval/harmful and eval/harmful_test with the guard (flag rates, 95%
Wilson intervals, time per prompt), and reads the `cai eval --guard` run's results.json for the guarded system
and the model alone on the prompts that run answered (`--eval`, repeatable; `--skip-flags` keeps the
flag rates already in `--out`). Nothing here chooses anything: the guard was fitted and
its threshold set on training sets only.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from cai_kit.core.precision import cpu_summary
from cai_kit.core.prompt_sets import load_prompts
from cai_kit.core.stats import rate
from cai_kit.guard.probe import OVERALL, Guard

SETS = ("eval/everyday_test", "eval/harmful", "eval/harmful_test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("guard")
    parser.add_argument("--model", default="default")
    parser.add_argument("--eval", action="append", default=[],
                        help="a `cai eval --guard` results.json to read the guarded and unguarded figures from; "
                        "repeatable")
    parser.add_argument("--skip-flags", action="store_true", help="read the flag rates from --out instead")
    parser.add_argument("--out", default="docs/results/guard-default.json")
    args = parser.parse_args()

    guard = Guard.load(args.guard, args.model)
    sets = json.loads(Path(args.out).read_text(encoding="utf-8"))["flag_rates"] if args.skip_flags else {}
    if not args.skip_flags:
        guard.check(["warm-up"])  # loads the model
    for spec in SETS if not args.skip_flags else ():
        rows = load_prompts(spec)
        started = time.perf_counter()
        checks = guard.check([r.prompt for r in rows])
        seconds = time.perf_counter() - started
        fired: dict[str, int] = {}
        for check in checks:
            if check.principle:
                fired[check.principle] = fired.get(check.principle, 0) + 1
        sets[spec] = {"flagged": rate(sum(c.flagged for c in checks), len(rows)), "fired": fired,
                      "seconds_per_prompt": round(seconds / len(rows), 4)}
        print(spec, json.dumps(sets[spec]["flagged"]), f"{seconds / len(rows):.3f} s/prompt", flush=True)
    info = json.loads((Path(args.guard) / "guard.json").read_text(encoding="utf-8"))
    result = {
        "guard": {k: info[k] for k in ("model", "fingerprint", "layer", "pooling", "l2", "max_fpr", "heads")}
        | {"threshold": guard.thresholds[OVERALL], "constitution": info["constitution"], "dev": info["dev"]["chosen"],
           "held_out": info["held_out"][OVERALL], "train_seconds": info["seconds"]},
        "flag_rates": sets,
        "cpu": cpu_summary(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__, "python": platform.python_version(),
        "date": datetime.now(timezone.utc).date().isoformat(),
        "commands": ["cai guard train harmless -m default --out runs/guard",
                     f"python benchmarks/guard_default.py {args.guard}"],
        "eval": [],
    }
    for path in args.eval:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
        options = results["options"]
        prompts = " ".join(f"-p {suite}={spec}" for suite, spec in options["prompts"].items())
        result["eval"].append({
            "command": f"cai eval -m default --guard runs/guard -s harmful -s everyday {prompts} --limit "
                       f"{options['limit'] or 0}".replace("  ", " "),
            "discrimination": results.get("discrimination"), "guard": results.get("guard_probe"),
            "refused": {suite: {role: entry["scores"][role]["refused"] for role in entry["scores"]}
                        for suite, entry in results["suites"].items()},
            "seconds": results["seconds"]})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
