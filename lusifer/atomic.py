"""Atomic file writes: a file appears under its name complete, or not at all (the project's one helper for this).

A file is written to a hidden temporary name beside its target (``.<name>.<pid>.<random>.partial``, same folder
so the rename stays on one file system), flushed to disk, then renamed over the target with ``os.replace``; the
folder is synced too, so the rename survives a power cut. On an error the temporary file is removed and the
target is left as it was. Standard library only (imported by the runtime and by training code alike).

A folder is made whole the same way: written under a staging name beside its target, then swapped in by
:func:`replace_folder` (saved models, exports, converted backbones); checkpoints keep their own rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened or synced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def replace_file(source: str | os.PathLike, target: str | os.PathLike, durable: bool = True) -> Path:
    """Move a finished file over ``target`` (``os.replace``, atomic on one file system) and sync the folder.

    For files written elsewhere under a temporary name (a download, a resumable ``.partial`` output).
    """
    target = Path(target)
    if durable:
        _fsync_file(Path(source))
    os.replace(source, target)
    if durable:
        fsync_dir(target.parent)
    return target


def replace_folder(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Swap a finished ``staging`` folder in as ``target`` (same file system); an old ``target`` is moved aside
    first and removed only once the new one is in place, so an error leaves the old folder as it was.
    """
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None:
            os.replace(old / target.name, target)
            shutil.rmtree(old, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """A temporary path to write ``path`` through; it becomes ``path`` when the block ends without an error.

    For writers that take a file name (``pyarrow.parquet.write_table``, ``Figure.savefig``...). The parent
    folder is created. On an error the temporary file is removed and ``path`` is left as it was.

    Example:
        >>> with atomic_path("table.parquet") as tmp:
        ...     pq.write_table(table, tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to {tmp} (the temporary file of {target})")
        replace_file(tmp, target, durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"), durable)


def write_json_atomic(path: str | os.PathLike, data: Any, *, sort_keys: bool = False, allow_nan: bool = True,
                      durable: bool = True) -> Path:
    """Write ``data`` as indented UTF-8 JSON (non-ASCII kept, a final newline) to ``path`` atomically.

    Args:
        path: The target file.
        data: A JSON-serialisable value.
        sort_keys: Sort the keys of every object.
        allow_nan: ``False`` refuses NaN and infinities (``ValueError``) instead of writing non-standard JSON.
        durable: Sync the file and its folder to disk (off for files that can be rebuilt).
    """
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=sort_keys,
                                              allow_nan=allow_nan) + "\n", durable)
