"""Normalising embeddings and comparing them by cosine: the project's one numpy implementation of each.

Numpy only (used by the runtime, the exporter's parity checks, training's merge check, evaluation and the
benchmarks). The torch counterpart used inside the model is :func:`lusifer.pooling.l2_normalize`.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def l2_normalize(x, eps: float = EPS) -> np.ndarray:
    """Vectors (the last axis) divided by their L2 norm, the norm clamped at ``eps`` (zero vectors stay zero).

    float32 and float64 input keep their dtype; any other input (float16, integers) becomes float32.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def row_cosines(a, b) -> np.ndarray:
    """Cosine similarity of row ``i`` of ``a`` with row ``i`` of ``b``, in float64: shape ``(rows,)``.

    A zero row gives 0; a NaN row gives NaN (so a broken vector is never hidden).

    Raises:
        ValueError: ``a`` and ``b`` are not 2-D arrays of the same shape.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"row cosines need two 2-D arrays of the same shape; got {a.shape} and {b.shape}")
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a, b) / np.maximum(denom, EPS * EPS)


def cosine_matrix(a, b) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b``, in float64: shape ``(len(a), len(b))``.

    Raises:
        ValueError: ``a`` and ``b`` are not 2-D arrays with the same number of columns.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a cosine matrix needs two 2-D arrays with equal columns; got {a.shape} and {b.shape}")
    return l2_normalize(a) @ l2_normalize(b).T
