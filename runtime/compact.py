"""Compact output vectors: ``int8``, ``uint8``, ``binary`` and ``ubinary`` as sentence-transformers defines them.

The definitions are those of ``sentence_transformers.quantization.quantize_embeddings`` (not a dependency):

* ``uint8``: ``((x - start) / step).astype(uint8)`` and ``int8``: ``((x - start) / step - 128).astype(int8)``,
  with ``start = ranges[0]`` and ``step = (ranges[1] - ranges[0]) / 255`` per dimension, all in float32. The
  ``ranges`` (per-dimension minimum and maximum) are calibrated on the first chunk of the corpus and stored
  in the output's sidecar / manifest, so a resumed run reuses them and readers can dequantize.
  Two cases the reference leaves undefined are pinned down here: a value outside the calibrated range is
  clipped to the end of the code range (instead of an undefined float-to-integer overflow), and a dimension
  that is constant over the calibration rows (step 0) uses step 1 (its calibrated value maps to code 0 / -128).
* ``binary``: ``packbits(x > 0) - 128`` as int8 and ``ubinary``: ``packbits(x > 0)`` as uint8, 8 dimensions
  per byte, most significant bit first. Bits are packed per row (a row's last byte is zero-padded when the
  dimension is not a multiple of 8). Compare binary vectors by Hamming distance.

Only numpy is used (the runtime imports no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FLOAT_DTYPES = ("float32", "float16")
SCALAR_DTYPES = ("int8", "uint8")
BINARY_DTYPES = ("binary", "ubinary")
COMPACT_DTYPES = SCALAR_DTYPES + BINARY_DTYPES
OUTPUT_DTYPES = FLOAT_DTYPES + COMPACT_DTYPES

_STORAGE = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "uint8": np.uint8,
            "binary": np.int8, "ubinary": np.uint8}
_CODE_RANGE = {"uint8": (0.0, 255.0), "int8": (-128.0, 127.0)}


def check_dtype(dtype: str) -> str:
    """Return ``dtype`` if it is an output dtype, else raise ``ValueError`` naming the choices."""
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of {', '.join(OUTPUT_DTYPES)}")
    return dtype


def storage_dtype(dtype: str) -> np.dtype:
    """The numpy dtype the vectors of output dtype ``dtype`` are stored in."""
    return np.dtype(_STORAGE[check_dtype(dtype)])


def storage_width(dtype: str, dim: int) -> int:
    """Values stored per row: ``dim``, or ``ceil(dim / 8)`` bytes for the binary dtypes."""
    return (dim + 7) // 8 if check_dtype(dtype) in BINARY_DTYPES else dim


def needs_calibration(dtype: str) -> bool:
    """Whether ``dtype`` needs per-dimension ranges (``int8`` / ``uint8``)."""
    return check_dtype(dtype) in SCALAR_DTYPES


def calibrate(block: np.ndarray) -> np.ndarray:
    """Per-dimension ``[min, max]`` of ``block`` as a ``(2, dim)`` float32 array (the reference's ``ranges``)."""
    block = np.asarray(block, dtype=np.float32)
    if block.ndim != 2 or len(block) == 0:
        raise ValueError(f"calibration needs a non-empty (rows, dim) block, got shape {block.shape}")
    return np.vstack((block.min(axis=0), block.max(axis=0))).astype(np.float32)


def _starts_steps(ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ranges = np.asarray(ranges, dtype=np.float32)
    starts = ranges[0, :]
    steps = (ranges[1, :] - ranges[0, :]) / np.float32(255)
    steps = np.where(steps > 0, steps, np.float32(1)).astype(np.float32)
    return starts, steps


def quantize(block: np.ndarray, dtype: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """Encode float vectors as ``dtype`` (see the module docstring for the definitions).

    Args:
        block: ``(rows, dim)`` float vectors.
        dtype: One of :data:`OUTPUT_DTYPES`.
        ranges: ``(2, dim)`` per-dimension min and max; required for ``int8`` / ``uint8``.

    Returns:
        ``(rows, storage_width(dtype, dim))`` values of ``storage_dtype(dtype)``.
    """
    check_dtype(dtype)
    if dtype in FLOAT_DTYPES:
        return np.asarray(block).astype(dtype, copy=False)
    block = np.asarray(block, dtype=np.float32)
    if dtype in BINARY_DTYPES:
        packed = np.packbits(block > 0, axis=-1)
        return packed if dtype == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    if ranges is None:
        raise ValueError(f"dtype {dtype!r} needs calibrated ranges")
    ranges = np.asarray(ranges, dtype=np.float32)
    if ranges.shape != (2, block.shape[-1]):
        raise ValueError(f"ranges of shape {ranges.shape} do not fit vectors of dimension {block.shape[-1]}")
    starts, steps = _starts_steps(ranges)
    codes = (block - starts) / steps
    if dtype == "int8":
        codes = codes - np.float32(128)
    low, high = _CODE_RANGE[dtype]
    return np.clip(codes, low, high).astype(_STORAGE[dtype])


def dequantize(codes: np.ndarray, dtype: str, ranges: np.ndarray | None = None, dim: int | None = None) -> np.ndarray:
    """Approximate float32 vectors back from stored codes (for reading compact outputs).

    ``int8`` / ``uint8``: ``start + code * step`` (``code + 128`` for int8), the lower edge of each bucket;
    ``binary`` / ``ubinary``: ``+1`` for a set bit and ``-1`` for a clear one (``dim`` cuts the padding).
    Float dtypes are returned as float32.
    """
    check_dtype(dtype)
    codes = np.asarray(codes)
    if dtype in FLOAT_DTYPES:
        return codes.astype(np.float32)
    if dtype in BINARY_DTYPES:
        raw = codes if dtype == "ubinary" else (codes.astype(np.int16) + 128).astype(np.uint8)
        bits = np.unpackbits(raw, axis=-1)
        if dim is not None:
            bits = bits[:, :dim]
        return bits.astype(np.float32) * 2 - 1
    if ranges is None:
        raise ValueError(f"dtype {dtype!r} needs the calibrated ranges of the output's sidecar")
    starts, steps = _starts_steps(ranges)
    shifted = codes.astype(np.float32) + (np.float32(128) if dtype == "int8" else np.float32(0))
    return starts + shifted * steps


@dataclass
class Quantizer:
    """Turns float blocks into the output dtype; calibrates ``int8`` / ``uint8`` on the first block it sees.

    Attributes:
        dtype: The output dtype.
        ranges: ``(2, dim)`` float32 calibration, or ``None`` until calibrated (scalar dtypes only).
        calibration_rows: Rows the ranges were computed from.
    """

    dtype: str
    ranges: np.ndarray | None = None
    calibration_rows: int = 0

    def __post_init__(self) -> None:
        check_dtype(self.dtype)
        if self.ranges is not None:
            self.ranges = np.asarray(self.ranges, dtype=np.float32)
            if self.ranges.ndim != 2 or self.ranges.shape[0] != 2:
                raise ValueError(f"ranges must have shape (2, dim), got {self.ranges.shape}")

    @property
    def calibrated(self) -> bool:
        return not needs_calibration(self.dtype) or self.ranges is not None

    def encode(self, block: np.ndarray) -> tuple[np.ndarray, dict | None]:
        """Encode ``block``; the first call of an uncalibrated scalar quantizer calibrates on it.

        Returns:
            The encoded block and, when this call calibrated, the record to store (:meth:`describe`).
        """
        record = None
        if not self.calibrated:
            self.ranges = calibrate(block)
            self.calibration_rows = len(block)
            record = self.describe()
        return quantize(block, self.dtype, self.ranges), record

    def describe(self) -> dict[str, Any] | None:
        """What a reader needs to dequantize, as stored in the sidecar (``None`` for other dtypes)."""
        if self.ranges is None:
            return None
        return {"dtype": self.dtype, "calibration_rows": self.calibration_rows,
                "definition": "sentence-transformers quantize_embeddings",
                "ranges": [[float(v) for v in row] for row in self.ranges]}

    @classmethod
    def from_record(cls, dtype: str, record: dict | None) -> "Quantizer":
        """A quantizer with the stored calibration of a resumed output (``record`` may be ``None``)."""
        if not record:
            return cls(dtype)
        if record.get("dtype") != dtype:
            raise ValueError(f"stored calibration is for {record.get('dtype')!r}, not {dtype!r}")
        return cls(dtype, np.asarray(record["ranges"], dtype=np.float32), int(record.get("calibration_rows", 0)))
