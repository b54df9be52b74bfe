"""The statistics behind every claim satune prints: a 95 % Wilson interval for one accuracy, the
exact McNemar test for two models on the same examples, and the paired t-test for two
configurations over the same seeds. Plain Python (scipy's t distribution for the last)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

ALPHA = 0.05  # every test and interval here is two-sided at 95 %


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of k successes in n trials (well-behaved at 0 and n)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0 or n one end is exact (rounding would leave 1e-16 between it and the accuracy).
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test: under no difference the b + c examples on which exactly one of
    two models is right split as a fair coin's flips."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedT:
    """A mean difference over paired seeds with its 95 % t interval and two-sided p."""

    n: int
    mean: float
    lo: float
    hi: float
    p: float


def paired_t(differences: list[float]) -> PairedT | None:
    """The paired t-test of differences (one per seed), with n - 1 degrees of freedom: exact for any
    n >= 2 when the differences are normal. With 3-5 seeds it is the test that can still speak
    (a sign or signed-rank test cannot reach p < 0.05 below 6 pairs). None below 2 pairs."""
    from scipy.stats import t as student

    n = len(differences)
    if n < 2:
        return None
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    if sd == 0:  # every seed moved by exactly the same amount: no spread to scale by
        return PairedT(n, mean, mean, mean, 1.0 if mean == 0 else 0.0)
    se = sd / math.sqrt(n)
    half = float(student.ppf(1 - ALPHA / 2, n - 1)) * se
    p = float(2 * student.sf(abs(mean / se), n - 1))
    return PairedT(n, mean, mean - half, mean + half, p)
