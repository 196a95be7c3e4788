"""Matrix-multiply speed in fp32 and bf16 on this CPU: the figure behind `bf16: auto` (core/precision.py).

    python benchmarks/matmul_precision.py                 # one thread, 1024 x 1024, ~10 s
    python benchmarks/matmul_precision.py --threads 2 --size 2048

On a CPU with avx512_bf16 or AMX, bf16 matmuls run on native instructions; elsewhere (AVX2 only)
PyTorch converts to fp32 element by element and they run many times slower than fp32 ones.
It prints a header naming the CPU, GFLOP/s for each dtype, and fp32 / bf16.
"""

from __future__ import annotations

import argparse
import time

import torch

from cai_kit.core.precision import cpu_summary, hardware_precision


def gflops(dtype: torch.dtype, size: int, seconds: float) -> float:
    """GFLOP/s of `size` x `size` matmuls in `dtype`, repeated for about `seconds` after one warm-up."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < seconds:
        torch.mm(a, b)
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent on each dtype")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_summary()}, torch {torch.__version__}, {args.threads} thread(s), {args.size} x {args.size}; "
          f"bf16: auto -> {hardware_precision()}")
    fp32 = gflops(torch.float32, args.size, args.seconds)
    bf16 = gflops(torch.bfloat16, args.size, args.seconds)
    print(f"fp32 {fp32:8.1f} GFLOP/s")
    print(f"bf16 {bf16:8.1f} GFLOP/s")
    print(f"fp32 / bf16 = {fp32 / bf16:.1f}x")


if __name__ == "__main__":
    main()
