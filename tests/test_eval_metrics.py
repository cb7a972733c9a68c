"""Metric functions of lusifer-eval on small cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lusifer.evaluation.metrics import (
    bitext_mining,
    bitext_scores_from_predictions,
    nearest_neighbours,
    spearman,
    sts,
)


def _distinct_unit_rows(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q[:n]  # orthonormal rows: each row's nearest neighbour is itself


def test_bitext_perfect_alignment_scores_one():
    e = _distinct_unit_rows(5)
    scores = bitext_mining(e, e * 3.0)  # scale does not matter: cosine
    assert scores == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_bitext_shuffled_translations():
    e = _distinct_unit_rows(4)
    swapped = e[[1, 0, 2, 3]]  # rows 0 and 1 retrieve each other's translation
    scores = bitext_mining(e, swapped)
    assert scores["accuracy"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["precision"] == pytest.approx(0.5)
    derangement = bitext_mining(e, e[[1, 2, 3, 0]])
    assert derangement == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_bitext_weighted_f1_matches_sklearn_weighted_definition():
    # rows 1 and 3 retrieve the candidates of rows 0 and 2: labels 0 and 2 are predicted twice.
    scores = bitext_scores_from_predictions(np.array([0, 0, 2, 2]))
    # sklearn weighted: F1_0 = F1_2 = 2*(1/2*1)/(1/2+1) = 2/3, F1_1 = F1_3 = 0 -> mean 1/3
    assert scores["accuracy"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["precision"] == pytest.approx(0.25)
    assert scores["f1"] == pytest.approx(1 / 3)


def test_bitext_ties_go_to_lowest_index():
    n = 4
    same = np.ones((n, 3))
    assert nearest_neighbours(same, same).tolist() == [0, 0, 0, 0]
    scores = bitext_mining(same, same)
    assert scores["accuracy"] == pytest.approx(1 / n)
    assert scores["f1"] == pytest.approx(2 / (n + 1) / n)
    # an exact tie between candidates 1 and 2 for query 2: the lower index wins, so row 2 is wrong
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    assert nearest_neighbours(q, c).tolist() == [0, 1, 1]


def test_bitext_rejects_misaligned_or_bad_input():
    e = _distinct_unit_rows(3)
    with pytest.raises(ValueError, match="aligned rows"):
        bitext_mining(e, e[:2])
    with pytest.raises(ValueError, match="NaN"):
        bitext_mining(e, np.full_like(e, np.nan))
    with pytest.raises(ValueError, match="sizes differ"):
        bitext_mining(e, e[:, :4])


def test_spearman_known_values_and_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4) -> rho = sqrt(0.9)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))


def test_spearman_undefined_cases():
    with pytest.raises(ValueError, match="gold values are equal"):
        spearman([1, 2, 3], [2, 2, 2])
    with pytest.raises(ValueError, match="equal lengths"):
        spearman([1, 2, 3], [1, 2])
    assert spearman([0.5, 0.5, 0.5], [1, 2, 3]) == 0.0  # a collapsed model carries no ranking


def test_sts_uses_cosine_of_each_pair():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = np.array([[1.0, 0.1], [1.0, 1.0], [0.0, 1.0]])  # cosine decreasing
    assert sts(a, b, [5.0, 2.5, 0.0])["spearman"] == pytest.approx(1.0)
    assert sts(a, b * 7.0, [0.0, 2.5, 5.0])["spearman"] == pytest.approx(-1.0)
