"""Evaluation metrics as pure functions of embeddings (numpy, and scipy for Spearman).

Bitext mining follows MTEB's ``BitextMiningEvaluator``: every ``sentence1`` embedding retrieves its nearest
``sentence2`` embedding by cosine similarity; row ``i`` is correct when it retrieves ``i``. Precision, recall
and F1 are scikit-learn's ``average="weighted"`` with ``zero_division=0`` over the gold labels ``0..n-1``
(each gold label has support 1, so the weighted mean is the plain mean over rows, and recall equals
accuracy). Ties in similarity go to the lowest candidate index. STS is Spearman's rank correlation between
the cosine similarity of each pair and its gold score (MTEB's ``cosine_spearman``). All scores are returned as
fractions (x100 is applied when reporting).
"""

from __future__ import annotations

import logging

import numpy as np

from lusifer.vectors import cosine_matrix as _cosine_matrix
from lusifer.vectors import l2_normalize, row_cosines

logger = logging.getLogger(__name__)


def _as_matrix(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} has shape {arr.shape}; expected a non-empty 2-D array (rows, dim)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def cosine_matrix(a, b) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b``: shape (len(a), len(b))."""
    a = _as_matrix(a, "a")
    b = _as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding sizes differ: {a.shape[1]} vs {b.shape[1]}")
    return _cosine_matrix(a, b)


def paired_cosine(a, b) -> np.ndarray:
    """Cosine similarity of row ``i`` of ``a`` with row ``i`` of ``b``: shape (n,)."""
    a = _as_matrix(a, "a")
    b = _as_matrix(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings differ in shape: {a.shape} vs {b.shape}")
    return row_cosines(a, b)


def nearest_neighbours(queries, candidates, chunk_size: int = 1024) -> np.ndarray:
    """Index of the most cosine-similar candidate for each query (ties: lowest index), in chunks of queries."""
    q = l2_normalize(_as_matrix(queries, "queries"))
    c = l2_normalize(_as_matrix(candidates, "candidates"))
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"embedding sizes differ: {q.shape[1]} vs {c.shape[1]}")
    out = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), chunk_size):
        out[start : start + chunk_size] = np.argmax(q[start : start + chunk_size] @ c.T, axis=1)
    return out


def bitext_scores_from_predictions(predictions) -> dict[str, float]:
    """MTEB bitext-mining scores from the retrieved index of each row (gold of row ``i`` is ``i``).

    Args:
        predictions: Integer array (n,), the candidate retrieved for each row.

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1`` as fractions in [0, 1].
    """
    pred = np.asarray(predictions)
    if pred.ndim != 1 or pred.size == 0 or not np.issubdtype(pred.dtype, np.integer):
        raise ValueError(f"predictions must be a non-empty 1-D integer array, got shape {pred.shape} {pred.dtype}")
    n = pred.size
    gold = np.arange(n)
    correct = pred == gold
    # how often each gold label was predicted (predictions outside 0..n-1 only add false positives)
    counts = np.bincount(pred[(pred >= 0) & (pred < n)], minlength=n).astype(np.float64)
    tp = correct.astype(np.float64)
    precision = np.divide(tp, counts, out=np.zeros(n), where=counts > 0)
    f1 = 2.0 * tp / (counts + 1.0)  # 2tp / (predicted + support), support = 1
    return {
        "accuracy": float(correct.mean()),
        "precision": float(precision.mean()),
        "recall": float(tp.mean()),
        "f1": float(f1.mean()),
    }


def bitext_mining(embeddings1, embeddings2) -> dict[str, float]:
    """MTEB bitext mining: nearest ``embeddings2`` row for each ``embeddings1`` row by cosine.

    Args:
        embeddings1: (n, dim) embeddings of the sentences in the evaluated language.
        embeddings2: (n, dim) embeddings of their aligned translations, same order.

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1`` as fractions in [0, 1].
    """
    e1 = _as_matrix(embeddings1, "embeddings1")
    e2 = _as_matrix(embeddings2, "embeddings2")
    if len(e1) != len(e2):
        raise ValueError(f"bitext needs aligned rows: {len(e1)} sentence1 vs {len(e2)} sentence2 embeddings")
    return bitext_scores_from_predictions(nearest_neighbours(e1, e2))


def spearman(predicted, gold) -> float:
    """Spearman's rank correlation (ties get average ranks), as a fraction in [-1, 1].

    Constant ``predicted`` values (a collapsed model that scores every pair alike) carry no ranking
    information and give 0.0, with a warning.

    Raises:
        ValueError: on length mismatch, fewer than 2 values, non-finite values, or constant ``gold``.
    """
    from lusifer.extras import require

    stats = require("scipy.stats", extra="eval", purpose="compute Spearman correlation")
    x = np.asarray(predicted, dtype=np.float64).ravel()
    y = np.asarray(gold, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman needs equal lengths, got {x.size} and {y.size}")
    if x.size < 2:
        raise ValueError(f"spearman needs at least 2 values, got {x.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("spearman inputs contain NaN or infinite values")
    if np.all(y == y[0]):
        raise ValueError(f"spearman is undefined: all gold values are equal ({y[0]!r})")
    if np.all(x == x[0]):
        logger.warning("all %d predicted similarities are equal (%r): Spearman set to 0.0", x.size, x[0])
        return 0.0
    return float(stats.spearmanr(x, y).statistic)


def sts(embeddings1, embeddings2, gold_scores) -> dict[str, float]:
    """STS: Spearman correlation between paired cosine similarity and gold scores.

    Returns:
        ``{"spearman": rho}`` as a fraction in [-1, 1].
    """
    cosines = paired_cosine(embeddings1, embeddings2)
    return {"spearman": spearman(cosines, gold_scores)}
