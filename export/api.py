"""``export_model``: a saved LusiferModel folder -> a self-contained, validated ONNX export folder."""

from __future__ import annotations

import datetime as _dt
import gc
import logging
import os
import shutil
import time
from pathlib import Path

from lusifer.export.errors import ExportError, ExportOptionError, ModelDirError
from lusifer.export.folders import (
    TOKENIZER_FILE,
    check_model_dir,
    check_out_dir,
    make_staging,
    move_into_place,
    write_compact_tokenizer,
)
from lusifer.export.quantize import (
    DEFAULT_OUTLIER_SHARE,
    DEFAULT_SMOOTH_ALPHA,
    DEFAULT_WEIGHT_TYPE,
    Int8Options,
    export_int8,
)

from lusifer.extras import require
from lusifer.onnx_interface import (
    DEFAULT_FP16_FUSIONS,
    DEFAULT_INT8_SCHEME,
    DEFAULT_OPSET,
    FP16_FUSIONS,
    INT8_SCHEMES,
    MIN_COSINE,
    TOKENIZER_NAME,
    VARIANT_FILES,
    ExportManifest,
)

logger = logging.getLogger(__name__)

DTYPES = ("fp32", "fp16")
QUANTIZATIONS = (None, "int8")
EXPORTER = "torch.onnx.export (TorchScript tracer, dynamo=False)"


def check_options(
    dtype: str, quantize: str | None, opset: int, int8_min_cosine: float, int8_options=None
) -> None:
    """Raise :class:`ExportOptionError` for an unsupported option value."""
    from lusifer.export.onnx_export import MAX_OPSET, MIN_OPSET

    if dtype not in DTYPES:
        raise ExportOptionError(f"dtype={dtype!r} is not supported; expected one of {', '.join(DTYPES)}")
    if quantize not in QUANTIZATIONS:
        raise ExportOptionError(f"quantize={quantize!r} is not supported; expected None or 'int8'")
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportOptionError(f"opset={opset!r} is not supported; expected an integer from {MIN_OPSET} to {MAX_OPSET}")
    if isinstance(int8_min_cosine, bool) or not isinstance(int8_min_cosine, (int, float)) or not 0 < int8_min_cosine <= 1:
        raise ExportOptionError(f"int8_min_cosine={int8_min_cosine!r} must be a number in (0, 1]")
    if int8_options is not None:
        try:
            int8_options.check()
        except ValueError as exc:
            raise ExportOptionError(str(exc)) from exc


def check_int8_only(int8_only: bool, dtype: str, quantize: str | None, int8_required: bool) -> None:
    """Raise :class:`ExportOptionError` when ``int8_only`` cannot hold: it needs an INT8 graph made from an fp32
    graph (``quantize="int8"``, ``dtype="fp32"``) that cannot be left out (``int8_required``)."""
    if not isinstance(int8_only, bool):
        raise ExportOptionError(f"int8_only={int8_only!r} must be True or False")
    if not int8_only:
        return
    if quantize != "int8":
        raise ExportOptionError(
            f"int8_only=True (--int8-only) keeps only the INT8 graph, but quantize={quantize!r}: add --quantize int8"
        )
    if dtype != "fp32":
        raise ExportOptionError(
            f"int8_only=True (--int8-only) with dtype={dtype!r} would drop the {dtype} graph the dtype asks for; "
            "use --dtype fp32 (the INT8 graph is made from the fp32 graph either way)"
        )
    if not int8_required:
        raise ExportOptionError(
            "int8_only=True (--int8-only) with int8_required=False (--int8-optional) could leave an export "
            "without any graph; drop one of them"
        )


