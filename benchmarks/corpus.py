"""Build the benchmark corpus: a parquet file of real multilingual text, deterministic for a seed.

``python -m benchmarks.corpus --suite DATA/eval --rows 20000 --out benchmarks/corpus/cpu-20k.parquet``

The texts come from the development suite written by ``lusifer-train prepare-data`` (``DATA/eval``, read
with :mod:`lusifer.evaluation.suite`): every distinct sentence of every task (Bible verses in 11 languages and
their English KJV verses, UDHR paragraphs in 13 languages and English, STS-B sentences in en/es/fr/ru), plus
Bible *passages*: 2 to 5 consecutive rows of each Bible file joined (100 per language, English included), so
the mix runs from short sentences to paragraphs longer than lusifer-small's 128-token limit. This pool of
distinct texts (18,022 from the suite built in 2026-11) is repeated, reshuffled on every pass with the seed,
until ``--rows`` rows: a corpus larger than the pool holds each text several times (the sidecar
``<out>.json`` says how often).
Columns: ``text``, ``lang`` (ISO 639-1), ``source`` (bible, bible-passage, udhr, sts).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lusifer.atomic import atomic_path

from benchmarks.common import BenchmarkError, fail, require_dir, setup_logging

logger = logging.getLogger(__name__)

PASSAGES_PER_LANGUAGE = 100
PASSAGE_VERSES = (2, 5)
ROW_GROUP_ROWS = 10_000
FORMAT = 1


def _source_of(task_name: str, task_type: str) -> str:
    if task_type == "sts":
        return "sts"
    return "bible" if task_name.startswith("bible") else "udhr" if task_name.startswith("udhr") else task_type


def text_pool(suite_dir: str | Path, seed: int = 0) -> tuple[list[tuple[str, str, str]], dict]:
    """Distinct ``(text, lang, source)`` of the suite plus Bible passages, in a deterministic order.

    Returns:
        ``(pool, suite sha256 by file)``.
    """
    from lusifer.evaluation.suite import SuiteError, load_suite, load_task

    try:
        suite = load_suite(suite_dir)
    except SuiteError as exc:
        raise BenchmarkError(f"development suite: {exc}") from exc
    rng = random.Random(seed)
    pool: dict[str, tuple[str, str]] = {}
    english_bible: list[str] | None = None

    def add(text: str, lang: str, source: str) -> None:
        pool.setdefault(text, (lang, source))

    def passages(verses: list[str], lang: str) -> None:
        for _ in range(PASSAGES_PER_LANGUAGE):
            n = rng.randint(*PASSAGE_VERSES)
            start = rng.randrange(0, max(1, len(verses) - n))
            add(" ".join(verses[start : start + n]), lang, "bible-passage")

    for task in suite.tasks:
        data = load_task(task)
        source = _source_of(task.name, task.type)
        second_lang = "en" if task.type == "bitext" else task.lang
        for a, b in zip(data.sentence1, data.sentence2):
            add(a, task.lang, source)
            add(b, second_lang, source)
        if source == "bible":
            passages(data.sentence1, task.lang)
            if english_bible is None:
                english_bible = data.sentence2
    if english_bible is not None:
        passages(english_bible, "en")
    return [(t, lang, src) for t, (lang, src) in pool.items()], dict(suite.sha256)


def build_corpus(suite_dir: str | Path, out: str | Path, rows: int, seed: int = 0) -> dict:
    """Write ``rows`` rows (the pool repeated, reshuffled each pass) to ``out`` and its ``<out>.json`` sidecar.

    Returns:
        The sidecar's facts: rows, distinct texts, repeats, languages, sources, character-length percentiles.
    """
    if rows < 1:
        raise BenchmarkError(f"--rows {rows}: must be at least 1")
    suite_dir = require_dir(suite_dir, "development suite folder", "suite.json")
    pool, suite_sha = text_pool(suite_dir, seed)
    rng = np.random.default_rng(seed)
    order: list[np.ndarray] = []
    left = rows
    while left > 0:
        perm = rng.permutation(len(pool))[:left]
        order.append(perm)
        left -= len(perm)
    index = np.concatenate(order)
    texts = [pool[i][0] for i in index]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "text": pa.array(texts, type=pa.string()),
        "lang": pa.array([pool[i][1] for i in index], type=pa.string()),
        "source": pa.array([pool[i][2] for i in index], type=pa.string()),
    })
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
    chars = np.array([len(t) for t in texts])
    facts = {
        "format": FORMAT,
        "rows": rows,
        "seed": seed,
        "suite": str(suite_dir),
        "suite_sha256": suite_sha,
        "distinct_texts": len(pool),
        "passes_over_pool": len(order),
        "max_copies_of_a_text": int(np.bincount(index).max()),
        "languages": dict(sorted(Counter(pool[i][1] for i in index).items())),
        "sources": dict(sorted(Counter(pool[i][2] for i in index).items())),
        "chars_percentiles": {p: int(np.percentile(chars, p)) for p in (5, 25, 50, 75, 95, 99)},
        "note": ("distinct texts of the development suite (+ Bible passages of 2-5 verses), repeated and reshuffled "
                 "with the seed to reach the row count"),
    }
    Path(f"{out}.json").write_text(json.dumps(facts, indent=2, ensure_ascii=False) + "\n", "utf-8")
    logger.info("wrote %s: %d rows from %d distinct texts in %d languages", out, rows, len(pool),
                len(facts["languages"]))
    return facts


def ensure_corpus(suite_dir: str | Path, out: str | Path, rows: int, seed: int = 0) -> dict:
    """Reuse ``out`` when its sidecar says it was built with these rows, seed and suite files; else build it."""
    out = Path(out)
    sidecar = Path(f"{out}.json")
    if out.is_file() and sidecar.is_file():
        facts = json.loads(sidecar.read_text("utf-8"))
        from lusifer.evaluation.suite import load_suite

        if (facts.get("format"), facts.get("rows"), facts.get("seed")) == (FORMAT, rows, seed) and \
                facts.get("suite_sha256") == dict(load_suite(suite_dir).sha256):
            logger.info("reusing %s (%d rows)", out, rows)
            return facts
    return build_corpus(suite_dir, out, rows, seed)


def corpus_facts(path: str | Path) -> dict:
    """The sidecar facts of a corpus built here, or the row count of any other parquet file."""
    path = Path(path)
    sidecar = Path(f"{path}.json")
    if sidecar.is_file():
        return json.loads(sidecar.read_text("utf-8"))
    return {"rows": pq.ParquetFile(path).metadata.num_rows, "note": "not built by benchmarks.corpus"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, help="development suite folder (DATA/eval, holds suite.json)")
    parser.add_argument("--rows", type=int, required=True, help="rows to write")
    parser.add_argument("--out", required=True, help="parquet file to write (a .json sidecar goes beside it)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        facts = build_corpus(args.suite, args.out, args.rows, args.seed)
    except BenchmarkError as exc:
        fail(exc)
    print(json.dumps(facts, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
