"""The statistics behind satune's claims, checked against scipy's reference implementations."""

import pytest
from scipy.stats import binomtest, ttest_rel

from satune.stats import mcnemar_p, paired_t, wilson


@pytest.mark.parametrize("b, c", [(0, 0), (3, 0), (7, 2), (20, 31), (50, 50)])
def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs(b, c):
    expected = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    assert mcnemar_p(b, c) == pytest.approx(expected)


@pytest.mark.parametrize(
    "a, b", [([0.30, 0.25, 0.28], [0.20, 0.22, 0.21]), ([0.5, 0.4, 0.45, 0.52, 0.48], [0.49, 0.43, 0.44, 0.50, 0.47])]
)
def test_paired_t_is_scipys_paired_test_with_its_interval(a, b):
    got = paired_t([x - y for x, y in zip(a, b, strict=True)])
    ref = ttest_rel(a, b)
    lo, hi = ref.confidence_interval(0.95)
    assert got is not None and got.n == len(a)
    assert got.p == pytest.approx(ref.pvalue) and (got.lo, got.hi) == pytest.approx((lo, hi))
    assert got.lo < got.mean < got.hi


def test_paired_t_needs_two_pairs_and_survives_identical_differences():
    assert paired_t([0.1]) is None and paired_t([]) is None
    same = paired_t([0.02, 0.02, 0.02])
    assert same is not None and same.p == 0.0 and same.lo == same.hi == pytest.approx(0.02)
    assert paired_t([0.0, 0.0]).p == 1.0


def test_wilson_interval():
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(45, 50)  # 0.9 on 50 examples: about [0.79, 0.96]
    assert lo == pytest.approx(0.7864, abs=1e-3) and hi == pytest.approx(0.9565, abs=1e-3)
    lo, hi = wilson(50, 50)
    assert hi == 1.0 and lo == pytest.approx(0.9287, abs=1e-3)  # never a zero-width interval at the edge
    assert wilson(900, 1000)[1] - wilson(900, 1000)[0] < wilson(90, 100)[1] - wilson(90, 100)[0]
