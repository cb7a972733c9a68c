"""A real multilingual parquet corpus from the STS-B multi-MT sentences (11 languages), for GPU runs.

``python -m benchmarks.stsb_corpus --stsb-dir ../shared/data/stsb-multi-mt --rows 20000 --out CORPUS.parquet``

Every distinct sentence of the dev and test splits of every language (both columns of each pair), shuffled
with a seed and cut (or repeated) to ``--rows``; columns ``id``, ``text``, ``lang``. A sidecar ``<out>.json`` gives
the languages and how many distinct texts there are. Short texts (STS-B sentences: ~10-30 tokens).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path


def sentences(stsb_dir: str | Path) -> list[tuple[str, str]]:
    """``(lang, text)`` of every distinct sentence of the dev and test files, in a stable order."""
    folder = Path(stsb_dir)
    files = sorted(folder.glob("stsb-*-dev.csv")) + sorted(folder.glob("stsb-*-test.csv"))
    if not files:
        raise SystemExit(f"--stsb-dir {str(folder)!r} holds no stsb-<lang>-dev.csv / -test.csv files")
    seen: dict[tuple[str, str], None] = {}
    for path in files:
        lang = path.name.split("-")[1]
        with open(path, encoding="utf-8", newline="") as fh:
            for row in csv.reader(fh):
                for text in row[:2]:
                    text = text.strip()
                    if text:
                        seen[(lang, text)] = None
    return list(seen)


def build(stsb_dir: str | Path, out: str | Path, rows: int, seed: int = 0) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = sentences(stsb_dir)
    rng = random.Random(seed)
    order: list[tuple[str, str]] = []
    while len(order) < rows:
        block = pool[:]
        rng.shuffle(block)
        order += block
    order = order[:rows]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(range(rows)), "text": [t for _, t in order], "lang": [lang for lang, _ in order]})
    pq.write_table(table, out)
    langs = sorted({lang for lang, _ in order})
    facts = {"rows": rows, "distinct_texts": len(pool), "languages": langs, "source": "STS-B multi-MT dev+test",
             "seed": seed, "repeats": rows > len(pool)}
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(facts, indent=2) + "\n", "utf-8")
    return facts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stsb-dir", required=True)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(build(args.stsb_dir, args.out, args.rows, args.seed)))


if __name__ == "__main__":
    main()
