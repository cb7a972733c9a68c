"""The evaluation suite: a folder with ``suite.json`` naming bitext-mining and STS tasks stored as JSONL.

``suite.json`` is ``{"tasks": [{"name", "type", "lang", "file"}, ...]}`` (a plain list of tasks is accepted
too). Bitext rows are ``{"sentence1": text in lang, "sentence2": aligned English text}``; STS rows are
``{"sentence1", "sentence2", "score"}`` with a gold score in [0, 5]. Every problem is reported with the file
(and line) it comes from. Pure Python: no numpy, no torch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lusifer.checksums import sha256_file as file_sha256

logger = logging.getLogger(__name__)

SUITE_FILE = "suite.json"
TASK_TYPES = ("bitext", "sts")
STS_SCORE_RANGE = (0.0, 5.0)
TASK_FIELDS = ("name", "type", "lang", "file")
_LANG_RE = re.compile(r"^[a-z]{2}$")


class SuiteError(ValueError):
    """The suite folder, its ``suite.json`` or one of its task files is missing or malformed."""


@dataclass(frozen=True)
class Task:
    """One task of the suite.

    Args:
        name: Unique task name.
        type: ``"bitext"`` or ``"sts"``.
        lang: ISO 639-1 code of ``sentence1`` (``sentence2`` of bitext rows is English).
        file: Path of the JSONL file relative to the suite folder.
        path: Absolute path of the JSONL file.
    """

    name: str
    type: str
    lang: str
    file: str
    path: Path


@dataclass(frozen=True)
class TaskData:
    """The rows of one task (possibly limited to the first rows).

    Args:
        task: The task.
        sentence1: First sentences (in ``task.lang``).
        sentence2: Second sentences (English for bitext).
        scores: Gold STS scores (``None`` for bitext).
        total_rows: Rows in the file before any limit.
    """

    task: Task
    sentence1: list[str]
    sentence2: list[str]
    scores: list[float] | None
    total_rows: int

    def __len__(self) -> int:
        return len(self.sentence1)


@dataclass(frozen=True)
class Suite:
    """A validated suite.

    Args:
        root: The suite folder.
        tasks: Its tasks, in file order.
        sha256: sha256 of ``suite.json`` and of every task file, keyed by path relative to ``root``.
    """

    root: Path
    tasks: tuple[Task, ...]
    sha256: dict[str, str]

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"suite {str(self.root)!r} has no task named {name!r}")


def _check_task_entry(entry: Any, index: int, where: str) -> dict[str, str]:
    if not isinstance(entry, dict):
        raise SuiteError(f"{where}: tasks[{index}] is {type(entry).__name__}; expected an object with {TASK_FIELDS}")
    missing = [f for f in TASK_FIELDS if f not in entry]
    if missing:
        raise SuiteError(f"{where}: tasks[{index}] lacks {', '.join(missing)}; each task needs {', '.join(TASK_FIELDS)}")
    for f in TASK_FIELDS:
        if not isinstance(entry[f], str) or not entry[f].strip():
            raise SuiteError(f"{where}: tasks[{index}].{f}={entry[f]!r}; expected a non-empty string")
    if entry["type"] not in TASK_TYPES:
        raise SuiteError(
            f"{where}: task {entry['name']!r} has type={entry['type']!r}; expected one of {', '.join(TASK_TYPES)}"
        )
    if not _LANG_RE.match(entry["lang"]):
        raise SuiteError(
            f"{where}: task {entry['name']!r} has lang={entry['lang']!r}; expected a lower-case ISO 639-1 code like 'es'"
        )
    if entry["type"] == "bitext" and entry["lang"] == "en":
        raise SuiteError(
            f"{where}: task {entry['name']!r} is English bitext; bitext pairs a non-English sentence1 with its "
            "English translation (English is measured by STS)"
        )
    return entry


def load_suite(path: str | os.PathLike) -> Suite:
    """Read and validate ``suite.json`` (task list and task files' existence; rows are read by :func:`load_task`).

    Args:
        path: The suite folder, or its ``suite.json``.

    Raises:
        SuiteError: naming the file and the problem.
    """
    path = Path(path)
    suite_file = path if path.is_file() else path / SUITE_FILE
    root = suite_file.parent
    if not root.is_dir():
        raise SuiteError(f"suite folder {str(root)!r} does not exist")
    if not suite_file.is_file():
        raise SuiteError(f"suite folder {str(root)!r} has no {SUITE_FILE}")
    try:
        data = json.loads(suite_file.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SuiteError(f"{suite_file}: not valid JSON: {exc}") from exc
    entries = data.get("tasks") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise SuiteError(f"{suite_file}: expected {{\"tasks\": [...]}} or a list of tasks, got {type(data).__name__}")
    if not entries:
        raise SuiteError(f"{suite_file}: the task list is empty")
    tasks: list[Task] = []
    seen: set[str] = set()
    sha = {SUITE_FILE: file_sha256(suite_file)}
    for i, raw in enumerate(entries):
        entry = _check_task_entry(raw, i, str(suite_file))
        if entry["name"] in seen:
            raise SuiteError(f"{suite_file}: task name {entry['name']!r} is used twice; names must be unique")
        seen.add(entry["name"])
        if Path(entry["file"]).is_absolute():
            raise SuiteError(f"{suite_file}: task {entry['name']!r} file={entry['file']!r} must be relative to the suite folder")
        task_path = (root / entry["file"]).resolve()
        if not task_path.is_file():
            raise SuiteError(f"{suite_file}: task {entry['name']!r} file {str(task_path)!r} does not exist")
        tasks.append(Task(entry["name"], entry["type"], entry["lang"], entry["file"], task_path))
        sha[entry["file"]] = file_sha256(task_path)
    return Suite(root=root.resolve(), tasks=tuple(tasks), sha256=sha)


def _row_text(row: dict, key: str, where: str) -> str:
    if key not in row:
        raise SuiteError(f"{where}: missing {key!r}")
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise SuiteError(f"{where}: {key}={value!r}; expected a non-empty string")
    return value


def _row_score(row: dict, where: str) -> float:
    if "score" not in row:
        raise SuiteError(f"{where}: missing 'score' (STS rows need a gold score in [0, 5])")
    value = row["score"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SuiteError(f"{where}: score={value!r}; expected a number in [0, 5]")
    low, high = STS_SCORE_RANGE
    if not low <= value <= high:
        raise SuiteError(f"{where}: score={value!r} is outside [{low:g}, {high:g}]")
    return float(value)


def load_task(task: Task, limit: int | None = None) -> TaskData:
    """Read and validate the rows of a task.

    Every row of the file is validated even when ``limit`` keeps only the first ones, so a quick run
    never hides a broken file.

    Args:
        task: A task of a loaded suite.
        limit: Keep only the first ``limit`` rows (``None``: all).

    Raises:
        SuiteError: naming the file and line.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 2):
        raise SuiteError(f"limit={limit!r}; expected an integer >= 2 (mining and correlation need two rows)")
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    with open(task.path, encoding="utf-8") as fh:
        try:
            lines = list(fh)
        except UnicodeDecodeError as exc:
            raise SuiteError(f"{task.path}: not UTF-8 text: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{task.path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{where}: not valid JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise SuiteError(f"{where}: row is {type(row).__name__}; expected a JSON object")
        s1.append(_row_text(row, "sentence1", where))
        s2.append(_row_text(row, "sentence2", where))
        if task.type == "sts":
            scores.append(_row_score(row, where))
    total = len(s1)
    if total < 2:
        raise SuiteError(f"{task.path}: task {task.name!r} has {total} row(s); at least 2 are needed")
    keep = total if limit is None else min(limit, total)
    if task.type == "sts" and len(set(scores[:keep])) < 2:
        raise SuiteError(
            f"{task.path}: task {task.name!r} has the same gold score on all {keep} evaluated rows; "
            "Spearman correlation is undefined (use more rows)"
        )
    if task.type == "bitext":
        duplicates = keep - len(set(s2[:keep]))
        if duplicates:
            logger.warning(
                "%s: %d duplicate sentence2 text(s) in task %r; a sentence whose translation repeats can be mined "
                "only for its first copy", task.path, duplicates, task.name,
            )
    return TaskData(
        task=task,
        sentence1=s1[:keep],
        sentence2=s2[:keep],
        scores=scores[:keep] if task.type == "sts" else None,
        total_rows=total,
    )
