"""Shared helpers of the benchmark scripts: path checks, child processes with their peak RSS, machine facts,
and the JSON + Markdown results files."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_WORK_DIR = REPO_ROOT / "benchmarks" / "work"
RESULT_PREFIX = "RESULT "
# the lusifer-embed / lusifer-eval entry points, run with this interpreter (what the console scripts call)
EMBED_ENTRY = "import sys; from lusifer.runtime.cli import main; sys.exit(main())"
EVAL_ENTRY = "import sys; from lusifer.evaluation.cli import main; sys.exit(main())"
# lusifer-embed with ONNX Runtime's own intra-op pool on CUDA (one spinning thread per core), as the runtime
# configured CUDA sessions before 2026-12-03; an A/B row of gpu_suite, never the product
ORT_POOL_EMBED_ENTRY = ("import sys; from benchmarks.common import use_onnxruntime_thread_pool; "
                        "use_onnxruntime_thread_pool(); " + EMBED_ENTRY.split("; ", 1)[1])
# Starts argv[2:], waits with wait4, writes "exit_code wall_seconds max_rss_kib" to argv[1], exits with its code.
LAUNCHER = (
    "import os, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "code = os.waitstatus_to_exitcode(status)\n"
    "open(sys.argv[1], 'w').write(f'{code} {time.perf_counter() - t} {usage.ru_maxrss}')\n"
    "sys.exit(code)\n"
)
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
VERSION_DISTS = ("lusifer", "numpy", "pyarrow", "tokenizers", "onnxruntime", "onnxruntime-gpu", "onnx", "torch",
                 "transformers", "safetensors", "openvino")


class BenchmarkError(Exception):
    """A path or option is wrong, or a measured child run failed."""


# ---- paths -------------------------------------------------------------------------------------------------
def require_dir(path: str | os.PathLike | None, what: str, marker: str | None = None) -> Path:
    """``path`` as an existing folder (holding ``marker`` when given), else :class:`BenchmarkError` naming it."""
    if path is None:
        raise BenchmarkError(f"{what}: no path given")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise BenchmarkError(f"{what} {str(folder)!r} does not exist or is not a folder")
    if marker and not (folder / marker).is_file():
        raise BenchmarkError(f"{what} {str(folder)!r} has no {marker}")
    return folder.resolve()


def require_file(path: str | os.PathLike | None, what: str) -> Path:
    if path is None:
        raise BenchmarkError(f"{what}: no path given")
    file = Path(path).expanduser()
    if not file.is_file():
        raise BenchmarkError(f"{what} {str(file)!r} does not exist or is not a file")
    return file.resolve()


def require_export(path: str | os.PathLike | None, variant: str, what: str = "export folder") -> Path:
    """An export folder whose manifest lists ``variant``."""
    folder = require_dir(path, what, "manifest.json")
    variants = json.loads((folder / "manifest.json").read_text("utf-8")).get("variants", {})
    if variant not in variants:
        raise BenchmarkError(
            f"{what} {str(folder)!r} has no {variant!r} variant (it has {', '.join(sorted(variants)) or 'none'}); "
            f"export it with lusifer-export" + (" --quantize int8" if variant == "int8" else
                                                " --dtype fp16" if variant == "fp16" else "")
        )
    return folder


def require_model(path: str | os.PathLike | None, what: str = "PyTorch model folder") -> Path:
    """A saved LusiferModel folder (``lusifer_config.json``), e.g. a merged lusifer-small."""
    return require_dir(path, what, "lusifer_config.json")


# ---- child processes ---------------------------------------------------------------------------------------
@dataclass
class ChildRun:
    """A finished child process: wall seconds, peak RSS (of that process alone) and its ``RESULT`` JSON."""

    cmd: list[str]
    returncode: int
    wall_s: float
    peak_rss_mib: float
    result: dict | None
    stdout: str


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CHILD_ENV)
    pythonpath = env.get("PYTHONPATH", "")
    if str(REPO_ROOT) not in pythonpath.split(os.pathsep):  # `python -m benchmarks.workers` from anywhere
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([pythonpath] if pythonpath else []))
    env.update(extra or {})
    return env


def run_child(cmd: Sequence[str], label: str, env: dict[str, str] | None = None) -> ChildRun:
    """Run ``cmd`` to the end; stderr goes to ours, stdout is captured (its last ``RESULT {json}`` line parsed).

    The command is started by a small launcher process (:data:`LAUNCHER`) that reports the command's wall
    time and ``ru_maxrss`` from ``wait4``. Forking straight from this process would not do: Linux starts a
    child's peak RSS at its parent's high-water mark at fork time, so a big parent would inflate every row.

    Raises:
        BenchmarkError: the child exited non-zero.
    """
    cmd = [str(c) for c in cmd]
    logger.info("%s: %s", label, shlex.join(cmd))
    with tempfile.TemporaryDirectory(prefix="lusifer-bench-") as tmp:
        usage_file = Path(tmp) / "usage"
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(usage_file), *cmd], stdout=subprocess.PIPE,
                                stderr=None, env=child_env(env), cwd=REPO_ROOT)
        stdout = proc.stdout.read().decode("utf-8", "replace")
        proc.wait()
        usage = usage_file.read_text().split() if usage_file.is_file() else None
    if proc.returncode != 0 or usage is None:
        tail = "\n".join(stdout.strip().splitlines()[-20:])
        raise BenchmarkError(f"{label} failed (exit {proc.returncode}): {shlex.join(cmd)}\n{tail}")
    result = None
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    return ChildRun(cmd, proc.returncode, float(usage[1]), int(usage[2]) / 1024, result, stdout)


def worker_cmd(*args: Any) -> list[str]:
    """A command running :mod:`benchmarks.workers` with this interpreter."""
    return [sys.executable, "-m", "benchmarks.workers", *map(str, args)]


def embed_cmd(*args: Any) -> list[str]:
    """A command running the ``lusifer-embed`` entry point (``lusifer.runtime.cli:main``) with this interpreter."""
    return [sys.executable, "-c", EMBED_ENTRY, *map(str, args)]


def use_onnxruntime_thread_pool() -> None:
    """Make this process's CUDA sessions use ONNX Runtime's default intra-op pool (one thread per core, spinning).

    The runtime's CUDA sessions have one intra-op thread and no spinning
    (:func:`lusifer.runtime.session.session_options`); this restores the earlier configuration for an A/B
    measurement. CPU sessions are left as they are.
    """
    from lusifer.runtime import session as session_mod

    product = session_mod.session_options

    def onnxruntime_pool(device, threads):
        opts = product(device, threads)
        if device.kind == "cuda":  # ONNX Runtime's defaults: a pool of physical cores, spinning workers
            opts.intra_op_num_threads = threads or 0
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
        return opts

    session_mod.session_options = onnxruntime_pool


def eval_cmd(*args: Any) -> list[str]:
    """A command running the ``lusifer-eval`` entry point with this interpreter."""
    return [sys.executable, "-c", EVAL_ENTRY, *map(str, args)]


def embed_summary(out_npy: Path) -> dict:
    """The summary ``lusifer-embed`` stored in the sidecar of ``out_npy``."""
    sidecar = Path(f"{out_npy}.json")
    data = json.loads(sidecar.read_text("utf-8"))
    if data.get("status") != "complete" or "summary" not in data:
        raise BenchmarkError(f"{sidecar} is not a complete lusifer-embed sidecar")
    return data["summary"]


def remove_output(out_npy: Path) -> None:
    """Delete a ``lusifer-embed`` output and its sidecar / partial file."""
    for p in (out_npy, Path(f"{out_npy}.json"), Path(f"{out_npy}.partial")):
        p.unlink(missing_ok=True)


# ---- machine facts -----------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ISA_FLAGS = {  # /proc/cpuinfo flag -> the name results files use (the ratio between INT8 and fp32 depends on them)
    "avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F", "avx512bw": "AVX-512BW", "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI", "avx512_bf16": "AVX-512 BF16", "amx_tile": "AMX", "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}


def cpu_isa() -> list[str]:
    """The vector and matrix instruction sets of this CPU that matter for fp32/INT8 kernels (x86 flags)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [name for flag, name in ISA_FLAGS.items() if flag in flags]
    except OSError:
        pass
    return []


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _gpus() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in VERSION_DISTS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD")}
    except (OSError, subprocess.SubprocessError):
        return {}


