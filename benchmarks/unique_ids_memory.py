"""Peak memory of ``lusifer-embed --unique-ids`` (the check of :func:`lusifer.runtime.ids.check_id_column`).

``python -m benchmarks.unique_ids_memory [--rows 2000000]``

Writes a parquet corpus per id kind (int64 ``7 * i``; 16-character strings ``doc-000000000123``), then, in a
fresh child process per kind, opens it and runs the uniqueness check; the child reports the growth of its
peak RSS (``ru_maxrss``) over the check. Writes ``benchmarks/results/cpu/unique_ids_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import DEFAULT_WORK_DIR, RESULTS_DIR, child_env, machine_info, setup_logging, write_results

NAME = "unique_ids_memory"
CHILD = (
    "import json, resource, sys\n"
    "from lusifer.runtime.corpus import open_corpus\n"
    "from lusifer.runtime.ids import check_id_column\n"
    "corpus = open_corpus(sys.argv[1])\n"
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "check_id_column(corpus, 'id', unique=True)\n"
    "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "print(json.dumps({'peak_rss_growth_kib': after - before}))\n"
)

LAUNCH = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--work", default=str(DEFAULT_WORK_DIR / NAME))
    parser.add_argument("--results", default=str(RESULTS_DIR / "cpu"), help="results folder")
    args = parser.parse_args(argv)
    setup_logging()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = {}
    for kind in ("int64", "string16"):
        path = work / f"ids-{kind}-{args.rows}.parquet"
        if not path.exists():
            n = args.rows
            ids = (pa.array(np.arange(n, dtype=np.int64) * 7) if kind == "int64"
                   else pa.array([f"doc-{i:012d}" for i in range(n)]))
            pq.write_table(pa.table({"text": pa.array(["x"] * n), "id": ids}), path, row_group_size=100_000)
        # through a small launcher: a child forked from this (big) process would start at its peak RSS
        proc = subprocess.run([sys.executable, "-c", LAUNCH, sys.executable, "-c", CHILD, str(path)],
                              capture_output=True, text=True, env=child_env(), check=True)
        kib = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_growth_kib"]
        rows[kind] = {"rows": args.rows, "peak_rss_growth_mib": round(kib / 1024, 1),
                      "bytes_per_row": round(kib * 1024 / args.rows, 1)}
        print(kind, rows[kind])
    data = {"benchmark": NAME, "machine": machine_info(), "results": rows}
    lines = [f"# Peak memory of --unique-ids ({args.rows:,} rows)", "",
             "| ids | peak RSS growth | bytes / row |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['peak_rss_growth_mib']} MiB | {v['bytes_per_row']} |" for k, v in rows.items()]
    json_path, md_path = write_results(args.results, NAME, data, "\n".join(lines))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
