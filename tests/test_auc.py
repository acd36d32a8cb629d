"""DeLong's AUC variance (quality/auc.py, fast mid-rank form) against the direct O(m·n)
computation of its structural components, on random scores with ties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quality.auc import Z95, delong, delong_paired
from quality.evaluate import roc_auc


def psi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 where a positive outscores a negative, 1/2 on a tie."""
    return (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])


def direct(scores: list[np.ndarray], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v10 = np.stack([psi(s[labels], s[~labels]).mean(axis=1) for s in scores])
    v01 = np.stack([psi(s[labels], s[~labels]).mean(axis=0) for s in scores])
    m, n = v10.shape[1], v01.shape[1]
    cov = np.cov(v10) / m + np.cov(v01) / n
    aucs = np.array([psi(s[labels], s[~labels]).mean() for s in scores])
    return aucs, np.atleast_2d(cov)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_interval_match_the_direct_computation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.4
    a = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: ties
    b = np.round(rng.normal(labels * 0.5, 1.0), 1)
    aucs, cov = direct([a, b], labels)
    one = delong(a, labels)
    assert one.auc == pytest.approx(aucs[0]) == pytest.approx(roc_auc(a, labels))
    half = Z95 * math.sqrt(cov[0, 0])
    assert (one.low, one.high) == (pytest.approx(aucs[0] - half), pytest.approx(aucs[0] + half))
    paired = delong_paired(a, b, labels)
    sd = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert paired.difference == pytest.approx(aucs[0] - aucs[1])
    assert paired.high - paired.low == pytest.approx(2 * Z95 * sd)
    assert paired.p_value == pytest.approx(math.erfc(abs(paired.difference / sd) / math.sqrt(2)))


def test_more_pairs_narrow_the_interval_and_a_method_equals_itself() -> None:
    rng = np.random.default_rng(7)
    widths = []
    for n in (200, 2000, 20000):
        labels = rng.random(n) < 0.5
        scores = rng.normal(labels * 1.0, 1.0)
        found = delong(scores, labels)
        assert found.low < found.auc < found.high
        widths.append(found.high - found.low)
        same = delong_paired(scores, scores, labels)
        assert (same.difference, same.p_value) == (0.0, 1.0)
    assert widths[0] > widths[1] > widths[2]


def test_one_class_only_is_refused() -> None:
    with pytest.raises(ValueError, match="two positives and two negatives"):
        delong([0.1, 0.2, 0.3], [1, 1, 0])