def command_line() -> str:
    """This process's command line as typed: ``python -m benchmarks.<script> ...`` for the scripts here."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.suffix == ".py" and script.resolve().parent == REPO_ROOT / "benchmarks":
        return shlex.join(["python", "-m", f"benchmarks.{script.stem}", *sys.argv[1:]])
    return shlex.join(["python", *sys.argv])


def machine_info() -> dict[str, Any]:
    """CPU model and cores, memory, GPUs, library versions, git commit, command line, load average, time."""
    from lusifer.runtime.session import physical_cores

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "cpu_isa": cpu_isa(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "physical_cores": physical_cores(),
        "memory_gib": _mem_total_gib(),
        "gpus": _gpus(),
        "os": platform.platform(),
        "versions": _versions(),
        "git": _git(),
        "command": command_line(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return info


# ---- results -----------------------------------------------------------------------------------------------
def portable(value: Any) -> Any:
    """``value`` with this machine's paths made portable, for results files that are committed.

    Strings (also inside dicts and lists) lose the repository root (paths become relative to it), the
    interpreter's path becomes ``python`` and the home folder ``~``. Other values are returned as they are.
    """
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(portable(v) for v in value)
    if not isinstance(value, str):
        return value
    value = value.replace(sys.executable, "python").replace(f"{REPO_ROOT}{os.sep}", "").replace(str(REPO_ROOT), ".")
    home = str(Path.home())
    return value.replace(home + os.sep, "~" + os.sep) if home not in ("", os.sep) else value


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 10 else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_md(machine: dict) -> str:
    v = machine.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in v)
    gpus = "; ".join(machine.get("gpus") or []) or "none"
    git = machine.get("git", {})
    return (
        f"- machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs ({machine['physical_cores']} physical "
        f"cores), {machine['memory_gib']} GiB RAM; GPUs: {gpus}\n"
        f"- CPU instruction sets: {', '.join(machine.get('cpu_isa') or []) or 'not recorded'}\n"
        f"- load average (1, 5, 15 min) at start: {machine['load_average_at_start']}\n"
        f"- libraries: {libs}\n"
        f"- git: {git.get('commit', '?')}; started {machine['started']}\n"
        f"- command: `{machine['command']}`\n"
    )


def write_results(out_dir: str | os.PathLike, name: str, data: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``<name>.md`` (the Markdown ends with the machine facts)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, markdown = portable(data), portable(markdown)
    data = {**data, "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", "utf-8")
    md_path.write_text(markdown.rstrip() + "\n\n" + machine_md(data["machine"])
                       + f"- load average at end: {data['load_average_at_end']}\n", "utf-8")
    return json_path, md_path


def setup_logging(verbose: bool = True) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def fail(exc: object) -> None:
    """Print a benchmark error as one clear line and exit 2."""
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
