"""Toy retrieval accuracy of LUSIFER model folders on the example's stage-2 pairs.

``python examples/tiny/retrieval.py MODEL_DIR [MODEL_DIR ...]`` prints, for each model, the top-1 accuracy
of every query against all distinct positives (a sanity check that stage 2 learned something).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from lusifer import LusiferModel


def top1(model_dir: str, pairs_file: Path) -> float:
    records = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = sorted({r["positive"] for r in records})
    model = LusiferModel.from_pretrained(model_dir)
    by_instruction: dict[str, list[dict]] = {}
    for r in records:
        by_instruction.setdefault(r.get("instruction") or "", []).append(r)
    hits = 0
    for instruction, group in by_instruction.items():
        q = model.encode([r["query"] for r in group], kind="query", instruction=instruction)
        d = model.encode(docs, kind="document", instruction=instruction)
        best = (q @ d.T).argmax(axis=1)
        hits += int(sum(docs[b] == r["positive"] for b, r in zip(best, group)))
    return hits / len(records)


def main(argv: list[str]) -> None:
    pairs = Path(__file__).resolve().parent / "stage2.jsonl"
    for model_dir in argv:
        print(f"toy retrieval top-1 {top1(model_dir, pairs):.3f}  {model_dir}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main(sys.argv[1:])
