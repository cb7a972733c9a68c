"""Run an embedder over a suite and build the results of one run (a JSON-able dict).

Scores in results are x100 (bitext accuracy / precision / recall / F1 in [0, 100], STS Spearman in
[-100, 100]). Per-language figures average the tasks of that language; the averages are: ``english`` (English
STS), ``bitext`` (mean over non-English bitext languages) and ``sts`` (mean over non-English STS languages).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import time
from pathlib import Path
from statistics import fmean
from typing import Callable

import numpy as np

from lusifer.atomic import atomic_path
from lusifer.evaluation.embedders import TextEmbedder
from lusifer.evaluation.metrics import bitext_mining, sts
from lusifer.evaluation.suite import Suite, TaskData, load_task

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTIONS = {"bitext": "Retrieve parallel sentences", "sts": "Retrieve semantically similar text"}
MAIN_METRIC = {"bitext": "f1", "sts": "spearman"}
SCALE = 100.0
ENGLISH = "en"
VECTOR_ARRAYS = ("task", "type", "lang", "instruction", "embeddings1", "embeddings2", "gold")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class EmbeddingCache:
    """The vectors of one run, keyed by (kind, instruction, text): a text repeated across tasks is embedded once.

    The English sides of the Bible and UDHR tasks repeat in most bitext tasks; with the cache each is embedded
    once per run. Each vector is the one the model returned, so scores are the same as without the cache
    whenever the model's vectors do not depend on which texts share a batch.
    """

    def __init__(self) -> None:
        self._vectors: dict[tuple[str, str, str], np.ndarray] = {}
        self.hits = 0

    def __len__(self) -> int:
        return len(self._vectors)

    def embed(self, embedder: TextEmbedder, texts: list[str], kind: str, instruction: str) -> tuple[np.ndarray, int]:
        """Vectors of distinct ``texts`` (rows in order), embedding only those not seen before.

        Returns:
            ``(vectors, embedded)``: ``embedded`` is how many texts the model embedded now.
        """
        missing = [t for t in texts if (kind, instruction, t) not in self._vectors]
        self.hits += len(texts) - len(missing)
        if missing:
            fresh = _checked_vectors(embedder.embed(missing, kind, instruction), len(missing))
            for text, vector in zip(missing, fresh):
                self._vectors[(kind, instruction, text)] = vector
        if not texts:
            return np.zeros((0, 0), dtype=np.float32), 0
        return np.stack([self._vectors[(kind, instruction, t)] for t in texts]), len(missing)


def _checked_vectors(vectors, count: int) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != count:
        raise ValueError(f"the model returned embeddings of shape {vectors.shape} for {count} texts; expected ({count}, dim)")
    return vectors


def embed_pairs(embedder: TextEmbedder, data: TaskData, instruction: str,
                cache: EmbeddingCache | None = None) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Embed both sides of a task as queries (the tasks are symmetric), each distinct text once.

    Args:
        embedder: The opened model.
        data: The task's rows.
        instruction: The instruction of this task type.
        cache: The run's vectors so far (``None``: embed every distinct text of the task).

    Returns:
        ``(embeddings1, embeddings2, distinct_texts, texts_embedded)``: ``texts_embedded`` excludes texts the
        cache already held.
    """
    unique = list(dict.fromkeys(data.sentence1 + data.sentence2))
    index = {text: i for i, text in enumerate(unique)}
    if cache is None:
        vectors, embedded = _checked_vectors(embedder.embed(unique, "query", instruction), len(unique)), len(unique)
    else:
        vectors, embedded = cache.embed(embedder, unique, "query", instruction)
    if not np.all(np.isfinite(vectors)):
        raise ValueError(f"the model returned NaN or infinite embeddings on task {data.task.name!r}")
    e1 = vectors[[index[t] for t in data.sentence1]]
    e2 = vectors[[index[t] for t in data.sentence2]]
    return e1, e2, len(unique), embedded


def score_task(task_type: str, embeddings1, embeddings2, gold=None) -> dict[str, float]:
    """A task's scores (x100) from its two sides' vectors: bitext accuracy/precision/recall/F1 or STS Spearman.

    Args:
        task_type: ``"bitext"`` or ``"sts"``.
        embeddings1: (n, dim) vectors of ``sentence1``.
        embeddings2: (n, dim) vectors of ``sentence2``.
        gold: The gold STS scores (STS only).
    """
    if task_type == "bitext":
        raw = bitext_mining(embeddings1, embeddings2)
    elif task_type == "sts":
        if gold is None:
            raise ValueError("STS scores need the gold scores")
        raw = sts(embeddings1, embeddings2, gold)
    else:
        raise ValueError(f"task type {task_type!r}; expected 'bitext' or 'sts'")
    return {k: v * SCALE for k, v in raw.items()}


