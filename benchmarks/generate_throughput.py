"""Generation throughput of `cai generate`'s pipeline against a naive loop and a raw batched ceiling.

All three run in one process, on the same prompts, model and dtype:
  (a) naive:    `model.generate` once per prompt per step (initial, critique, revision)
  (b) pipeline: cai-kit's critique/revision loop through the transformers engine
  (c) ceiling:  one raw batched `model.generate` per step at the same batch size, on the exact
                conversations (b) built, with no sorting or bookkeeping
It prints generated tokens/s for each and the ratios b/a and b/c, plus peak RSS.

With --openai it also replays (c)'s conversations through the openai engine against a local
`transformers serve` started here on 127.0.0.1, with continuous batching off (d) and on (e), at
`--batch-size` requests in flight. With --vllm (needs vllm and a CUDA GPU) it replays them through
the in-process vllm engine (f). Each prints tokens/s and its ratio to (b).

With --openvino (needs `pip install -e ".[openvino]"`) it replays (b)'s conversations through the
openvino engine (g), and without its shared-prefix prefill (g0, `warm_prefix=False`), and runs
contrast mode (RLCD pairs) on the transformers engine (h) and replays it
on openvino (i); each prints tokens/s, its ratio to the transformers engine on the same work, and the
greedy agreement: the share of replies identical to the transformers engine's. With --int8 as well it
replays both on the openvino engine with int8 weights (g8, i8) and prints the mean log-prob per token that
the fp32 and the int8 IR give (b)'s replies.

    python benchmarks/generate_throughput.py --prompts 64 --batch-size 32
    OMP_NUM_THREADS=1 python benchmarks/generate_throughput.py --prompts 8 --naive-prompts 1 --openai
    python benchmarks/generate_throughput.py --prompts 16 --naive-prompts 1 --no-ceiling --openvino
    python benchmarks/generate_throughput.py --prompts 16 --naive-prompts 1 --no-ceiling --openvino --int8
    python benchmarks/generate_throughput.py --no-shared-prefix   # (b) with the prefix cache copied per row
    python benchmarks/generate_throughput.py --no-row-cache       # (b) without reusing critique KV in revisions
    python benchmarks/generate_throughput.py --no-early-exit      # (b) decoding with model.generate (rows never leave)
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from cai_kit.core.constitution import load_constitution
from cai_kit.core.models import resolve_model
from cai_kit.core.precision import cpu_bf16_flag, cpu_capability
from cai_kit.core.prompt_sets import load_many
from cai_kit.engines import GenParams
from cai_kit.engines.transformers import TransformersEngine
from cai_kit.generation.loop import critique_and_revise
from cai_kit.generation.options import GenerateOptions


class Recording:
    """Wraps an engine and keeps every stage's conversations so the baselines replay the same work."""

    def __init__(self, engine: TransformersEngine):
        self.engine, self.stages, self.params, self.replies = engine, [], [], []

    def generate(self, conversations, params):
        self.stages.append(conversations)
        self.params.append(params)
        replies = self.engine.generate(conversations, params)
        self.replies.append([reply.text for reply in replies])
        return replies


def raw_generate(engine: TransformersEngine, conversations, params: GenParams, batch_size: int) -> int:
    """Tokens from plain `model.generate` batches, counted up to the first stop token as the engine counts."""
    return sum(len(reply) for reply in engine.plain_generate(conversations, params, batch_size))


def replay(engine, stages, params, replies: list[list[str]] | None = None) -> tuple[float, float]:
    """Tokens/s of an engine on the recorded stages, in the pipeline's order, and the share of its replies
    identical to `replies` (the recording's), or nan without them. `params`: one GenParams, or one per stage."""
    before, start, same, total = engine.generated_tokens, time.perf_counter(), 0, 0
    for k, stage in enumerate(stages):
        texts = [reply.text for reply in engine.generate(stage, params[k] if isinstance(params, list) else params)]
        if replies is not None:
            same += sum(a == b for a, b in zip(texts, replies[k]))
            total += len(texts)
    rate = (engine.generated_tokens - before) / (time.perf_counter() - start)
    return rate, same / total if total else float("nan")


