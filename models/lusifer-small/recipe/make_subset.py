"""Deterministic training subset of the prepared English data, small enough to carry to a GPU machine.

Usage: python make_subset.py DATA_DIR OUT_DIR [--stage1-text N] [--stage1-qa N] [--stage2 N]
Keeps at most N rows per file (a seeded sample), at most 2 negatives per stage-2 record, and cuts texts to
800 characters (training truncates to 128 encoder tokens anyway).
"""

import argparse
import json
import random
from pathlib import Path

MAX_CHARS = 800


def cut(value):
    if isinstance(value, str):
        return value[:MAX_CHARS]
    if isinstance(value, list):
        return [cut(v) for v in value[:2]]
    return value


def subset(src: Path, dst: Path, n: int, seed: int) -> int:
    with src.open(encoding="utf-8") as fh:
        lines = fh.readlines()
    rng = random.Random(seed)
    keep = sorted(rng.sample(range(len(lines)), min(n, len(lines))))
    with dst.open("w", encoding="utf-8") as out:
        for i in keep:
            rec = {k: cut(v) for k, v in json.loads(lines[i]).items()}
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return len(keep)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--stage1-text", type=int, default=60000)
    parser.add_argument("--stage1-qa", type=int, default=60000)
    parser.add_argument("--stage2", type=int, default=89647)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, n in (("stage1_text", args.stage1_text), ("stage1_qa", args.stage1_qa), ("stage2_pairs", args.stage2)):
        count = subset(args.data_dir / f"{name}.jsonl", args.out_dir / f"{name}.jsonl", n, args.seed)
        print(name, count)


if __name__ == "__main__":
    main()
