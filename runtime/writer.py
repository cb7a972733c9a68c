"""The output ``.npy``: written chunk by chunk through memory maps, committed per chunk, finalised by rename.

Files for ``--out vectors.npy``:

* ``vectors.npy.partial``: the array being written (a valid ``.npy`` header, rows filled in corpus order);
* ``vectors.npy.json``: the sidecar: what is embedded (model checksum, corpus files and row counts,
  options), progress (``completed_rows``) and, once done, the summary;
* ``vectors.npy``: appears only when every row is written (atomic rename of the partial file);
* ``vectors.npy.ids.parquet``: with an id column, the ids in row order (written just before that rename).

For ``--out vectors.parquet`` the rows are staged in ``vectors.parquet.staging.npy`` the same way and
converted into ``vectors.parquet`` at the end (:mod:`lusifer.runtime.parquet_writer`). Compact dtypes
(:mod:`lusifer.runtime.compact`) store their calibration in the sidecar's ``quantization``.

Each chunk is written, flushed to the file, and only then is the sidecar's ``completed_rows`` advanced (an
atomic replace of the JSON file), so a kill at any moment leaves a state that ``--resume`` continues exactly.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from lusifer.atomic import fsync_dir, replace_file, write_json_atomic
from lusifer.runtime.compact import OUTPUT_DTYPES, storage_dtype
from lusifer.runtime.errors import OutputError

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = "lusifer-embed/1"
OUTPUT_SUFFIXES = (".npy", ".parquet")
STATUS_RUNNING = "in_progress"
STATUS_COMPLETE = "complete"


def sidecar_path(out: str | os.PathLike) -> Path:
    return Path(str(out) + ".json")


def partial_path(out: str | os.PathLike) -> Path:
    return Path(str(out) + ".partial")


def staging_path(out: str | os.PathLike) -> Path:
    """Where rows are committed: the partial file itself for ``.npy``; a ``.staging.npy`` for parquet."""
    return partial_path(out) if Path(out).suffix == ".npy" else Path(str(out) + ".staging.npy")


def ids_path(out: str | os.PathLike) -> Path:
    """The ids file beside a ``.npy`` output run with an id column."""
    return Path(str(out) + ".ids.parquet")


def output_files(out: str | os.PathLike) -> list[Path]:
    """Every file an output may consist of (final, partial, staging, ids, sidecar)."""
    paths = [Path(out), partial_path(out), staging_path(out), ids_path(out), sidecar_path(out)]
    return list(dict.fromkeys(paths))


def remove_stale_temps(out: str | os.PathLike) -> None:
    """Remove the temporary files a killed run left beside ``out``: the hidden ``.<name>.<pid>.<random>.partial``
    files of :mod:`lusifer.atomic` through which the output, its sidecar and its ids file are written."""
    out = Path(out)
    for path in (out, sidecar_path(out), ids_path(out)):
        for tmp in out.parent.glob(f".{glob.escape(path.name)}.[0-9]*.partial"):
            tmp.unlink(missing_ok=True)


def read_sidecar(out: str | os.PathLike) -> dict | None:
    """The sidecar of ``out``, or ``None`` if there is none."""
    path = sidecar_path(out)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputError(f"sidecar {str(path)!r} is unreadable ({exc}); pass --overwrite to start over") from exc
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise OutputError(f"{str(path)!r} is not a lusifer-embed sidecar; move it away or pass --overwrite")
    return data


def check_output(out: str | os.PathLike, resume: bool, overwrite: bool) -> dict | None:
    """Decide early (before heavy work) whether ``out`` may be written.

    Returns:
        The previous sidecar when resuming one, else ``None``.

    Raises:
        OutputError: the path is not a ``.npy`` file, or output exists and neither ``resume`` nor
            ``overwrite`` was given.
    """
    out = Path(out)
    if resume and overwrite:
        raise OutputError("--resume and --overwrite exclude each other: choose one")
    if out.suffix not in OUTPUT_SUFFIXES:
        raise OutputError(f"output {str(out)!r} must be a .npy or .parquet file")
    if out.is_dir():
        raise OutputError(f"output {str(out)!r} is a folder; expected a .npy or .parquet file path")
    existing = [p for p in output_files(out) if p.exists()]
    if overwrite or not existing:
        return None
    previous = read_sidecar(out)
    if resume:
        if previous is None:
            raise OutputError(
                f"cannot resume: {str(out)!r} exists but has no sidecar {sidecar_path(out).name!r} describing it; "
                "pass --overwrite to replace it"
            )
        return previous
    if previous is not None and previous.get("status") == STATUS_RUNNING:
        done = previous.get("progress", {}).get("completed_rows", 0)
        total = previous.get("identity", {}).get("shape", ["?"])[0]
        raise OutputError(
            f"an unfinished run left {str(staging_path(out))!r} ({done} of {total} rows done); "
            "pass --resume to continue it or --overwrite to start over"
        )
    raise OutputError(
        f"output {str(existing[0])!r} already exists; pass --overwrite to replace it "
        "(or --resume to continue an unfinished run)"
    )


def identity_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two identity dicts (nested keys joined by dots)."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(identity_differences(a, b, name + "."))
        elif a != b:
            sa, sb = json.dumps(a, ensure_ascii=False), json.dumps(b, ensure_ascii=False)
            diffs.append(f"{name}: was {sa[:200]}, now {sb[:200]}")
    return diffs


class VectorWriter:
    """Writes rows of the output array in chunks and keeps the sidecar in step.

    Create it with :meth:`open`. ``completed_rows`` says where to continue; :meth:`commit` writes one chunk
    (flush, then sidecar update); :meth:`finalize` renames the partial file into place.
    """

    def __init__(self, out: Path, sidecar: dict, header_bytes: int):
        self.out = out
        self.partial = staging_path(out)  # the memory-mapped .npy that rows are committed to
        self.sidecar = sidecar
        self.header_bytes = header_bytes
        identity = sidecar["identity"]
        self.rows, self.dim = identity["shape"]  # dim: stored values per row (bytes for binary dtypes)
        self.dtype = storage_dtype(identity["dtype"])

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, out: str | os.PathLike, identity: dict, previous: dict | None, run_info: dict) -> "VectorWriter":
        """Start a new output or continue ``previous`` (the sidecar returned by :func:`check_output`).

        Args:
            out: Final ``.npy`` path.
            identity: What is embedded: ``shape``, ``dtype``, model, corpus and options (must match to resume).
            previous: The earlier sidecar when resuming, else ``None`` (existing files are replaced).
            run_info: Facts about this run (device, variant...), appended to the sidecar's ``runs``.
        """
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if identity["dtype"] not in OUTPUT_DTYPES:
            raise OutputError(f"output dtype {identity['dtype']!r}; expected one of {', '.join(OUTPUT_DTYPES)}")
        run = {**run_info, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        remove_stale_temps(out)
        if previous is not None:
            return cls._continue(out, identity, previous, run)
        for path in output_files(out):
            if path.exists():
                path.unlink()
        rows, dim = identity["shape"]
        mm = np.lib.format.open_memmap(staging_path(out), mode="w+", dtype=storage_dtype(identity["dtype"]),
                                       shape=(rows, dim))
        header = mm.offset
        mm.flush()
        del mm
        sidecar = {
            "format": SIDECAR_FORMAT,
            "status": STATUS_RUNNING,
            "output": str(out.resolve()),
            "identity": identity,
            "progress": {"completed_rows": 0, "chunks": 0, "tokens": 0, "padded_tokens": 0, "truncated": 0,
                         "null_rows": 0, "seconds": 0.0},
            "runs": [{**run, "start_row": 0}],
        }
        writer = cls(out, sidecar, header)
        write_json_atomic(sidecar_path(out), sidecar, sort_keys=True)
        return writer

    @classmethod
    def _continue(cls, out: Path, identity: dict, previous: dict, run: dict) -> "VectorWriter":
        diffs = identity_differences(previous.get("identity", {}), identity)
        if diffs:
            raise OutputError(
                f"cannot resume {str(out)!r}: the earlier run embedded something else ("
                + "; ".join(diffs)
                + "). Use the same model, corpus and options, or pass --overwrite to start over"
            )
        done = previous["progress"]["completed_rows"]
        rows = identity["shape"][0]
        partial = staging_path(out)
        if previous.get("status") == STATUS_COMPLETE or (not partial.exists() and out.exists() and done == rows):
            if not out.exists():
                raise OutputError(f"sidecar says {str(out)!r} is complete but the file is missing; pass --overwrite")
            writer = cls(out, previous, header_bytes=0)
            writer.already_complete = True
            return writer
        if not partial.exists():
            raise OutputError(
                f"cannot resume: {str(partial)!r} is missing although the sidecar records {done} rows done; "
                "pass --overwrite to start over"
            )
        try:
            mm = np.lib.format.open_memmap(partial, mode="r+")
        except (ValueError, OSError) as exc:
            raise OutputError(f"cannot resume: {str(partial)!r} is not a readable .npy file ({exc})") from exc
        if mm.shape != tuple(identity["shape"]) or mm.dtype != storage_dtype(identity["dtype"]):
            raise OutputError(
                f"cannot resume: {str(partial)!r} holds {mm.shape} {mm.dtype}, expected {tuple(identity['shape'])} "
                f"{identity['dtype']}; pass --overwrite"
            )
        header = mm.offset
        del mm
        sidecar = dict(previous)
        sidecar["runs"] = list(previous.get("runs", [])) + [{**run, "start_row": done}]
        writer = cls(out, sidecar, header)
        write_json_atomic(sidecar_path(out), sidecar, sort_keys=True)
        logger.info("resuming %s at row %d of %d", out, done, rows)
        return writer

    already_complete = False

    # ---- progress ------------------------------------------------------------------------------
    @property
    def completed_rows(self) -> int:
        return int(self.sidecar["progress"]["completed_rows"])

    @property
    def progress(self) -> dict:
        return self.sidecar["progress"]

    def commit(self, start: int, block: np.ndarray, stats: dict[str, Any], run_update: dict[str, Any],
               record: dict[str, Any] | None = None) -> None:
        """Write rows ``start : start + len(block)``, flush them to the file, then advance the sidecar.

        Args:
            start: First row; must equal ``completed_rows`` (chunks are committed in order).
            block: ``(rows, dim)`` values (cast to the output dtype).
            stats: Counters to add to the sidecar's progress (tokens, truncated, ...); a list value replaces
                the stored one (e.g. the first truncated rows).
            run_update: Fields to set on this run's entry in ``runs`` (rows, seconds, rates).
            record: Top-level sidecar fields to set with this chunk (e.g. the int8 calibration of chunk 0).
        """
        if start != self.completed_rows:
            raise RuntimeError(f"chunk starts at row {start} but {self.completed_rows} rows are committed")
        n = len(block)
        if start + n > self.rows or block.shape[1:] != (self.dim,):
            raise RuntimeError(f"chunk {block.shape} at row {start} does not fit the output {self.rows, self.dim}")
        if n:
            row_bytes = self.dim * self.dtype.itemsize
            window = np.memmap(self.partial, dtype=self.dtype, mode="r+",
                               offset=self.header_bytes + start * row_bytes, shape=(n, self.dim))
            window[:] = block.astype(self.dtype, copy=False)
            window.flush()
            del window
        progress = self.sidecar["progress"]
        for key, value in stats.items():  # counters are added; lists (rows listed so far) replace
            progress[key] = value if isinstance(value, list) else progress.get(key, 0) + value
        progress["completed_rows"] = start + n
        progress["chunks"] = progress.get("chunks", 0) + 1
        self.sidecar["runs"][-1].update(run_update)
        self.sidecar.update(record or {})
        write_json_atomic(sidecar_path(self.out), self.sidecar, sort_keys=True)

    def finalize(self, summary: dict[str, Any], finish=None) -> Path:
        """Put the complete output in place and mark the sidecar complete.

        Args:
            summary: Stored as the sidecar's ``summary``.
            finish: Called with this writer while the staging file still exists (writes the ids file, or
                converts the staging file into a parquet output and removes it); must be repeatable.
        """
        if self.completed_rows != self.rows:
            raise RuntimeError(f"only {self.completed_rows} of {self.rows} rows are written")
        if self.partial.exists():
            if finish is not None:
                finish(self)
            if self.partial.exists() and self.partial != self.out:
                if self.out.suffix == ".npy":
                    replace_file(self.partial, self.out)
                else:  # a parquet output was written from the staging file
                    self.partial.unlink()
                    fsync_dir(self.out.parent)
        self.sidecar["status"] = STATUS_COMPLETE
        self.sidecar["summary"] = summary
        write_json_atomic(sidecar_path(self.out), self.sidecar, sort_keys=True)
        return self.out
