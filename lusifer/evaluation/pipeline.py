"""What ``lusifer-eval run`` and ``lusifer-eval compare`` do, as library functions."""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lusifer.atomic import write_json_atomic, write_text_atomic
from lusifer.evaluation.embedders import MODEL_KINDS, detect_model_kind, load_embedder
from lusifer.evaluation.report import console_table, markdown_table, write_chart
from lusifer.evaluation.results import (
    ResultsError,
    load_results,
    merge_runs,
    results_document,
    run_key,
)
from lusifer.evaluation.runner import DEFAULT_INSTRUCTIONS, run_settings, run_suite
from lusifer.evaluation.suite import load_suite, load_task

logger = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """Options of an evaluation, shared by every model of one invocation.

    Args:
        suite: The suite folder (or its ``suite.json``).
        out: Results JSON to write.
        kind: ``"auto"`` or one of :data:`~lusifer.evaluation.embedders.MODEL_KINDS`.
        instructions: Instruction per task type; missing types use the defaults; ``""`` embeds raw texts.
        batch_size: Texts per forward pass.
        limit: Evaluate only the first rows of each task (quick runs).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        encoder_prefix: Prefix for every text of an encoder-alone model (``"query: "`` for E5).
        variant: ONNX variant of export folders; ``None`` is the runtime's default.
        markdown: Also write the Markdown comparison table here.
        chart: Also write the PNG chart here.
        resume: Reuse the finished runs of an existing ``out`` made with the same settings.
        overwrite: Replace an existing ``out``.
        save_vectors: Also save each task's vectors to ``save_vectors/<row label>/<task>.npz``.
        cache: Embed a text that repeats across tasks (same instruction) once per run; scores are unchanged.
    """

    suite: str | os.PathLike
    out: str | os.PathLike
    kind: str = "auto"
    instructions: dict[str, str] = field(default_factory=dict)
    batch_size: int = 32
    limit: int | None = None
    device: str = "cpu"
    encoder_prefix: str = ""
    variant: str | None = None
    markdown: str | os.PathLike | None = None
    chart: str | os.PathLike | None = None
    resume: bool = False
    overwrite: bool = False
    save_vectors: str | os.PathLike | None = None
    cache: bool = True

    def __post_init__(self) -> None:
        if self.kind != "auto" and self.kind not in MODEL_KINDS:
            raise ValueError(f"kind={self.kind!r}; expected auto or one of {', '.join(MODEL_KINDS)}")
        unknown = sorted(set(self.instructions) - set(DEFAULT_INSTRUCTIONS))
        if unknown:
            raise ValueError(f"instructions for unknown task type(s) {unknown}; expected {sorted(DEFAULT_INSTRUCTIONS)}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}; expected a positive integer")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 2):
            raise ValueError(f"limit={self.limit!r}; expected an integer >= 2")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")
        if Path(self.out).suffix.lower() != ".json":
            raise ValueError(f"out={str(self.out)!r}; expected a .json file")
        if self.save_vectors is not None and Path(self.save_vectors).exists() and not Path(self.save_vectors).is_dir():
            raise ValueError(f"save_vectors={str(self.save_vectors)!r} is a file; expected a folder (created if missing)")


