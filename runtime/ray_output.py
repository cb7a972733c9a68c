"""Output folder of a Ray job: one ``<shard-stem>.npy`` (or ``.parquet``) per input shard plus ``manifest.json``.

Each shard's vectors are filled into ``.<name>.npy.partial`` (a memory-mapped ``.npy``) as results arrive,
flushed, and renamed to ``<name>.npy`` once every row is present; only then does the manifest (replaced
atomically) mark the shard ``complete``. A rerun skips shards that are complete, present and of the right row
count, and redoes the others from their first row.

With an id column a ``.npy`` shard gets ``<shard-stem>.npy.ids.parquet`` beside it; a parquet shard is
converted from its staging ``.npy`` when complete (ids in its ``id`` column). The calibration of the
``int8`` / ``uint8`` dtypes is kept in the manifest's ``quantization`` across reruns.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from lusifer.atomic import replace_file, write_json_atomic
from lusifer.runtime.compact import storage_dtype, storage_width
from lusifer.runtime.corpus import Shard
from lusifer.runtime.errors import OutputError
from lusifer.runtime.lengths import TRUNCATED_LISTED
from lusifer.runtime.parquet_writer import is_complete_parquet
from lusifer.runtime.writer import identity_differences, ids_path, remove_stale_temps

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "lusifer-embed-ray/1"
SHARD_PENDING, SHARD_RUNNING, SHARD_COMPLETE = "pending", "in_progress", "complete"


def output_names(shards: list[Shard], suffix: str = ".npy") -> list[str]:
    """Output file name per shard: ``<stem><suffix>``; when stems clash, the path below the common folder.

    ``a/part-0.parquet`` and ``b/part-0.parquet`` become ``a__part-0.npy`` and ``b__part-0.npy``.
    """
    stems = [s.path.stem for s in shards]
    if len(set(stems)) == len(stems):
        return [f"{stem}{suffix}" for stem in stems]
    paths = [s.path.resolve() for s in shards]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    names = ["__".join(p.relative_to(root).with_suffix("").parts) + suffix for p in paths]
    clash = [n for n, c in Counter(names).items() if c > 1]
    if clash:
        raise OutputError(f"shards map to the same output file(s) {clash}; rename the parquet files")
    return names


def read_manifest(out_dir: Path) -> dict | None:
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputError(f"{str(path)!r} is unreadable ({exc}); pass --overwrite to start over") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise OutputError(f"{str(path)!r} is not a lusifer-embed Ray manifest; use another --out or --overwrite")
    return data


def _complete_on_disk(out_dir: Path, entry: dict, rows: int, identity: dict) -> bool:
    path = out_dir / entry["output"]
    if entry.get("status") != SHARD_COMPLETE or not path.is_file():
        return False
    dtype = identity["dtype"]
    width = storage_width(dtype, identity["dim"])
    if path.suffix == ".parquet":
        return is_complete_parquet(path, rows, width, dtype)
    if identity.get("ids") and not ids_path(path).is_file():
        return False
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        return False
    return arr.shape == (rows, width) and arr.dtype == storage_dtype(dtype)


class ShardOutputs:
    """The manifest and the per-shard output files of one output folder.

    Create with :meth:`open`; :attr:`todo` lists the shard indices still to embed; :meth:`add` places
    vectors by (shard, row); a shard is finalised as soon as all its rows are in.
    """

    def __init__(self, out_dir: Path, manifest: dict, todo: list[int]):
        self.out_dir = out_dir
        self.manifest = manifest
        self.todo = todo
        identity = manifest["identity"]
        self.dim = storage_width(identity["dtype"], identity["dim"])  # stored values per row
        self.dtype = storage_dtype(identity["dtype"])
        self._open: dict[int, tuple[np.memmap, np.ndarray]] = {}
        self._lengths: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # per open shard: truncated, windows per row
        # finish(i, staging, dest): puts shard i's complete staging .npy in place (see lusifer.runtime.outputs)
        self.finish_shard = None
        # ids_at(i, rows): the ids of rows of shard i, to list truncated rows by id (set when the job has ids)
        self.ids_at = None

    @classmethod
    def open(cls, out_dir: str | os.PathLike, identity: dict, shards: list[Shard], overwrite: bool,
             run_info: dict) -> ShardOutputs:
        """Check the folder against ``identity`` and decide which shards to embed (before any heavy work).

        Raises:
            OutputError: the folder holds a different job (unless ``overwrite``) or is not a folder.
        """
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise OutputError(f"--out {str(out_dir)!r} is a file; a Ray job writes a folder of .npy files")
        previous = None if overwrite else read_manifest(out_dir)
        if previous is not None:
            diffs = identity_differences(previous.get("identity", {}), identity)
            if diffs:
                raise OutputError(
                    f"{str(out_dir / MANIFEST_NAME)!r} describes another job (" + "; ".join(diffs)
                    + "); use the same model and options, another --out, or --overwrite"
                )
        names = output_names(shards, ".parquet" if identity.get("format") == "parquet" else ".npy")
        old = {e["path"]: e for e in (previous or {}).get("shards", [])}
        entries, todo = [], []
        for i, (shard, name) in enumerate(zip(shards, names)):
            desc = shard.describe()
            prev = old.get(desc["path"])
            done = (prev is not None and prev.get("rows") == shard.rows and prev.get("bytes") == shard.bytes
                    and prev.get("output") == name
                    and _complete_on_disk(out_dir, prev, shard.rows, identity))
            entries.append({**desc, "output": name, "status": SHARD_COMPLETE if done else SHARD_PENDING})
            if not done:
                todo.append(i)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in [*names, MANIFEST_NAME]:  # temporary files of lusifer.atomic that a killed run left
            remove_stale_temps(out_dir / name)
        if overwrite:
            for name in names:
                (out_dir / name).unlink(missing_ok=True)
                ids_path(out_dir / name).unlink(missing_ok=True)
        run = {**run_info, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "shards_to_embed": len(todo)}
        manifest = {
            "format": MANIFEST_FORMAT,
            "status": "complete" if not todo else "in_progress",
            "identity": identity,
            "rows": sum(s.rows for s in shards),
            "shards": entries,
            "runs": list((previous or {}).get("runs", [])) + [run],
        }
        if previous is not None and "quantization" in previous:
            manifest["quantization"] = previous["quantization"]
        outputs = cls(out_dir, manifest, todo)
        outputs.save()
        return outputs

    def save(self) -> None:
        write_json_atomic(self.out_dir / MANIFEST_NAME, self.manifest, sort_keys=True)

    def _partial(self, i: int) -> Path:
        return self.out_dir / f".{self.manifest['shards'][i]['output']}.partial"

    def start(self, i: int) -> None:
        """Create shard ``i``'s partial file (replacing one a killed run left) and mark it in progress."""
        entry = self.manifest["shards"][i]
        mm = np.lib.format.open_memmap(self._partial(i), mode="w+", dtype=self.dtype, shape=(entry["rows"], self.dim))
        self._open[i] = (mm, np.zeros(entry["rows"], dtype=bool))
        self._lengths[i] = (np.zeros(entry["rows"], dtype=bool), np.ones(entry["rows"], dtype=np.int64))
        entry["status"] = SHARD_RUNNING

    def add(self, shard: np.ndarray, row: np.ndarray, vector: np.ndarray, truncated: np.ndarray | None = None,
            windows: np.ndarray | None = None) -> list[int]:
        """Place vectors at their (shard, row); returns the shards completed by this call.

        ``truncated`` (rows cut at the max length) and ``windows`` (sequences per row) are recorded in the
        shard's manifest entry when it completes: ``truncated``, ``truncated_rows`` (the first few rows of the
        shard), ``windowed_rows`` and ``windows``.
        """
        finished = []
        for i in np.unique(shard):
            i = int(i)
            if i not in self._open:
                if i not in set(self.todo) or self.manifest["shards"][i]["status"] == SHARD_COMPLETE:
                    raise RuntimeError(f"got rows of shard {i}, which is not being embedded")
                self.start(i)
            sel = shard == i
            mm, seen = self._open[i]
            mm[row[sel]] = vector[sel]
            seen[row[sel]] = True
            cut, counts = self._lengths[i]
            if truncated is not None:
                cut[row[sel]] = truncated[sel]
            if windows is not None:
                counts[row[sel]] = windows[sel]
            if seen.all():
                self._finish(i)
                finished.append(i)
        return finished

    def _finish(self, i: int) -> None:
        mm, _ = self._open.pop(i)
        mm.flush()
        del mm
        entry = self.manifest["shards"][i]
        cut, counts = self._lengths.pop(i)
        rows = np.nonzero(cut)[0]
        listed = rows[:TRUNCATED_LISTED].tolist()
        entry.update(truncated=int(len(rows)), truncated_rows=listed,
                     windowed_rows=int((counts > 1).sum()), windows=int(counts[counts > 1].sum()))
        if self.ids_at is not None and listed:
            entry["truncated_ids"] = self.ids_at(i, listed)
        if self.finish_shard is not None:
            self.finish_shard(i, self._partial(i), self.out_dir / entry["output"])
        else:
            replace_file(self._partial(i), self.out_dir / entry["output"])
        entry["status"] = SHARD_COMPLETE
        self.save()

    def finish_empty(self, i: int) -> None:
        """A shard with no rows: write its empty ``(0, dim)`` array."""
        self.start(i)
        self._finish(i)

    def close(self, summary: dict) -> None:
        """Record the run; the folder is complete when every shard is."""
        for mm, _ in self._open.values():
            mm.flush()
        self._open.clear()
        self._lengths.clear()
        incomplete = [e["output"] for e in self.manifest["shards"] if e["status"] != SHARD_COMPLETE]
        self.manifest["status"] = "complete" if not incomplete else "in_progress"
        self.manifest["runs"][-1].update(summary)
        self.save()

    def length_totals(self) -> dict:
        """Over the complete shards: truncated rows (count, first few corpus positions and, with ids, their
        ids) and windows."""
        totals = {"truncated": 0, "truncated_rows": [], "truncated_ids": [], "windowed_rows": 0, "windows": 0}
        base = 0
        for entry in self.manifest["shards"]:
            if entry["status"] == SHARD_COMPLETE:
                totals["truncated"] += entry.get("truncated", 0)
                totals["windowed_rows"] += entry.get("windowed_rows", 0)
                totals["windows"] += entry.get("windows", 0)
                room = max(TRUNCATED_LISTED - len(totals["truncated_rows"]), 0)
                listed = entry.get("truncated_rows", [])[:room]
                totals["truncated_rows"] += [base + r for r in listed]
                totals["truncated_ids"] += entry.get("truncated_ids", [])[:len(listed)]
            base += entry["rows"]
        if not totals["truncated_ids"] or len(totals["truncated_ids"]) != len(totals["truncated_rows"]):
            totals["truncated_ids"] = None  # no ids (or none listed)
        return totals
