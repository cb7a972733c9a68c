"""Benchmark scripts of lusifer (issue 9): run from the repository root as ``python -m benchmarks.<script>``.

Not installed with the package. Each script measures all the rows of its comparison in one invocation (every
row in its own child process, so peak RSS and GPU memory are not shared) and writes a JSON and a Markdown
results file with the machine facts and the command line. See ``benchmarks/README.md``.
"""
