"""Which float precision this machine computes fastest in: the one hardware check, for generation and training.

bf16 only pays where the hardware multiplies bf16 matrices faster than fp32 ones: a CUDA GPU with bf16
(Ampere and later), or an x86 CPU with AMX (amx_bf16). With avx512_bf16 alone the instructions exist but run
bf16 matrix multiplies slower than fp32 (`benchmarks/matmul_precision.py`, 2-core Intel Xeon with avx512_bf16
and no AMX: fp32 140 against bf16 76 GFLOP/s at one thread, 256 against 114 at two; autocast training steps
and generation were slower too), and on an AVX2-only CPU, as on most laptops, PyTorch emulates bf16 and it runs
far slower (0.7 against 25.3 GFLOP/s, one thread, on a 2-core AMD EPYC; docs: Recipes). There the choice is fp32.

`torch.backends.cpu.get_cpu_capability()` (AVX2, AVX512, ...) is the kernel set PyTorch dispatches to; it goes
into every reason so a log or model card says what the machine was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # its flags of native bf16 matrix math, strongest first
FAST_BF16_FLAG = "amx_bf16"  # the one where bf16 outruns fp32 (module docstring)


@dataclass(frozen=True)
class Precision:
    """A precision choice and why it was made: `str()` gives e.g. "fp32 (CPU has no native bf16: AVX2)"."""

    bf16: bool
    reason: str
    fp16: bool = False

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def cpu_bf16_flag() -> str | None:
    """The CPU's native bf16 flag (amx_bf16 or avx512_bf16) from /proc/cpuinfo, or None (none, or not Linux)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    flags = {word for line in text.splitlines() if line.startswith("flags") for word in line.split()}
    return next((flag for flag in BF16_FLAGS if flag in flags), None)


def cpu_has_bf16() -> bool:
    return cpu_bf16_flag() is not None


def cpu_capability() -> str:
    """PyTorch's CPU kernel level: "AVX2", "AVX512", "DEFAULT", ... ("unknown" if torch cannot say)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def cpu_summary() -> str:
    """One phrase for benchmark headers: "cpu AVX2, native bf16 no" / "cpu AVX512, native bf16 amx_bf16"."""
    return f"cpu {cpu_capability()}, native bf16 {cpu_bf16_flag() or 'no'}"


def hardware_precision() -> Precision:
    """bf16 on a CUDA GPU that has it or on a CPU with AMX, else fp32; with the reason."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision(True, f"CUDA GPU: {name}")
        return Precision(False, f"CUDA GPU without bf16: {name}")
    return cpu_precision()


def cpu_prefers_bf16() -> bool:
    """True on a CPU with AMX, the one kind where bf16 beat fp32 (reads /proc/cpuinfo only: no torch import)."""
    return cpu_bf16_flag() == FAST_BF16_FLAG


def cpu_precision() -> Precision:
    """bf16 on a CPU with AMX, else fp32 (avx512_bf16 alone included); with the reason. The CPU engines use it."""
    flag = cpu_bf16_flag()
    if cpu_prefers_bf16():
        return Precision(True, f"CPU has {flag}: {cpu_capability()}")
    if flag:
        return Precision(False, f"CPU has {flag} but no AMX, where bf16 is slower: {cpu_capability()}")
    return Precision(False, f"CPU has no native bf16: {cpu_capability()}")


def training_precision(bf16: object = "auto", fp16: bool = False) -> Precision:
    """Resolve a training stage's `bf16` setting: true or false as given; "auto" or None follows the hardware.

    With `fp16: true` and bf16 not set to true, the stage trains in fp16 (TRL refuses both at once).
    Raises ValueError on any other value.
    """
    if not (isinstance(bf16, bool) or bf16 is None or bf16 == "auto"):
        raise ValueError(f"expected true, false or auto (got {bf16!r})")
    hardware = hardware_precision()
    if isinstance(bf16, bool):
        # A CPU with avx512_bf16 alone: the hardware's reason already says bf16 is slower there.
        slow = "; bf16 is slow here" if bf16 and not hardware.bf16 and not cpu_bf16_flag() else ""
        return Precision(bf16, f"bf16: {str(bf16).lower()} in the recipe; {hardware.reason}{slow}", fp16 and not bf16)
    if fp16:
        return Precision(False, f"fp16: true in the recipe; {hardware.reason}", fp16=True)
    return hardware
