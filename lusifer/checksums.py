"""File checksums shared by data preparation, export, runtime and evaluation (torch-free)."""

from __future__ import annotations

import hashlib
import os

_BLOCK = 8 * 1024 * 1024


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