def save_task_vectors(path: str | os.PathLike, data: TaskData, embeddings1: np.ndarray, embeddings2: np.ndarray,
                      instruction: str) -> Path:
    """Write a task's vectors (and what is needed to score them) to one ``.npz``, atomically.

    Arrays: ``embeddings1``, ``embeddings2`` (float32, rows in task order), ``gold`` (STS gold scores; empty
    for bitext), and the strings ``task``, ``type``, ``lang``, ``instruction``. :func:`load_task_vectors`
    reads it back; :func:`score_task` on its arrays gives the task's scores.
    """
    path = Path(path)
    gold = np.asarray(data.scores if data.scores is not None else [], dtype=np.float64)
    with atomic_path(path, durable=False) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, embeddings1=np.asarray(embeddings1, dtype=np.float32),
                 embeddings2=np.asarray(embeddings2, dtype=np.float32), gold=gold,
                 task=np.str_(data.task.name), type=np.str_(data.task.type), lang=np.str_(data.task.lang),
                 instruction=np.str_(instruction))
    return path


def load_task_vectors(path: str | os.PathLike) -> dict:
    """Read a ``.npz`` written by :func:`save_task_vectors` (no pickled objects are loaded).

    Returns:
        ``{"task", "type", "lang", "instruction", "embeddings1", "embeddings2", "gold"}``; ``gold`` is ``None``
        for bitext.

    Raises:
        ValueError: when the file is not such a file.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in VECTOR_ARRAYS}
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path} is not a task vectors file (expected arrays {', '.join(VECTOR_ARRAYS)}): {exc}") from exc
    for key in ("task", "type", "lang", "instruction"):
        out[key] = str(out[key])
    if out["type"] not in MAIN_METRIC:
        raise ValueError(f"{path}: type={out['type']!r}; expected 'bitext' or 'sts'")
    if out["type"] == "bitext":
        out["gold"] = None
    return out


def evaluate_task(embedder: TextEmbedder, data: TaskData, instruction: str, cache: EmbeddingCache | None = None,
                  vectors_dir: str | os.PathLike | None = None) -> dict:
    """Embed and score one task; returns its entry of the results (scores x100).

    Args:
        embedder: The opened model.
        data: The task's rows.
        instruction: The instruction of this task type.
        cache: The run's vectors so far; ``None`` embeds every distinct text of the task.
        vectors_dir: Also save the task's vectors to ``vectors_dir/<task>.npz``.
    """
    task = data.task
    start = time.perf_counter()
    e1, e2, distinct, embedded = embed_pairs(embedder, data, instruction, cache)
    embed_seconds = time.perf_counter() - start
    scores = score_task(task.type, e1, e2, data.scores)
    if vectors_dir is not None:
        save_task_vectors(Path(vectors_dir) / f"{task.name}.npz", data, e1, e2, instruction)
    return {
        "name": task.name,
        "type": task.type,
        "lang": task.lang,
        "file": task.file,
        "rows": len(data),
        "rows_in_file": data.total_rows,
        "distinct_texts": distinct,
        "texts_embedded": embedded,
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
    cache: bool = True,
    vectors_dir: str | os.PathLike | None = None,
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
        cache: Embed a text repeated across tasks (same kind and instruction) once per run.
        vectors_dir: Also save each task's vectors to ``vectors_dir/<task>.npz`` (see :func:`save_task_vectors`).

    Returns:
        The run's results (see the module docstring for the scale of scores).
    """
    instructions = {**DEFAULT_INSTRUCTIONS, **(instructions or {})}
    started = time.perf_counter()
    tasks_iter = progress(suite.tasks) if progress else suite.tasks
    entries = []
    run_cache = EmbeddingCache() if cache else None
    if vectors_dir is not None:
        Path(vectors_dir).mkdir(parents=True, exist_ok=True)
    for task in tasks_iter:
        data = load_task(task, limit=limit)
        entry = evaluate_task(embedder, data, instructions[task.type], cache=run_cache, vectors_dir=vectors_dir)
        logger.info("%s %s/%s: %s=%.2f (%d rows, %.1fs)", name, task.type, task.lang, entry["main_metric"],
                    entry["main_score"], entry["rows"], entry["seconds"])
        entries.append(entry)
    eval_seconds = time.perf_counter() - started
    languages, averages = summarize(entries)
    texts = sum(e["texts_embedded"] for e in entries)
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
            "texts_from_cache": sum(e["distinct_texts"] - e["texts_embedded"] for e in entries),
            "texts_per_second": round(texts / embed_seconds, 2) if embed_seconds > 0 else None,
        },
        "versions": versions,
        "finished": now_iso(),
    }
