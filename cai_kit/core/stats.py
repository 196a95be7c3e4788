"""Rates with 95% Wilson score intervals, the interval every rate in an eval report carries.

Wilson (1927) rather than the normal approximation: eval sets here are small (tens of prompts)
and rates sit near 0 or 1, where the normal interval leaves [0, 1] or collapses to zero width.
"""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for `successes` out of `n`; (0, 1) when n is 0.

    `successes` may be fractional (a tie counted as half a win); the formula takes it as is.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Exact at the ends (the formula gives 0 and 1 there, up to rounding).
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def rate(successes: float, n: int) -> dict[str, Any]:
    """{"rate", "low", "high", "k", "n"}: a share with its 95% interval, as results.json stores it."""
    low, high = wilson(successes, n)
    return {"rate": successes / n if n else None, "low": low, "high": high, "k": successes, "n": n}


def newcombe(k1: float, n1: int, k2: float, n2: int, z: float = Z95) -> tuple[float, float]:
    """95% interval for the difference of two independent proportions k1/n1 - k2/n2.

    Newcombe's hybrid score interval (Newcombe 1998, Statistics in Medicine 17:873, method 10): each side
    of the difference is widened by the distances from the two rates to their own Wilson limits, so it
    inherits Wilson's good behaviour near 0 and 1 and never leaves [-1, 1]. Either n 0 gives (-1, 1).
    """
    if n1 <= 0 or n2 <= 0:
        return -1.0, 1.0
    p1, p2 = k1 / n1, k2 / n2
    (low1, high1), (low2, high2) = wilson(k1, n1, z), wilson(k2, n2, z)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - low1) ** 2 + (high2 - p2) ** 2)
    high = difference + math.sqrt((high1 - p1) ** 2 + (p2 - low2) ** 2)
    return max(-1.0, low), min(1.0, high)


def difference(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """{"difference", "low", "high"}: two `rate` entries' difference, first minus second, with its 95% interval
    (`newcombe`); difference None when either rate is."""
    if first.get("rate") is None or second.get("rate") is None:
        return {"difference": None, "low": -1.0, "high": 1.0}
    low, high = newcombe(first["k"], first["n"], second["k"], second["n"])
    return {"difference": first["rate"] - second["rate"], "low": low, "high": high}


def format_difference(entry: dict[str, Any] | None) -> str:
    """"+0.25 [+0.11, +0.37]" (signed: a difference can go either way) or "-" for a missing one."""
    if not entry or entry.get("difference") is None:
        return "-"
    return f"{entry['difference']:+.2f} [{entry['low']:+.2f}, {entry['high']:+.2f}]"


def format_rate(entry: dict[str, Any] | None) -> str:
    """"0.25 [0.11, 0.47]" or "-" for a missing rate."""
    if not entry or entry.get("rate") is None:
        return "-"
    return f"{entry['rate']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}]"


def mean_interval(values: list[float], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """{"mean", "low", "high", "n"}: a mean with its 95% percentile-bootstrap interval over the values.

    For per-prompt figures (an answer's NLL, a difference between two models on one prompt): the
    bootstrap makes no normality assumption and needs no t table; the fixed seed keeps a report
    reproducible. Fewer than two values give the mean with no interval (low = high = mean).
    """
    import random

    n = len(values)
    if not n:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "low": mean, "high": mean, "n": n}
    draw = random.Random(seed)
    means = sorted(sum(draw.choices(values, k=n)) / n for _ in range(resamples))
    return {"mean": mean, "low": means[int(0.025 * resamples)], "high": means[int(0.975 * resamples) - 1], "n": n}
