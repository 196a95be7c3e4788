"""How long a fresh process takes to build the openvino engine on a cached IR, against doing the same work serially.

Each run is a new Python process (the imports are part of what a user waits for), timed from its first line
until the engine can generate; runs alternate between the variants, and the medians are compared:
  (s) serial:  torch imported first, then the pipeline's compile, then the transformers tokenizer's load
               (transformers' imports included), one after the other
  (t) overlap: the compile in a thread beside the transformers tokenizer's load, nothing importing torch first
  (e) engine:  the engine as it is: the compile beside the tokenizer read from the exported folder with the
               `tokenizers` library (checked against transformers' once), so neither transformers nor torch is imported
Needs `pip install -e ".[openvino]"`; the first run exports the IR (and checks its tokenizer) if the cache does not
hold it yet (not timed).

    python benchmarks/openvino_load.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

RUN = """
import time
started = time.perf_counter()
import sys
if sys.argv[2] in "st":
    import concurrent.futures

    from cai_kit.engines import openvino

    openvino.engine_tokenizer = lambda source, folder, model, chat: openvino.load_tokenizer(source, model, chat)
if sys.argv[2] == "s":
    import torch  # what the engine's precision check imported before

    class Serial:  # runs each submitted call at once: no overlap
        def __init__(self, max_workers=None): pass
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        def submit(self, fn, *args):
            done = concurrent.futures.Future()
            done.set_result(fn(*args))
            return done

    openvino.ThreadPoolExecutor = Serial
from cai_kit.engines import load_engine
engine = load_engine("openvino", sys.argv[1], progress=False)
print(f"{time.perf_counter() - started:.3f}")
"""


def timed(model: str, variant: str) -> float:
    done = subprocess.run([sys.executable, "-c", RUN, model, variant], capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"openvino_load: the {variant} run failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    from cai_kit.core.models import resolve_model
    from cai_kit.core.precision import cpu_summary
    from cai_kit.engines import load_engine
    from cai_kit.engines.openvino_export import ensure_exported

    print(f"model {args.model}, IR {ensure_exported(resolve_model(args.model)).name}, {cpu_summary()}")
    load_engine("openvino", args.model, progress=False).close()  # the tokenizer check, if not made yet
    times: dict[str, list[float]] = {"s": [], "t": [], "e": []}
    for _ in range(args.repeats):
        for variant in times:
            times[variant].append(timed(args.model, variant))
    median = {variant: statistics.median(values) for variant, values in times.items()}
    for variant, label in (("s", "(s) serial"), ("t", "(t) overlap"), ("e", "(e) engine")):
        runs = ", ".join(f"{value:.2f}" for value in times[variant])
        print(f"{label:12s} median {median[variant]:.2f} s  ({runs})")
    print(f"s/e = {median['s'] / median['e']:.2f}  t/e = {median['t'] / median['e']:.2f}")


if __name__ == "__main__":
    main()
