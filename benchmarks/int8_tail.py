"""Where INT8 drifts: row-wise cosine of two runs' vectors over one corpus, broken down by language, source
and token length, with the worst rows listed.

``python -m benchmarks.int8_tail --corpus CORPUS.parquet --reference FP32.npy --candidate INT8.npy
--tokenizer EXPORT/tokenizer.json --name int8_tail``

The two ``.npy`` files are ``lusifer-embed`` outputs of the same corpus (for example ``benchmarks.cpu_suite
--only ort-fp32,ort-int8 --keep-vectors``, which leaves ``ort-fp32.npy`` and ``ort-int8.npy`` in its work
folder). Both are L2-normalised, so the row-wise dot product is the cosine. Token counts come from the
export's tokenizer (no truncation, special tokens included), so rows cut at the model's maximum length show up
in the longest bucket.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from lusifer import vectors

from benchmarks.common import (
    RESULTS_DIR,
    BenchmarkError,
    fail,
    machine_info,
    md_table,
    require_file,
    setup_logging,
    write_results,
)

logger = logging.getLogger(__name__)

LENGTH_EDGES = (16, 32, 64, 128, 256, 512)


def row_cosines(reference: Path, candidate: Path, rows: int) -> np.ndarray:
    """Row-wise cosine of two embedding files with ``rows`` rows each (checked)."""
    ref = np.load(reference, mmap_mode="r")
    cand = np.load(candidate, mmap_mode="r")
    for path, arr in ((reference, ref), (candidate, cand)):
        if arr.ndim != 2 or arr.shape[0] != rows:
            raise BenchmarkError(f"{path}: shape {arr.shape}; expected ({rows}, dim) for the corpus's {rows} rows")
    if ref.shape != cand.shape:
        raise BenchmarkError(f"{reference} is {ref.shape} but {candidate} is {cand.shape}; expected the same shape")
    return vectors.row_cosines(ref, cand)


def token_counts(tokenizer_json: Path, texts: list[str]) -> np.ndarray:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_truncation()
    tok.no_padding()
    return np.array([len(e.ids) for e in tok.encode_batch(texts)], dtype=np.int64)


def length_bucket(n: int) -> str:
    lo = 0
    for hi in LENGTH_EDGES:
        if n <= hi:
            return f"{lo + 1}-{hi}"
        lo = hi
    return f">{LENGTH_EDGES[-1]}"


BUCKETS = [length_bucket(n) for n in (1, *(e + 1 for e in LENGTH_EDGES))]


def stats(cos: np.ndarray) -> dict:
    return {"rows": int(cos.size), "min": float(cos.min()), "p1": float(np.percentile(cos, 1)),
            "p5": float(np.percentile(cos, 5)), "mean": float(cos.mean()),
            "below_0.95": int((cos < 0.95).sum()), "below_0.98": int((cos < 0.98).sum())}


def breakdown(cos: np.ndarray, keys: list[str], order: list[str] | None = None) -> dict[str, dict]:
    """Statistics per key, in ``order`` (default: sorted keys); keys absent from the rows are left out."""
    keys_arr = np.array(keys)
    present = set(keys)
    return {k: stats(cos[keys_arr == k]) for k in (order or sorted(present)) if k in present}


def analyse(corpus: Path, reference: Path, candidate: Path, tokenizer: Path, worst: int) -> dict:
    import pyarrow.parquet as pq

    table = pq.read_table(corpus)
    for column in ("text", "lang", "source"):
        if column not in table.column_names:
            raise BenchmarkError(f"{corpus}: no {column!r} column (has {table.column_names}); expected a "
                                 "benchmarks.corpus file")
    texts = table.column("text").to_pylist()
    langs = table.column("lang").to_pylist()
    sources = table.column("source").to_pylist()
    cos = row_cosines(reference, candidate, len(texts))
    tokens = token_counts(tokenizer, texts)
    order = np.argsort(cos, kind="stable")[:worst]
    corr = float(np.corrcoef(tokens, cos)[0, 1]) if cos.std() > 0 else 0.0
    return {
        "overall": stats(cos),
        "by_language": breakdown(cos, langs),
        "by_source": breakdown(cos, sources),
        "by_tokens": breakdown(cos, [length_bucket(int(n)) for n in tokens], BUCKETS),
        "pearson_tokens_vs_cosine": corr,
        "worst_rows": [{"row": int(i), "cosine": float(cos[i]), "lang": langs[i], "source": sources[i],
                        "tokens": int(tokens[i]), "text": texts[i][:120]} for i in order],
    }


def markdown(doc: dict) -> str:
    def table(title: str, part: dict) -> str:
        rows = [[k, v["rows"], f"{v['min']:.4f}", f"{v['p1']:.4f}", f"{v['mean']:.4f}", v["below_0.98"],
                 v["below_0.95"]] for k, v in part.items()]
        return f"### {title}\n\n" + md_table([title.split()[-1], "rows", "min", "p1", "mean", "< 0.98", "< 0.95"], rows)

    o = doc["analysis"]["overall"]
    lines = [
        "# INT8 drift by row: where the cosine to the reference is lowest\n",
        f"Reference `{doc['reference']}`, candidate `{doc['candidate']}`, corpus `{doc['corpus']}`.\n",
        f"Overall: {o['rows']} rows, min {o['min']:.4f}, p1 {o['p1']:.4f}, p5 {o['p5']:.4f}, mean {o['mean']:.4f}; "
        f"{o['below_0.98']} rows below 0.98, {o['below_0.95']} below 0.95. Pearson correlation of token count "
        f"with cosine: {doc['analysis']['pearson_tokens_vs_cosine']:.3f}.\n",
        table("by language", doc["analysis"]["by_language"]),
        table("by source", doc["analysis"]["by_source"]),
        table("by tokens", doc["analysis"]["by_tokens"]),
        "### worst rows\n",
        md_table(["row", "cosine", "lang", "source", "tokens", "text (first 120 characters)"],
                 [[w["row"], f"{w['cosine']:.4f}", w["lang"], w["source"], w["tokens"],
                   w["text"].replace("|", "/").replace("\n", " ")] for w in doc["analysis"]["worst_rows"]]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_tail", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, help="the parquet corpus both runs embedded")
    parser.add_argument("--reference", required=True, help="reference vectors (.npy, e.g. ORT fp32)")
    parser.add_argument("--candidate", required=True, help="candidate vectors (.npy, e.g. ORT INT8)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json of the export (token counts)")
    parser.add_argument("--worst", type=int, default=25, help="how many of the lowest rows to list")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--name", default="int8_tail", help="results file stem")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.worst < 1:
            raise BenchmarkError(f"--worst {args.worst}: expected a positive number of rows")
        paths = {k: require_file(getattr(args, k), f"--{k}") for k in ("corpus", "reference", "candidate",
                                                                        "tokenizer")}
        analysis = analyse(paths["corpus"], paths["reference"], paths["candidate"], paths["tokenizer"], args.worst)
    except BenchmarkError as exc:
        fail(exc)
    doc = {"benchmark": "int8_tail", "machine": machine_info(), "corpus": str(paths["corpus"]),
           "reference": str(paths["reference"]), "candidate": str(paths["candidate"]), "analysis": analysis}
    json_path, md_path = write_results(args.out_dir, args.name, doc, markdown(doc))
    logger.info("wrote %s and %s", json_path, md_path)
    print(json.dumps(analysis["overall"]))


if __name__ == "__main__":
    main()