def openvino_runs(
    args, engine: TransformersEngine, recording: Recording, prompts, options, tf_rate: float, naive_rate: float
) -> None:
    """(g) the pipeline's conversations (b) on the openvino engine; (h) contrast mode on the transformers engine
    and (i) its conversations on the openvino engine."""
    from cai_kit.engines.openvino import OpenVINOEngine
    from cai_kit.generation.pairs import contrast_pairs

    constitution = load_constitution(args.constitution)
    contrast = Recording(engine)
    start, before = time.perf_counter(), engine.generated_tokens
    for chunk_start in range(0, len(prompts), args.batch_size):
        contrast_pairs(contrast, constitution, prompts[chunk_start : chunk_start + args.batch_size], options)
    contrast_rate = (engine.generated_tokens - before) / (time.perf_counter() - start)
    engine.close()
    threads = torch.get_num_threads()
    # The transformers engine's --dtype, in OpenVINO's names: under auto both take bf16 on a CPU with native bf16.
    same = {"inference_precision": {"fp32": "f32", "float32": "f32", "bfloat16": "bf16"}.get(args.dtype, args.dtype)}
    cold = OpenVINOEngine(
        args.model, batch_size=args.batch_size, progress=False, threads=threads, warm_prefix=False, **same
    )
    cold_rate, _ = replay(cold, recording.stages, recording.params)
    cold.close()
    started = time.perf_counter()
    ov = OpenVINOEngine(args.model, batch_size=args.batch_size, progress=False, threads=threads, **same)
    print(f"openvino engine loaded in {time.perf_counter() - started:.1f} s ({ov.folder.name}, "
          f"{ov.inference_precision})")
    rate, agree = replay(ov, recording.stages, recording.params, recording.replies)
    print(f"(g0) pipeline, openvino, no prefix prefill {cold_rate:8.1f} tokens/s   /b = {cold_rate / tf_rate:.2f}")
    print(
        f"(g) pipeline, openvino engine {rate:8.1f} tokens/s   /b = {rate / tf_rate:.2f}  "
        f"/a = {rate / naive_rate:.1f}  /g0 = {rate / cold_rate:.2f}  greedy agreement {agree:.0%}  (target /b >= 2)"
    )
    pipeline_rate = rate
    rate, agree = replay(ov, contrast.stages, contrast.params, contrast.replies)
    print(f"(h) contrast, transformers    {contrast_rate:8.1f} tokens/s")
    print(f"(i) contrast, openvino engine {rate:8.1f} tokens/s   /h = {rate / contrast_rate:.2f}  "
          f"greedy agreement {agree:.0%}")
    if args.int8:
        fp32_logp = reply_logprob(ov, recording)
        ov.close()
        ov = OpenVINOEngine(args.model, precision="int8", batch_size=args.batch_size, progress=False,
                            threads=threads, **same)
        rate, agree = replay(ov, recording.stages, recording.params, recording.replies)
        print(f"(g8) pipeline, openvino, int8 weights {rate:8.1f} tokens/s   /b = {rate / tf_rate:.2f}  "
              f"/g = {rate / pipeline_rate:.2f}  greedy agreement {agree:.0%}")
        int8_rate, agree = replay(ov, contrast.stages, contrast.params, contrast.replies)
        print(f"(i8) contrast, openvino, int8 weights {int8_rate:8.1f} tokens/s   "
              f"/h = {int8_rate / contrast_rate:.2f}  greedy agreement {agree:.0%}")
        int8_logp = reply_logprob(ov, recording)
        print(f"log-prob per token of (b)'s replies: fp32 IR {fp32_logp:.4f}, int8 IR {int8_logp:.4f}")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"peak RSS {peak_gb:.2f} GB (whole process, both engines)")


def reply_logprob(engine, recording: Recording) -> float:
    """Mean log-prob per token that `engine` gives the transformers engine's replies in (b): how closely
    another precision's model follows the fp32 one's text (those replies are the fp32 model's greedy picks)."""
    conversations = [c for stage in recording.stages for c in stage]
    replies = [r for stage in recording.replies for r in stage]
    rows = engine.token_logprobs(conversations, replies)
    return sum(sum(row) for row in rows) / sum(len(row) for row in rows)


