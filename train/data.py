"""Training data: local JSONL or parquet files, validated record by record, loaded through ``datasets``.

Stage-1 records (one of two shapes; both may be mixed in one file):

- ``{"text": str}``: masked reconstruction: the encoder reads the text with tokens masked, the LLM
  reproduces the text.
- ``{"query": str, "answer": str, "instruction": str (optional)}``: autoregressive completion: the encoder
  reads the (instruction-formatted) query, the LLM generates the answer.

Stage-2 records: ``{"query": str, "positive": str, "negatives": [str, ...] (optional),
"instruction": str (optional)}``.

Distillation texts (stage 2's optional ``distill_files``): ``{"text": str}``.

Other keys (ids, scores...) are ignored. A bad record raises :class:`DataError` naming the file and the line
(JSONL) or row (parquet), both 1-based.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from lusifer.extras import require

logger = logging.getLogger(__name__)

RECONSTRUCTION = "reconstruction"
COMPLETION = "completion"
OBJECTIVES = (RECONSTRUCTION, COMPLETION)


class DataError(ValueError):
    """A training file or record is unusable; the message names the file and line/row."""


def iter_records(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, record)`` for every record of a ``.jsonl``/``.json`` or ``.parquet`` file.

    ``where`` reads ``"FILE line N"`` or ``"FILE row N"``. Blank JSONL lines are skipped.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"training file {str(file)!r} does not exist")
    if file.suffix.lower() in (".jsonl", ".json"):
        with open(file, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                where = f"{file} line {number}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{where}: not valid UTF-8 ({exc})") from exc
                if not line.strip():
                    continue
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); expected one JSON object per line"
                    ) from exc
    elif file.suffix.lower() == ".parquet":
        pq = require("pyarrow.parquet", purpose="read parquet training files")
        try:
            reader = pq.ParquetFile(file)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for unreadable files
            raise DataError(f"{file}: not a readable parquet file ({exc})") from exc
        number = 0
        for batch in reader.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                number += 1
                yield f"{file} row {number}", record
    else:
        raise DataError(f"training file {str(file)!r} must end with .jsonl, .json or .parquet")


def _text(record: dict, key: str, where: str, required: bool = True) -> str | None:
    value = record.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}: field {key!r} is missing; expected a non-empty string")
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} is {type(value).__name__} {value!r:.80}; expected a string")
    if required and not value.strip():
        raise DataError(f"{where}: field {key!r} is empty; expected a non-empty string")
    return value


def _object(record: Any, where: str, expected: str) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"{where}: record is {type(record).__name__}; expected a JSON object with {expected}")
    return record


def stage1_example(record: Any, where: str) -> dict:
    """Validate a stage-1 record and return ``{"encoder_text", "target_text", "instruction", "objective"}``."""
    record = _object(record, where, "'text' or 'query' and 'answer'")
    has_text = record.get("text") is not None
    has_pair = record.get("query") is not None or record.get("answer") is not None
    if has_text and has_pair:
        raise DataError(f"{where}: record has both 'text' and 'query'/'answer'; expected one shape")
    if has_text:
        if record.get("instruction") is not None:
            raise DataError(f"{where}: 'instruction' is only used with 'query'/'answer' records, not with 'text'")
        text = _text(record, "text", where)
        return {"encoder_text": text, "target_text": text, "instruction": None, "objective": RECONSTRUCTION}
    if not has_pair:
        raise DataError(f"{where}: record has neither 'text' nor 'query'/'answer' (keys: {sorted(record)})")
    return {
        "encoder_text": _text(record, "query", where),
        "target_text": _text(record, "answer", where),
        "instruction": _text(record, "instruction", where, required=False),
        "objective": COMPLETION,
    }


def stage2_example(record: Any, where: str) -> dict:
    """Validate a stage-2 record and return ``{"query", "positive", "negatives", "instruction"}``."""
    record = _object(record, where, "'query' and 'positive'")
    negatives = record.get("negatives")
    if negatives is None:
        negatives = []
    if not isinstance(negatives, (list, tuple)):
        raise DataError(f"{where}: field 'negatives' is {type(negatives).__name__}; expected a list of strings")
    for i, neg in enumerate(negatives):
        if not isinstance(neg, str) or not neg.strip():
            raise DataError(f"{where}: negatives[{i}] is {neg!r:.80}; expected a non-empty string")
    return {
        "query": _text(record, "query", where),
        "positive": _text(record, "positive", where),
        "negatives": list(negatives),
        "instruction": _text(record, "instruction", where, required=False),
    }


def distill_example(record: Any, where: str) -> dict:
    """Validate a distillation record (an unlabelled text) and return ``{"text"}``."""
    record = _object(record, where, "'text'")
    return {"text": _text(record, "text", where)}


DISTILL = "distill"  # the kind of record of stage 2's distill_files
EXAMPLE_BUILDERS: dict[str, Callable[[Any, str], dict]] = {"stage1": stage1_example, "stage2": stage2_example,
                                                            DISTILL: distill_example}


def _features(stage: str):
    datasets = require("datasets", purpose="load training data")
    if stage == "stage1":
        return datasets.Features({name: datasets.Value("string") for name in
                                  ("encoder_text", "target_text", "instruction", "objective")})
    if stage == DISTILL:
        return datasets.Features({"text": datasets.Value("string")})
    return datasets.Features({
        "query": datasets.Value("string"),
        "positive": datasets.Value("string"),
        "negatives": datasets.Sequence(datasets.Value("string")),
        "instruction": datasets.Value("string"),
    })


def _generate(files: list[str], stamps: list[list[int]], stage: str) -> Iterator[dict]:
    """Validated examples of every file in order (``stamps`` only key the ``datasets`` cache)."""
    build = EXAMPLE_BUILDERS[stage]
    for name in files:
        count = 0
        for where, record in iter_records(name):
            count += 1
            yield build(record, where)
        if count == 0:
            raise DataError(f"training file {name!r} holds no records")


def validate_files(files: list[str], stage: str) -> int:
    """Validate every record of ``files`` for ``stage`` without loading them; returns the record count."""
    return sum(1 for _ in _generate(files, [], stage))


def load_examples(files: list[str], stage: str, cache_dir: str | os.PathLike | None = None):
    """Validate and load training files into one ``datasets.Dataset`` of canonical examples.

    Args:
        files: JSONL or parquet files, concatenated in order.
        stage: ``"stage1"``, ``"stage2"`` or ``"distill"`` (the kind of record).
        cache_dir: Where ``datasets`` keeps the Arrow cache (reused while the files are unchanged);
            ``None`` keeps the data in memory.

    Returns:
        A ``datasets.Dataset`` with the canonical columns of the stage.
    """
    datasets = require("datasets", purpose="load training data")
    if stage not in EXAMPLE_BUILDERS:
        raise ValueError(f"stage={stage!r}; expected one of {', '.join(EXAMPLE_BUILDERS)}")
    files = [str(Path(f).resolve()) for f in files]
    stamps = []
    for name in files:
        if not Path(name).is_file():
            raise DataError(f"training file {name!r} does not exist")
        info = os.stat(name)
        stamps.append([info.st_size, info.st_mtime_ns])
    with tempfile.TemporaryDirectory(prefix="lusifer-data-") as scratch:
        kwargs: dict[str, Any] = (
            {"keep_in_memory": True, "cache_dir": scratch} if cache_dir is None else {"cache_dir": str(cache_dir)}
        )
        try:
            ds = datasets.Dataset.from_generator(
                _generate,
                gen_kwargs={"files": files, "stamps": stamps, "stage": stage},
                features=_features(stage),
                **kwargs,
            )
        except Exception as exc:  # datasets wraps generator errors; surface ours unchanged
            cause: BaseException | None = exc
            while cause is not None:
                if isinstance(cause, DataError):
                    raise DataError(str(cause)) from None
                cause = cause.__cause__ or cause.__context__
            raise
    logger.info("loaded %d %s examples from %d file(s)", len(ds), stage, len(files))
    return ds


def load_examples_for_run(config, ctx, files: list[str] | None = None, kind: str | None = None):
    """Load a run's training files (``config.stage``), or other ``files`` of records of ``kind``; rank 0 builds
    the ``datasets`` cache in ``OUTPUT_DIR/cache/datasets`` first, then the other ranks read it."""
    files = config.train_files if files is None else files
    kind = kind or config.stage
    cache = Path(config.output_dir) / "cache" / "datasets"
    examples = None
    if ctx.is_main:
        examples = load_examples(files, kind, cache_dir=cache)
    ctx.barrier()
    if examples is None:
        examples = load_examples(files, kind, cache_dir=cache)
    return examples