def vectors_folder(root: str | os.PathLike, label: str) -> Path:
    """Where ``--save-vectors root`` puts the vectors of the run labelled ``label``: ``root/<label>``, with
    characters other than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", label).strip(".") or "_"
    return Path(root) / safe


def model_names(models: list[str], names: list[str]) -> list[str]:
    """Row labels: the given names, or the model folder names; must be unique."""
    if names and len(names) != len(models):
        raise ValueError(f"{len(names)} name(s) for {len(models)} model(s); give one --name per model or none")
    labels = list(names) if names else [Path(m).resolve().name for m in models]
    duplicates = sorted({n for n in labels if labels.count(n) > 1})
    if duplicates:
        raise ValueError(f"row label(s) {duplicates} used for several models; give each model a --name")
    return labels


def _settings(options: EvalOptions) -> dict:
    return {"batch_size": options.batch_size, "device": options.device,
            "encoder_prefix": options.encoder_prefix, "variant": options.variant}


def _previous_runs(options: EvalOptions) -> list[dict]:
    out = Path(options.out)
    if not out.exists():
        return []
    if options.overwrite:
        return []
    if not options.resume:
        raise ResultsError(f"{out} exists; pass --resume to continue it or --overwrite to replace it")
    return load_results(out, require_complete=False)["runs"]


def evaluate_models(
    models: list[str | os.PathLike],
    options: EvalOptions,
    names: list[str] | None = None,
    echo: Callable[[str], None] = print,
    progress: Callable | None = None,
) -> list[dict]:
    """Evaluate several models on a suite, one after the other, writing the results file after each.

    Args:
        models: Model folders (export, LusiferModel or encoder folders).
        options: The evaluation options.
        names: Row labels, one per model (default: the folder names).
        echo: Where the per-run console tables go.
        progress: Optional wrapper for the task iterator (e.g. a tqdm factory).

    Returns:
        The runs, in model order.

    Raises:
        SuiteError, ModelLoadError, ResultsError, ValueError: bad input, named in the message.
    """
    if not models:
        raise ValueError("no model folder given")
    labels = model_names([str(m) for m in models], list(names or []))
    suite = load_suite(options.suite)
    for task in suite.tasks:  # validate every file before spending time on models
        load_task(task, limit=options.limit)
    kinds = [options.kind if options.kind != "auto" else detect_model_kind(m) for m in models]
    previous = _previous_runs(options)
    instructions = {**DEFAULT_INSTRUCTIONS, **options.instructions}
    settings = _settings(options)
    wanted = {}
    for model, label, kind in zip(models, labels, kinds):
        key_run = {"name": label, "model": {"path": str(Path(model).resolve()), "kind": kind},
                   "suite": {"sha256": suite.sha256},
                   "settings": run_settings(instructions, options.limit, settings)}
        wanted[label] = run_key(key_run)
    reusable = {}
    for run in previous:
        if run_key(run) not in wanted.values():
            raise ResultsError(
                f"{options.out} holds run {run['name']!r} ({run['model']['path']}) with other settings or suite "
                "than this invocation; use another --out, or --overwrite"
            )
        reusable[run["name"]] = run
    runs: list[dict] = []
    for i, (model, label, kind) in enumerate(zip(models, labels, kinds)):
        if label in reusable:
            logger.info("reusing the finished run %r from %s", label, options.out)
            run = reusable[label]
        else:
            start = time.perf_counter()
            embedder = load_embedder(model, kind=kind, device=options.device, batch_size=options.batch_size,
                                     encoder_prefix=options.encoder_prefix, variant=options.variant)
            load_seconds = time.perf_counter() - start
            try:
                vectors_dir = None if options.save_vectors is None else vectors_folder(options.save_vectors, label)
                run = run_suite(embedder, suite, label, instructions=instructions, limit=options.limit,
                                settings=settings, load_seconds=load_seconds, progress=progress,
                                cache=options.cache, vectors_dir=vectors_dir)
            finally:
                embedder.close()
        runs.append(run)
        write_json_atomic(options.out, results_document(runs, pending=labels[i + 1 :]), allow_nan=False)
        echo(console_table(run))
    write_reports(runs, options.markdown, options.chart)
    return runs


def write_reports(runs: list[dict], markdown: str | os.PathLike | None, chart: str | os.PathLike | None) -> None:
    """Write the Markdown table and/or the PNG chart of ``runs`` when paths are given."""
    if markdown is not None:
        write_text_atomic(markdown, markdown_table(runs))
    if chart is not None:
        write_chart(runs, chart)


def compare_results(
    paths: list[str | os.PathLike],
    markdown: str | os.PathLike | None = None,
    chart: str | os.PathLike | None = None,
    merged_json: str | os.PathLike | None = None,
    allow_different_suites: bool = False,
) -> tuple[list[dict], str]:
    """Merge results files into one comparison.

    Returns:
        ``(runs, markdown_text)``; the table, chart and merged JSON are written when paths are given.
    """
    if not paths:
        raise ValueError("no results file given")
    runs = merge_runs(list(paths), allow_different_suites=allow_different_suites)
    text = markdown_table(runs)
    write_reports(runs, markdown, chart)
    if merged_json is not None:
        write_json_atomic(merged_json, results_document(runs), allow_nan=False)
    return runs, text