def serve(model: str, continuous_batching: bool, wait_s: float = 300) -> tuple[subprocess.Popen, str]:
    """`transformers serve MODEL` on a free 127.0.0.1 port; returns the process and its base URL once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    flag = "--continuous-batching" if continuous_batching else "--no-continuous-batching"
    command = [str(Path(sys.executable).parent / "transformers"), "serve", model, flag]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url, deadline = f"http://127.0.0.1:{port}/v1", time.time() + wait_s
    while time.time() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    stop(process)
    raise SystemExit(f"transformers serve {flag} did not start within {wait_s} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--constitution", default="constitutions/harmless.yaml")
    parser.add_argument("--prompts", type=int, default=64, help="prompts for the pipeline and the ceiling")
    parser.add_argument("--naive-prompts", type=int, default=4, help="prompts for the naive loop (it is slow)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--openai", action="store_true", help="also time the openai engine on transformers serve")
    parser.add_argument("--vllm", action="store_true", help="also time the vllm engine (CUDA GPU)")
    parser.add_argument("--openvino", action="store_true", help="also time the openvino engine and contrast mode")
    parser.add_argument("--int8", action="store_true", help="with --openvino: also its engine with int8 weights")
    parser.add_argument("--no-ceiling", action="store_true", help="skip (c), the raw batched model.generate")
    parser.add_argument(
        "--no-shared-prefix", action="store_true", help="copy the prefix cache into every row (the engine's old path)"
    )
    parser.add_argument(
        "--no-row-cache", action="store_true", help="recompute revision prompts instead of reusing the critique KV"
    )
    parser.add_argument(
        "--no-early-exit", action="store_true", help="decode with model.generate, which keeps finished rows to the end"
    )
    args = parser.parse_args()

    engine = TransformersEngine(
        args.model,
        dtype=args.dtype,
        batch_size=args.batch_size,
        progress=False,
        shared_prefix=not args.no_shared_prefix,
        row_cache=not args.no_row_cache,
        early_exit=not args.no_early_exit,
    )
    constitution = load_constitution(args.constitution)
    prompts = load_many(["red_team", "helpful"], limit=args.prompts)
    options = GenerateOptions(
        constitution=args.constitution, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    params = GenParams(max_new_tokens=args.max_new_tokens, repetition_penalty=options.repetition_penalty)
    print(
        f"model={args.model} dtype={engine.model.dtype} prompts={len(prompts)} batch={args.batch_size} "
        f"max_new_tokens={args.max_new_tokens} threads={torch.get_num_threads()} shared_prefix={engine.shared_prefix} "
        f"row_cache={engine.row_cache} early_exit={engine.early_exit} cpu={cpu_capability()} "
        f"native_bf16={cpu_bf16_flag() or 'no'}"
    )

    recording = Recording(engine)
    start = time.perf_counter()
    for chunk_start in range(0, len(prompts), args.batch_size):
        critique_and_revise(recording, constitution, prompts[chunk_start : chunk_start + args.batch_size], options)
    pipeline_seconds = time.perf_counter() - start
    pipeline_rate = engine.generated_tokens / pipeline_seconds
    reused = engine.reused_tokens

    print(f"(b) done: {pipeline_rate:.1f} tokens/s", flush=True)
    ceiling_rate = float("nan")
    if not args.no_ceiling:
        start, tokens = time.perf_counter(), 0
        for stage in recording.stages:
            tokens += raw_generate(engine, stage, params, args.batch_size)
        ceiling_rate = tokens / (time.perf_counter() - start)

    # The naive loop replays, one conversation at a time, the stages of the first few prompts.
    naive_stages = [stage[: args.naive_prompts] for stage in recording.stages[:3]]
    start, tokens = time.perf_counter(), 0
    for stage in naive_stages:
        for conversation in stage:
            tokens += raw_generate(engine, [conversation], params, 1)
    naive_rate = tokens / (time.perf_counter() - start)

    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"(a) naive loop      {naive_rate:8.1f} tokens/s")
    print(f"(b) cai pipeline    {pipeline_rate:8.1f} tokens/s")
    if not args.no_ceiling:
        print(f"(c) raw batched     {ceiling_rate:8.1f} tokens/s")
    print(f"b/a = {pipeline_rate / naive_rate:.1f}   (target >= 15)")
    if not args.no_ceiling:
        print(f"b/c = {pipeline_rate / ceiling_rate:.2f}  (target >= 0.8)")
    print(f"peak RSS {peak_gb:.2f} GB; (b) reused {reused} prompt tokens' KV from the previous stage's rows")

    if args.openai:
        from cai_kit.engines.openai import OpenAIEngine

        folder = resolve_model(args.model)
        modes = (("(d) openai engine, transformers serve", False), ("(e) same, continuous batching", True))
        for label, batching in modes:
            process, url = serve(folder, batching)
            try:
                remote = OpenAIEngine(folder, base_urls=url, max_concurrency=args.batch_size, progress=False)
                rate, _ = replay(remote, recording.stages, params)
                print(f"{label:<40} {rate:8.1f} tokens/s   /b = {rate / pipeline_rate:.2f}")
            except Exception as err:  # a server mode that fails here is a result too
                print(f"{label:<40} failed: {str(err).splitlines()[0][:200]}")
            finally:
                stop(process)
    if args.openvino:
        openvino_runs(args, engine, recording, prompts, options, pipeline_rate, naive_rate)
    if args.vllm:
        from cai_kit.engines.vllm import VLLMEngine

        engine.close()
        gpu = VLLMEngine(args.model, progress=False)
        rate, _ = replay(gpu, recording.stages, params)
        print(f"(f) vllm engine in process               {rate:8.1f} tokens/s   /b = {rate / pipeline_rate:.2f}")


if __name__ == "__main__":
    main()