def _check_validation_device(validation_device: str, dtype: str, quantize: str | None) -> str:
    """The ONNX Runtime provider that validates the graphs; checks that ``validation_device`` can be used."""
    if validation_device == "cpu":
        return "CPUExecutionProvider"
    if validation_device != "cuda":
        raise ExportOptionError(f"validation_device={validation_device!r}; expected 'cpu' or 'cuda'")
    if dtype != "fp16" or quantize is not None:
        raise ExportOptionError(
            f"validation_device='cuda' validates an fp16 graph on the GPU; it needs dtype='fp16' and no INT8 graph "
            f"(got dtype={dtype!r}, quantize={quantize!r})"
        )
    torch = require("torch", "export")
    ort = require("onnxruntime", "export")
    if not torch.cuda.is_available():
        raise ExportOptionError("validation_device='cuda' but torch sees no CUDA device")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ExportOptionError(
            "validation_device='cuda' but this onnxruntime has no CUDAExecutionProvider "
            f"({ort.get_available_providers()}); install onnxruntime-gpu (pip install lusifer[gpu])"
        )
    return "CUDAExecutionProvider"


def _parameter_budget(model) -> int:
    """Parameters the graph needs: everything but the LM head, and but the LLM's token-embedding table unless
    the model reads LLM tokens (``llm-only``: the graph looks its input ids up in that table)."""
    llm_only = model.config.is_llm_only
    skip = set() if llm_only else {id(p) for p in model.llm.get_input_embeddings().parameters()}
    backbones = [model.decoder] if llm_only else [model.encoder, model.connector, model.decoder]
    modules = backbones + ([model.projection] if model.projection else [])
    seen: set[int] = set()
    total = 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in skip and id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def _load_model(model_dir: Path):
    torch = require("torch", "export", purpose="export a LUSIFER model to ONNX")
    from lusifer.backbones import ModelFolderError
    from lusifer.modeling import LusiferModel

    try:
        return LusiferModel.from_pretrained(model_dir, dtype=torch.float32)
    except ModelFolderError as exc:
        raise ModelDirError(str(exc)) from exc
    except (ValueError, OSError) as exc:
        raise ModelDirError(f"model folder {str(model_dir)!r} cannot be loaded: {exc}") from exc


