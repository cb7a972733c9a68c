"""The results file of ``lusifer-eval``: read, validate, write atomically, merge.

A results file is ``{"format": "lusifer-eval-results", "format_version": 1, "complete": bool,
"score_scale": 100, "created": ..., "runs": [run, ...]}`` where each run is what
:func:`lusifer.evaluation.runner.run_suite` returns. A file is rewritten (atomically) after every model, with
``complete: false`` and the models still to do in ``pending`` until the last one is done, so an interrupted
invocation leaves a valid file that ``--resume`` continues.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lusifer.evaluation.runner import now_iso

FORMAT = "lusifer-eval-results"
FORMAT_VERSION = 1
RUN_FIELDS = ("name", "model", "suite", "settings", "tasks", "languages", "averages", "timings", "versions")


class ResultsError(ValueError):
    """A results file is missing, malformed, incomplete where a complete one is needed, or cannot be merged."""


def results_document(runs: list[dict], pending: list[str] | None = None) -> dict:
    """The JSON document holding ``runs``; ``pending`` names models not evaluated yet (file incomplete)."""
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": not pending,
        "score_scale": 100,
        "created": now_iso(),
        "runs": runs,
    }
    if pending:
        doc["pending"] = list(pending)
    return doc


def load_results(path: str | os.PathLike, require_complete: bool = True) -> dict:
    """Read and check a results file.

    Args:
        path: The JSON file.
        require_complete: Refuse a file marked incomplete (an interrupted multi-model run).

    Raises:
        ResultsError: naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"results file {str(path)!r} does not exist")
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ResultsError(f"{path}: not a lusifer-eval results file (expected \"format\": \"{FORMAT}\")")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ResultsError(f"{path}: format_version={version!r}; this lusifer reads up to {FORMAT_VERSION}")
    runs = doc.get("runs")
    if not isinstance(runs, list):
        raise ResultsError(f"{path}: \"runs\" must be a list")
    for i, run in enumerate(runs):
        missing = [f for f in RUN_FIELDS if not isinstance(run, dict) or f not in run]
        if missing:
            raise ResultsError(f"{path}: runs[{i}] lacks {', '.join(missing)}")
    if require_complete and not doc.get("complete", False):
        raise ResultsError(
            f"{path}: marked incomplete (models not evaluated yet: {', '.join(doc.get('pending', [])) or '?'}); "
            "finish it with `lusifer-eval run ... --resume` first"
        )
    return doc


def run_key(run: dict) -> tuple:
    """What makes two runs the same evaluation (for --resume): model, kind, suite checksums and settings."""
    return (
        run["name"],
        run["model"]["path"],
        run["model"]["kind"],
        json.dumps(run["suite"]["sha256"], sort_keys=True),
        json.dumps(run["settings"], sort_keys=True),
    )


def merge_runs(paths: list[str | os.PathLike], allow_different_suites: bool = False) -> list[dict]:
    """Runs of several complete results files, in order; duplicate names get the file name appended.

    Raises:
        ResultsError: when a file is bad, no run is found, or the runs used different suites or row
            limits (unless ``allow_different_suites``).
    """
    runs: list[dict] = []
    for path in paths:
        doc = load_results(path)
        for run in doc["runs"]:
            runs.append({**run, "_source": str(path)})
    if not runs:
        raise ResultsError(f"no runs in {', '.join(str(p) for p in paths)}")
    if not allow_different_suites:
        first = runs[0]
        for run in runs[1:]:
            if run["suite"]["sha256"] != first["suite"]["sha256"] or run["settings"].get("limit") != first["settings"].get("limit"):
                raise ResultsError(
                    f"run {run['name']!r} ({run['_source']}) used a different suite or row limit than "
                    f"{first['name']!r} ({first['_source']}): its figures are not comparable; "
                    "pass --allow-different-suites to merge anyway"
                )
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["name"]] = counts.get(run["name"], 0) + 1
    for run in runs:
        if counts[run["name"]] > 1:
            run["name"] = f"{run['name']} ({Path(run['_source']).stem})"
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise ResultsError(f"run names are ambiguous even with file names appended: {names}; rerun with --name")
    for run in runs:
        run.pop("_source")
    return runs
