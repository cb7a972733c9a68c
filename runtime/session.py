"""ONNX Runtime sessions: device resolution, providers, CPU threading, and the CUDA IO-binding runner."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from lusifer.onnx_interface import INPUT_NAMES, OUTPUT_NAMES
from lusifer.runtime.errors import DeviceError, ExportFolderError

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")
# ONNX Runtime 1.31 runs MultiHeadAttention (graphs exported with --fp16-fusions all) on cuDNN SDPA on Hopper,
# which cost a third of the throughput on real length-mixed batches: lusifer-small on an H200, 200k rows,
# model-only 235,807 tokens/s with cuDNN vs 359,773 with ORT_ENABLE_CUDNN_FLASH_ATTENTION=0 (the memory-efficient
# kernel; the default --fp16-fusions norm graph: 362,390; benchmarks/results/h200/gpu_small_200k_e2e_attention.md).
# CUDA sessions therefore get the provider option ``sdpa_kernel`` (a bit mask of the attention kernels ONNX Runtime
# may use; AttentionBackend in onnxruntime/contrib_ops/cpu/bert/attention_common.h) with every kernel that
# ONNX Runtime enables by default except cuDNN's, unless the user set the variable, which then decides.
CUDNN_ATTENTION_ENV = "ORT_ENABLE_CUDNN_FLASH_ATTENTION"
SDPA_FLASH, SDPA_EFFICIENT, SDPA_TRT_FUSED, SDPA_CUDNN, SDPA_MATH = 1, 2, 4, 8, 16
SDPA_TRT_FLASH, SDPA_TRT_CROSS, SDPA_TRT_CAUSAL, SDPA_LEAN, SDPA_DECODER = 32, 64, 128, 256, 512
# ONNX Runtime's defaults (no sdpa_kernel, no variables set), less cuDNN: TRT causal and lean attention are off
# by default too
SDPA_KERNELS_WITHOUT_CUDNN = (SDPA_FLASH | SDPA_EFFICIENT | SDPA_TRT_FUSED | SDPA_MATH | SDPA_TRT_FLASH
                              | SDPA_TRT_CROSS | SDPA_DECODER)


@dataclass(frozen=True)
class Device:
    """Where a session runs: ``kind`` is ``"cpu"`` or ``"cuda"``; ``index`` is the CUDA device id."""

    kind: str
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def resolve_device(device: str) -> Device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a :class:`Device`, checking that CUDA is available.

    ``"auto"`` means CUDA when this onnxruntime has the CUDA provider, else CPU. An explicit ``"cuda"``
    never falls back: it raises :class:`DeviceError` when the provider is missing.
    """
    match = _DEVICE_RE.match(str(device).strip().lower())
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        raise DeviceError(f"device={device!r} is not understood; expected auto, cpu, cuda or cuda:N")
    kind, index = match.group(1), int(match.group(2) or 0)
    available = ort.get_available_providers()
    if kind == "auto":
        kind = "cuda" if CUDA_PROVIDER in available else "cpu"
        logger.info("device auto -> %s (onnxruntime providers: %s)", kind, ", ".join(available))
    if kind == "cuda" and CUDA_PROVIDER not in available:
        raise DeviceError(
            f"CUDA was asked for but this onnxruntime {ort.__version__} has no {CUDA_PROVIDER} "
            f"(available: {', '.join(available)}). Install onnxruntime-gpu in place of onnxruntime "
            "(pip install 'lusifer[gpu]', see the README), or pass --device cpu"
        )
    return Device(kind, index)