def export_model(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: str = "fp32",
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    int8_min_cosine: float = MIN_COSINE["int8"],
    int8_smooth_alpha: float = DEFAULT_SMOOTH_ALPHA,
    int8_weight_type: str = DEFAULT_WEIGHT_TYPE,
    int8_embeddings: bool = True,
    int8_outlier_share: float = DEFAULT_OUTLIER_SHARE,
    int8_required: bool = True,
    fp16_fusions: str = DEFAULT_FP16_FUSIONS,
    validation_device: str = "cpu",
    int8_scheme: str = DEFAULT_INT8_SCHEME,
    int8_only: bool = False,
) -> ExportManifest:
    """Export a saved LusiferModel to a self-contained ONNX folder and validate every graph.

    The folder holds the graph(s) (``model.onnx`` for fp32, ``model_fp16.onnx`` for fp16, plus
    ``model_int8.onnx`` with ``quantize="int8"``, or that one alone with ``int8_only``; each with a ``.data`` file
    when over 2 GB), the encoder's ``tokenizer.json`` (the LLM's for an ``llm-only`` model, whose graph then takes LLM token ids) and
    ``manifest.json`` (``source.architecture`` names the architecture). It is assembled in a ``.<name>.partial-*`` folder beside
    ``out_dir`` and moved into place only when complete.

    The INT8 graph: with ``int8_scheme="block"`` (default, :mod:`lusifer.export.int8_block`) ONNX Runtime's
    ``MatMulNBits`` with 8-bit weights and activations quantised per row and block at run time (batch-invariant,
    batched by the runtime), and an int8 token table; with ``"dynamic"`` (:mod:`lusifer.export.quantize`)
    SmoothQuant, dynamic INT8 MatMuls (one activation scale per pass: the runtime runs one row per pass) with
    each input's largest channels in a small fp32 product, an int8 token table, and, only if that misses
    ``int8_min_cosine``, the MatMuls whose INT8 form costs most on calibration texts kept in fp32.

    Args:
        model_dir: Folder written by ``LusiferModel.save_pretrained`` (LoRA merged).
        out_dir: Export folder to create (outside ``model_dir``).
        dtype: ``"fp32"`` (CPU or CUDA) or ``"fp16"`` (CUDA execution provider).
        quantize: ``None`` or ``"int8"``: also write an INT8 graph for CPU.
        int8_only: With ``quantize="int8"`` and ``dtype="fp32"``: keep only the INT8 graph. The fp32 graph is
            still traced and validated (the INT8 graph is made from it) but left out of the folder and the
            manifest (lusifer-small: 245 MB instead of 1.1 GB); its figures are kept in
            ``manifest.source["int8_only"]``.
        opset: ONNX opset (17 to 20).
        overwrite: Replace an existing export folder at ``out_dir``.
        int8_min_cosine: Lowest acceptable cosine of the INT8 graph to PyTorch fp32.
        int8_scheme: ``"block"`` or ``"dynamic"`` (:data:`lusifer.onnx_interface.INT8_SCHEMES`); the options
            ``int8_smooth_alpha``, ``int8_weight_type`` and ``int8_outlier_share`` apply to ``"dynamic"`` only.
        int8_smooth_alpha: SmoothQuant migration strength in [0, 1] (0: no smoothing).
        int8_weight_type: ``"uint8"`` (8-bit per-column weights) or ``"int8"`` (7-bit; faster u8 x s8
            kernels on x86, less precise).
        int8_embeddings: Store the token table (``Gather`` on ``input_ids``) as int8 in the INT8 graph.
        int8_outlier_share: Fraction of each MatMul input's channels (the largest on the calibration texts)
            computed in fp32 beside the INT8 product, in [0, 0.5] (0: none).
        int8_required: With ``False``, an INT8 graph that misses ``int8_min_cosine`` is left out of the
            export (a warning, and the reason in ``manifest.source["int8_quantization"]``) instead of
            failing the export.
        fp16_fusions: Which traced ops of the fp16 graph become ONNX Runtime kernels
            (:data:`lusifer.onnx_interface.FP16_FUSIONS`): ``"norm"`` (default) the norms with their residual Adds and
            bias+GELU (:mod:`lusifer.export.fusion`); ``"all"`` also rotary and attention
            (:mod:`lusifer.export.rotary_fusion`, :mod:`lusifer.export.attention_fusion`; slower on Hopper with
            ONNX Runtime 1.31, see :mod:`lusifer.export.fp16`); ``"none"`` keeps the traced ops, with RMSNorm
            statistics in fp32.
        validation_device: ``"cpu"`` (default: PyTorch fp32 and every graph validated on the CPU) or ``"cuda"``
            for models too large for that (the 7B LLM of the released LUSIFER): the PyTorch fp32 reference runs
            on the GPU and the fp16 graph is validated against it with ONNX Runtime's CUDA provider; the
            intermediate fp32 graph is then checked (interface, weights) but not run. Only with
            ``dtype="fp16"`` and no INT8 graph.

    Returns:
        The manifest written to ``out_dir/manifest.json``.

    Raises:
        ExportOptionError, ModelDirError, UnsupportedArchitectureError, OutputDirError: bad input.
        ExportGraphError: the traced graph breaks the declared interface or holds the LLM's vocabulary tables.
        ExportParityError: a graph differs from PyTorch fp32 beyond its tolerance.
    """
    int8_options = Int8Options(
        smooth_alpha=int8_smooth_alpha, embeddings=int8_embeddings, weight_type=int8_weight_type,
        outlier_share=int8_outlier_share,
    )
    check_options(dtype, quantize, opset, int8_min_cosine, int8_options)
    if not isinstance(int8_required, bool):
        raise ExportOptionError(f"int8_required={int8_required!r} must be True or False")
    if int8_scheme not in INT8_SCHEMES:
        raise ExportOptionError(f"int8_scheme={int8_scheme!r} must be one of {', '.join(INT8_SCHEMES)}")
    if fp16_fusions not in FP16_FUSIONS:
        raise ExportOptionError(f"fp16_fusions={fp16_fusions!r} must be one of {', '.join(FP16_FUSIONS)}")
    check_int8_only(int8_only, dtype, quantize, int8_required)
    for module in ("torch", "transformers", "onnx", "onnxruntime"):
        require(module, "export", purpose="export a LUSIFER model to ONNX")
    provider = _check_validation_device(validation_device, dtype, quantize)
    model_path, architecture, encoder_type, llm_type, tokenizer_dir = check_model_dir(model_dir)
    target = check_out_dir(out_dir, model_path, overwrite)
    if quantize == "int8" and dtype == "fp16":
        logger.warning(
            "INT8 is a CPU graph (dynamic quantisation); with --dtype fp16 (CUDA) the export holds "
            "model_fp16.onnx for CUDA and model_int8.onnx for CPU. Do not run the INT8 graph on CUDA."
        )
    from lusifer.export.fp16 import convert_to_fp16
    from lusifer.export.graph import (
        TRACE_ATTN_IMPLEMENTATION,
        export_mode,
        trace_inputs,
    )
    from lusifer.export.manifest import build_manifest, sha256_file, variant_info
    from lusifer.export.onnx_export import (
        check_interface,
        check_weights,
        remove_tree,
        resave,
        trace_to_onnx,
    )
    from lusifer.export.validate import (
        calibration_batches,
        check_tokenizer_file,
        torch_reference,
        validate_graph,
    )

    started = time.perf_counter()
    logger.info("exporting %s (%s architecture: %s encoder, %s LLM) to %s", model_path, architecture,
                encoder_type or "no", llm_type, target)
    from lusifer.modeling import CONFIG_NAME

    model = _load_model(model_path)
    config, tokenizer = model.config, model.tokenizer
    tokenizer_name = "LLM" if config.is_llm_only else "encoder"
    if tokenizer.pad_token_id is None:
        raise ModelDirError(
            f"the {tokenizer_name} tokenizer in {str(model_path / tokenizer_dir)!r} has no pad token; the runtime "
            "needs one to pad batches"
        )
    source_tokenizer = model_path / tokenizer_dir / TOKENIZER_FILE
    check_tokenizer_file(source_tokenizer, tokenizer, config.max_length)
    if validation_device == "cuda":
        model.to("cuda")
    reference = torch_reference(model) if validation_device == "cpu" else torch_reference(model, "cuda")
    if validation_device == "cuda":
        model.to("cpu")  # trace on the CPU, as always; free the GPU for the ONNX Runtime validation
        require("torch").cuda.empty_cache()
    calibration = calibration_batches(model) if quantize == "int8" and int8_scheme == "dynamic" else []
    budget = _parameter_budget(model)
    llm_vocab = int(model.llm.get_input_embeddings().weight.shape[0])
    llm_hidden = int(model.config.llm_hidden)
    # rows of the fused rotary tables: well beyond any decoder position the graph can see
    rotary_positions = max(int(getattr(model.llm.config, "max_position_embeddings", 0) or 0), 4 * int(config.max_length))

    staging = make_staging(target)
    try:
        work = staging / ".work"
        traced = work / "trace" / "model.onnx"
        with export_mode(model) as graph:
            trace_to_onnx(graph, trace_inputs(model), traced, opset)
        del graph, model
        gc.collect()  # the ONNX steps below need the memory the torch weights held
        if dtype == "fp32":  # with int8_only the fp32 graph is a work file, as the INT8 graph's source
            fp32_path = (work if int8_only else staging) / VARIANT_FILES["fp32"]
            fp32_files = resave(traced, fp32_path)
            remove_tree(work / "trace")
        else:  # the fp32 graph is only a step: read the trace as it is (no second fp32 copy on disk)
            fp32_path, fp32_files = traced, []
        check_interface(fp32_path, config.embedding_dim)
        check_weights(fp32_path, budget, llm_vocab, llm_hidden, token_table_needed=config.is_llm_only)
        if validation_device == "cpu":
            fp32_parity = validate_graph("fp32", fp32_path, reference, MIN_COSINE["fp32"])
        else:
            logger.info("validation on cuda: the intermediate fp32 graph is not run; the fp16 graph is validated")

        variants = {}
        if dtype == "fp32":
            if not int8_only:
                variants["fp32"] = variant_info(staging, fp32_path.name, fp32_files, "fp32", None, fp32_parity)
        else:
            fp16_path = staging / VARIANT_FILES["fp16"]
            fp16_files = convert_to_fp16(fp32_path, fp16_path, fuse=fp16_fusions, rotary_positions=rotary_positions)
            if validation_device == "cuda":
                remove_tree(work / "trace")  # before ONNX Runtime loads the fp16 graph: disk and memory
            check_interface(fp16_path, config.embedding_dim)
            parity = validate_graph("fp16", fp16_path, reference, MIN_COSINE["fp16"], provider)
            variants["fp16"] = variant_info(staging, fp16_path.name, fp16_files, "fp16", None, parity)
        if quantize == "int8":
            int8_path = staging / VARIANT_FILES["int8"]
            try:
                if int8_scheme == "block":
                    from lusifer.export.int8_block import export_int8_block

                    int8_files, int8_summary, parity = export_int8_block(
                        fp32_path, int8_path, reference, float(int8_min_cosine), config.embedding_dim,
                        int8_options.embeddings,
                    )
                else:
                    int8_files, int8_summary, parity = export_int8(
                        fp32_path, int8_path, work / "int8", calibration, reference, float(int8_min_cosine),
                        config.embedding_dim, int8_options,
                    )
                variants["int8"] = variant_info(staging, int8_path.name, int8_files, "fp32",
                                                INT8_SCHEMES[int8_scheme], parity)
            except ExportError as exc:
                if int8_required:
                    raise
                for stale in staging.glob(VARIANT_FILES["int8"] + "*"):
                    stale.unlink()
                int8_summary = {"skipped": f"{type(exc).__name__}: {exc}"}
                logger.warning("the INT8 graph is left out of this export (int8_required=False): %s", exc)
        remove_tree(work)

        write_compact_tokenizer(source_tokenizer, staging / TOKENIZER_NAME)
        check_tokenizer_file(staging / TOKENIZER_NAME, tokenizer, config.max_length)
        source = {
            "model_dir": str(model_path),
            "architecture": architecture,
            "encoder_model_type": encoder_type,
            "llm_model_type": llm_type,
            "lusifer_config_sha256": sha256_file(model_path / CONFIG_NAME),
            # how the graph was built (the text-format choices are top-level manifest fields)
            "connector_activation": None if config.is_llm_only else config.connector_activation,
            "projection": config.projection_dim is not None,
            "exporter": EXPORTER,
            "trace_attn_implementation": TRACE_ATTN_IMPLEMENTATION,
            "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        if dtype == "fp16":
            source["fp16_fusions"] = fp16_fusions
        source["validation_device"] = validation_device
        if quantize == "int8":
            source["int8_quantization"] = int8_summary
        if int8_only:
            source["int8_only"] = {
                "fp32_graph": "traced and validated, then not kept (lusifer-export --int8-only)",
                "fp32_min_cosine": fp32_parity["min_cosine"],
                "fp32_max_abs_diff": fp32_parity["max_abs_diff"],
            }
        manifest = build_manifest(config, tokenizer.pad_token_id, staging, variants, opset, source)
        manifest.save(staging)
        move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "export done in %.1f s: %s (%s)",
        time.perf_counter() - started, target,
        ", ".join(f"{k} min cosine {v.parity['min_cosine']:.6f}" for k, v in manifest.variants.items()),
    )
    return manifest
