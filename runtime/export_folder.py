"""Opening an export folder: manifest, file checks, sha256 verification, and the choice of ONNX variant."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from lusifer.runtime.errors import DeviceError, ExportFolderError

from lusifer.checksums import sha256_file
from lusifer.onnx_interface import ExportManifest, ManifestError

logger = logging.getLogger(__name__)

# Preferred variants per device, best first. int8 is a CPU-only graph.
VARIANT_PREFERENCE = {"cuda": ("fp16", "fp32"), "cpu": ("int8", "fp32", "fp16")}
# x86 flags of fast int8 dot products. Without them ONNX Runtime's 8-bit MatMulNBits kernels ran slower than the
# fp32 graph (0.72x, lusifer-small on an AVX2 CPU), with them faster (1.49x, AVX-512 VNNI; docs/benchmarks.md).
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_has_fast_int8(cpuinfo: str | None = None, machine: str | None = None) -> bool:
    """Whether this CPU multiplies int8 quickly: x86 with VNNI or AMX; any other architecture (ARM's dot-product
    instructions), or an x86 CPU whose flags cannot be read, counts as yes.

    Args:
        cpuinfo: The text of ``/proc/cpuinfo`` (read when ``None``).
        machine: ``platform.machine()`` (read when ``None``).
    """
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return True
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(INT8_DOT_FLAGS & set(line.partition(":")[2].split()))
    return True


@dataclass(frozen=True)
class ExportFolder:
    """A verified export folder and the variant chosen from it.

    Attributes:
        folder: The export folder.
        manifest: Its manifest.
        variant: The chosen variant name (a key of ``manifest.variants``).
        graph_path: The ONNX graph file of that variant.
        tokenizer_path: The tokenizer.json file.
        checksums: sha256 of every file used (variant files and tokenizer), by file name.
    """

    folder: Path
    manifest: ExportManifest
    variant: str
    graph_path: Path
    tokenizer_path: Path
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def model_sha256(self) -> str:
        """One checksum for the model as used: sha256 over the sorted ``name:sha256`` lines of its files."""
        lines = "".join(f"{name}:{sha}\n" for name, sha in sorted(self.checksums.items()))
        return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def load_manifest(folder: str | os.PathLike) -> ExportManifest:
    """Read and validate ``manifest.json`` of an export folder (raises :class:`ExportFolderError`)."""
    try:
        return ExportManifest.load(folder)
    except ExportFolderError:
        raise
    except ManifestError as exc:
        raise ExportFolderError(str(exc)) from exc


def choose_variant(
    manifest: ExportManifest, device_kind: str, requested: str | None, fast_int8: bool | None = None
) -> str:
    """Pick the ONNX variant for a device: fp16 on CUDA, int8 on CPU when present, else fp32.

    The block INT8 graph (``quantization="int8-block"``) is the CPU default only where the CPU has fast int8
    dot products (:func:`cpu_has_fast_int8`); elsewhere fp32 is chosen and the reason logged, or, in an export
    without an fp32 graph (``lusifer-export --int8-only``), INT8 runs all the same with a warning that says why.
    An explicit ``requested`` variant is always used; one the export lacks raises :class:`ExportFolderError`
    naming the variants present.

    Args:
        manifest: The export manifest.
        device_kind: ``"cpu"`` or ``"cuda"``.
        requested: An explicit variant name, or ``None`` for the default.
        fast_int8: Whether the CPU has fast int8 dot products; ``None`` = detect.
    """
    available = list(manifest.variants)
    if requested is not None:
        if requested not in manifest.variants:
            raise ExportFolderError(
                f"variant {requested!r} is not in this export; it has {', '.join(available)}"
            )
        if device_kind == "cuda" and manifest.variants[requested].quantization is not None:
            raise DeviceError(
                f"variant {requested!r} is an INT8 graph, which runs on CPU only; "
                "use --variant fp16/fp32 with --device cuda, or --device cpu"
            )
        return requested
    for name in VARIANT_PREFERENCE[device_kind]:
        info = manifest.variants.get(name)
        if info is None or (device_kind == "cuda" and info.quantization is not None):
            continue
        if info.quantization == "int8-block":
            if fast_int8 is None:
                fast_int8 = cpu_has_fast_int8()
            if not fast_int8 and "fp32" in manifest.variants:
                logger.info("variant %r not chosen: this CPU lacks fast int8 dot products (VNNI/AMX), where its "
                            "graph ran slower than fp32; using fp32 (--variant %s forces it)", name, name)
                continue
            if not fast_int8:
                logger.warning("running variant %r on a CPU without fast int8 dot products (VNNI/AMX), where its "
                               "graph ran slower than fp32 (0.72x, lusifer-small on an AVX2 CPU), because this export "
                               "has no fp32 graph (it has %s); an export with one (lusifer-export without "
                               "--int8-only) would run fp32 here", name, ", ".join(available))
        return name
    usable = [n for n, v in manifest.variants.items() if not (device_kind == "cuda" and v.quantization is not None)]
    if not usable:
        raise DeviceError(f"this export has only CPU-only INT8 variants ({', '.join(available)}); use --device cpu")
    return usable[0]


def open_export(
    folder: str | os.PathLike, device_kind: str, variant: str | None = None, verify: bool = True
) -> ExportFolder:
    """Load an export folder, choose the variant, and check its files and sha256 checksums.

    Args:
        folder: The export folder (written by ``lusifer-export``).
        device_kind: ``"cpu"`` or ``"cuda"`` (selects the default variant).
        variant: Explicit variant name, or ``None``.
        verify: Hash the graph and tokenizer files and compare with the manifest (on by default).

    Raises:
        ExportFolderError: missing folder, manifest, graph or tokenizer file, or a checksum mismatch.
        DeviceError: the requested variant cannot run on the device.
    """
    root = Path(folder)
    manifest = load_manifest(root)
    name = choose_variant(manifest, device_kind, variant)
    info = manifest.variants[name]
    if not info.files:
        raise ExportFolderError(f"manifest of {str(root)!r} lists no files with checksums for variant {name!r}")
    if info.file not in info.files:
        raise ExportFolderError(
            f"manifest of {str(root)!r}: variant {name!r} graph {info.file!r} is not among its checksummed files "
            f"{sorted(info.files)}"
        )
    if not manifest.tokenizer_sha256:
        raise ExportFolderError(f"manifest of {str(root)!r} has no tokenizer_sha256; re-export the model")
    expected = dict(info.files)
    expected[manifest.tokenizer_file] = manifest.tokenizer_sha256
    missing = sorted(f for f in expected if not (root / f).is_file())
    if missing:
        raise ExportFolderError(
            f"export folder {str(root)!r} is incomplete: missing {', '.join(missing)} (variant {name!r})"
        )
    if verify:
        for fname, sha in sorted(expected.items()):
            actual = sha256_file(root / fname)
            if actual != sha:
                raise ExportFolderError(
                    f"checksum mismatch for {str(root / fname)!r}: sha256 is {actual}, manifest says {sha}; "
                    "the export folder is corrupt or was modified: re-export or copy it again"
                )
        logger.info("verified sha256 of %d file(s) in %s", len(expected), root)
    return ExportFolder(
        folder=root,
        manifest=manifest,
        variant=name,
        graph_path=root / info.file,
        tokenizer_path=root / manifest.tokenizer_file,
        checksums=expected,
    )