def physical_cores() -> int:
    """Number of physical CPU cores this process may run on (hyper-threads counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            core = (topo / "core_id").read_text().strip()
            package = (topo / "physical_package_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((package, core))
    return max(1, len(cores))


def session_options(device: Device, threads: int | None) -> ort.SessionOptions:
    """Session options: full graph optimisation; ``threads`` intra-op threads that sleep when idle.

    On CPU ``threads`` defaults to the physical cores. On CUDA it defaults to 1: the GPU runs the graph and the
    CPU provider only computes a few shape nodes, for which a thread pool brings nothing; ONNX Runtime's own
    default there (a pool of one thread per core that spins after each use) competes for the cores with the
    tokenizer and the thread that launches the CUDA kernels.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads={threads!r} must be a positive integer")
    opts.intra_op_num_threads = threads or (physical_cores() if device.kind == "cpu" else 1)
    # Idle ORT workers sleep instead of spinning, leaving the cores to the tokenizer thread between
    # batches: with tokenisation overlapped this measured 1090-1140 rows/s vs 500-910 rows/s spinning
    # (tiny model, 2-core CPU, runtime/benchmark.py corpus).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def cuda_provider_options(device: Device, environ: Mapping[str, str] = os.environ) -> dict:
    """Options of the CUDA execution provider for ``device``.

    - ``device_id``: the CUDA device.
    - ``arena_extend_strategy=kSameAsRequested``: the memory arena grows by what a batch needs, not by doubling.
    - ``sdpa_kernel``: the attention kernels ``MultiHeadAttention`` may use, :data:`SDPA_KERNELS_WITHOUT_CUDNN`
      (ONNX Runtime's default set less cuDNN SDPA, which was a third slower on Hopper; see the note on
      :data:`CUDNN_ATTENTION_ENV`). Left out when the user set ``ORT_ENABLE_CUDNN_FLASH_ATTENTION`` (read, never
      written), so that ONNX Runtime follows the variable; ``sdpa_kernel`` also takes precedence over ONNX
      Runtime's other attention variables (``ORT_DISABLE_FLASH_ATTENTION``...), which setting
      ``ORT_ENABLE_CUDNN_FLASH_ATTENTION`` (to 0 or 1) brings back into force. With ``sdpa_kernel`` set, ONNX Runtime also drops its
      minimum sequence lengths for flash attention on packed QKV and for fp32 memory-efficient attention; the
      fp16 graphs of ``lusifer-export`` pass query, key and value separately, and the fp32 graph has no fused
      attention, so neither applies.
    """
    options = {"device_id": device.index, "arena_extend_strategy": "kSameAsRequested"}
    if not environ.get(CUDNN_ATTENTION_ENV):
        options["sdpa_kernel"] = SDPA_KERNELS_WITHOUT_CUDNN
    return options


def providers_for(device: Device) -> list:
    """The provider list for a device (CUDA first with the CPU provider for the few nodes CUDA lacks)."""
    if device.kind == "cuda":
        return [(CUDA_PROVIDER, cuda_provider_options(device)), CPU_PROVIDER]
    return [CPU_PROVIDER]


def create_session(graph_path: str | os.PathLike, device: Device, threads: int | None = None) -> ort.InferenceSession:
    """Create an inference session and check that it really runs on the requested device.

    Raises:
        ExportFolderError: ONNX Runtime cannot load the graph or it has the wrong inputs/outputs.
        DeviceError: CUDA was requested but the session did not get the CUDA provider (missing CUDA/cuDNN
            libraries, driver mismatch...): never a silent CPU fallback.
    """
    opts = session_options(device, threads)
    try:
        session = ort.InferenceSession(str(graph_path), sess_options=opts, providers=providers_for(device))
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        if device.kind == "cuda" and "CUDA" in str(exc):
            raise DeviceError(f"onnxruntime could not start CUDA for {str(graph_path)!r}: {exc}") from exc
        raise ExportFolderError(f"onnxruntime cannot load {str(graph_path)!r}: {exc}") from exc
    used = session.get_providers()
    if device.kind == "cuda" and (not used or used[0] != CUDA_PROVIDER):
        raise DeviceError(
            f"CUDA was asked for but the onnxruntime session runs on {used} only: the CUDA provider failed to "
            f"start on {device} (a device id that does not exist, missing CUDA or cuDNN libraries that "
            "onnxruntime-gpu needs, or a driver mismatch; onnxruntime's log above says which). "
            "Pass --device cpu to run on CPU"
        )
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if sorted(inputs) != sorted(INPUT_NAMES) or list(OUTPUT_NAMES) != outputs[: len(OUTPUT_NAMES)]:
        raise ExportFolderError(
            f"{str(graph_path)!r} has inputs {inputs} and outputs {outputs}; expected {list(INPUT_NAMES)} "
            f"and {list(OUTPUT_NAMES)}"
        )
    return session


class GraphRunner:
    """Runs the embedding graph on one padded batch; on CUDA through IO binding.

    With IO binding the int64 inputs are copied to the GPU once when bound and the output is allocated on
    the GPU by ONNX Runtime, then copied back (a small ``(batch, dim)`` float32 array), so no implicit copies
    happen inside ``run``.
    """

    def __init__(self, session: ort.InferenceSession, device: Device):
        self.session = session
        self.device = device
        self.output_name = OUTPUT_NAMES[0]

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Embeddings of one batch: float32 ``(batch, dim)``, not normalised."""
        input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        attention_mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        if self.device.kind == "cuda":
            binding = self.session.io_binding()
            binding.bind_cpu_input(INPUT_NAMES[0], input_ids)
            binding.bind_cpu_input(INPUT_NAMES[1], attention_mask)
            binding.bind_output(self.output_name, "cuda", self.device.index)
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            feeds = {INPUT_NAMES[0]: input_ids, INPUT_NAMES[1]: attention_mask}
            out = self.session.run([self.output_name], feeds)[0]
        return np.asarray(out, dtype=np.float32)
