"""Run an embedder over a suite and build the results of one run (a JSON-able dict).

Scores in results are x100 (bitext accuracy / precision / recall / F1 in [0, 100], STS Spearman in
[-100, 100]). Per-language figures average the tasks of that language; the averages are: ``english`` (English
STS), ``bitext`` (mean over non-English bitext languages) and ``sts`` (mean over non-English STS languages).
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import time
from statistics import fmean
from typing import Callable

import numpy as np

from lusifer.evaluation.embedders import TextEmbedder
from lusifer.evaluation.metrics import bitext_mining, sts
from lusifer.evaluation.suite import Suite, TaskData, load_task

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTIONS = {"bitext": "Retrieve parallel sentences", "sts": "Retrieve semantically similar text"}
MAIN_METRIC = {"bitext": "f1", "sts": "spearman"}
SCALE = 100.0
ENGLISH = "en"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def embed_pairs(embedder: TextEmbedder, data: TaskData, instruction: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Embed both sides of a task as queries (the tasks are symmetric), each distinct text once.

    Returns:
        ``(embeddings1, embeddings2, distinct_texts)``.
    """
    unique = list(dict.fromkeys(data.sentence1 + data.sentence2))
    index = {text: i for i, text in enumerate(unique)}
    vectors = np.asarray(embedder.embed(unique, "query", instruction), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(unique):
        raise ValueError(
            f"the model returned embeddings of shape {vectors.shape} for {len(unique)} texts; expected ({len(unique)}, dim)"
        )
    if not np.all(np.isfinite(vectors)):
        raise ValueError(f"the model returned NaN or infinite embeddings on task {data.task.name!r}")
    e1 = vectors[[index[t] for t in data.sentence1]]
    e2 = vectors[[index[t] for t in data.sentence2]]
    return e1, e2, len(unique)


def evaluate_task(embedder: TextEmbedder, data: TaskData, instruction: str) -> dict:
    """Embed and score one task; returns its entry of the results (scores x100)."""
    task = data.task
    start = time.perf_counter()
    e1, e2, distinct = embed_pairs(embedder, data, instruction)
    embed_seconds = time.perf_counter() - start
    if task.type == "bitext":
        raw = bitext_mining(e1, e2)
    else:
        raw = sts(e1, e2, data.scores)
    scores = {k: v * SCALE for k, v in raw.items()}
    return {
        "name": task.name,
        "type": task.type,
        "lang": task.lang,
        "file": task.file,
        "rows": len(data),
        "rows_in_file": data.total_rows,
        "distinct_texts": distinct,
        "instruction": instruction,
        "scores": scores,
        "main_metric": MAIN_METRIC[task.type],
        "main_score": scores[MAIN_METRIC[task.type]],
        "seconds": round(time.perf_counter() - start, 4),
        "embed_seconds": round(embed_seconds, 4),
    }


def summarize(tasks: list[dict]) -> tuple[dict, dict]:
    """Per-language figures and the averages, from task entries.

    Returns:
        ``(languages, averages)``: ``languages[lang]`` may hold ``bitext_f1``, ``bitext_accuracy`` and
        ``sts_spearman`` (means over that language's tasks); ``averages`` holds ``english``, ``bitext`` and
        ``sts`` (``None`` when the suite has no such task).
    """
    groups: dict[tuple[str, str], list[float]] = {}
    for t in tasks:
        if t["type"] == "bitext":
            groups.setdefault((t["lang"], "bitext_f1"), []).append(t["scores"]["f1"])
            groups.setdefault((t["lang"], "bitext_accuracy"), []).append(t["scores"]["accuracy"])
        else:
            groups.setdefault((t["lang"], "sts_spearman"), []).append(t["scores"]["spearman"])
    languages: dict[str, dict] = {}
    for (lang, key), values in sorted(groups.items()):
        languages.setdefault(lang, {})[key] = fmean(values)

    def mean_of(key: str, english: bool) -> float | None:
        values = [v[key] for lang, v in languages.items() if key in v and (lang == ENGLISH) == english]
        return fmean(values) if values else None

    averages = {
        "english": mean_of("sts_spearman", english=True),
        "bitext": mean_of("bitext_f1", english=False),
        "sts": mean_of("sts_spearman", english=False),
    }
    return languages, averages


def run_settings(instructions: dict[str, str] | None, limit: int | None, extra: dict | None = None) -> dict:
    """The settings recorded in a run (also what ``--resume`` compares): instructions, limit and ``extra``."""
    instructions = {**DEFAULT_INSTRUCTIONS, **(instructions or {})}
    return {"instructions": {k: instructions[k] for k in sorted(DEFAULT_INSTRUCTIONS)}, "embedded_as": "query",
            "limit": limit, **(extra or {})}


def run_suite(
    embedder: TextEmbedder,
    suite: Suite,
    name: str,
    instructions: dict[str, str] | None = None,
    limit: int | None = None,
    settings: dict | None = None,
    load_seconds: float = 0.0,
    progress: Callable | None = None,
) -> dict:
    """Evaluate one model on every task of a suite.

    Args:
        embedder: The opened model.
        suite: The loaded suite.
        name: Row label of this model in tables and charts.
        instructions: Instruction per task type (``"bitext"``, ``"sts"``); missing types use
            :data:`DEFAULT_INSTRUCTIONS`; ``""`` embeds raw texts.
        limit: Evaluate only the first ``limit`` rows of each task.
        settings: Extra settings to record (batch size, device...).
        load_seconds: Time spent loading the model, recorded in the timings.
        progress: Optional wrapper for the task iterator (e.g. ``tqdm``).

    Returns:
        The run's results (see the module docstring for the scale of scores).
    """
    instructions = {**DEFAULT_INSTRUCTIONS, **(instructions or {})}
    started = time.perf_counter()
    tasks_iter = progress(suite.tasks) if progress else suite.tasks
    entries = []
    for task in tasks_iter:
        data = load_task(task, limit=limit)
        entry = evaluate_task(embedder, data, instructions[task.type])
        logger.info("%s %s/%s: %s=%.2f (%d rows, %.1fs)", name, task.type, task.lang, entry["main_metric"],
                    entry["main_score"], entry["rows"], entry["seconds"])
        entries.append(entry)
    eval_seconds = time.perf_counter() - started
    languages, averages = summarize(entries)
    texts = sum(e["distinct_texts"] for e in entries)
    embed_seconds = sum(e["embed_seconds"] for e in entries)
    versions = dict(embedder.versions())
    versions["python"] = platform.python_version()
    return {
        "name": name,
        "model": {"path": str(embedder.path.resolve()), "kind": embedder.kind, "details": embedder.describe()},
        "suite": {"path": str(suite.root), "sha256": dict(suite.sha256)},
        "settings": run_settings(instructions, limit, settings),
        "tasks": entries,
        "languages": languages,
        "averages": averages,
        "timings": {
            "load_seconds": round(load_seconds, 3),
            "eval_seconds": round(eval_seconds, 3),
            "embed_seconds": round(embed_seconds, 3),
            "texts_embedded": texts,
            "texts_per_second": round(texts / embed_seconds, 2) if embed_seconds > 0 else None,
        },
        "versions": versions,
        "finished": now_iso(),
    }
