"""Tracing the embedding graph to ONNX, saving graphs (external data above 2 GB), and checking them.

Exporter: ``torch.onnx.export(..., dynamo=False)`` (the TorchScript tracer). With transformers 5.24 and
torch 2.13 both exporters keep attention bidirectional and match PyTorch within 1e-7; the tracer exports a
tiny model in ~0.5 s where the dynamo exporter takes ~13 s, and shape generalisation (its known risk) is
checked by validating on batch sizes and lengths that differ from the traced ones.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path

from lusifer.export.errors import ExportGraphError

from lusifer.extras import require
from lusifer.onnx_interface import (
    DYNAMIC_AXES,
    EXTERNAL_DATA_THRESHOLD_BYTES,
    INPUT_NAMES,
    OUTPUT_NAMES,
)

logger = logging.getLogger(__name__)

# The TorchScript exporter supports opsets up to 20; 17 is the first with LayerNormalization as one op.
MIN_OPSET = 17
MAX_OPSET = 20
DATA_SUFFIX = ".data"


def trace_to_onnx(graph_module, example_inputs, path: Path, opset: int) -> Path:
    """Trace ``graph_module`` with ``example_inputs`` into an ONNX file at ``path``.

    Large graphs may come out with one external file per tensor; :func:`resave` consolidates them.
    """
    torch = require("torch", "export")
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python booleans in transformers' mask code and announces its own
        # deprecation; the graph's generality is proved by validation on other shapes instead.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r"Exporting aten::index operator.*")
        torch.onnx.export(
            graph_module,
            tuple(example_inputs),
            str(path),
            dynamo=False,
            export_params=True,
            do_constant_folding=True,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: dict(axes) for name, axes in DYNAMIC_AXES.items()},
        )
    logger.info("traced the model to ONNX (opset %d) in %.1f s", opset, time.perf_counter() - started)
    return path


def initializer_bytes(model) -> int:
    """Bytes held by a ModelProto's initializers (in memory or external)."""
    onnx = require("onnx", "export")
    total = 0
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in init.external_data}.get("length", 0))
        else:
            total += len(init.raw_data) or _typed_bytes(init)
    return total


def _typed_bytes(init) -> int:
    onnx = require("onnx", "export")
    numpy_helper = onnx.numpy_helper
    return int(numpy_helper.to_array(init).nbytes) if init.dims else 0


def external_data_threshold() -> int:
    """Initializer bytes above which graphs are saved with external data (read at call time)."""
    return EXTERNAL_DATA_THRESHOLD_BYTES


def save_model(model, path: Path, threshold: int | None = None) -> list[Path]:
    """Save a ModelProto; with external data in one ``<name>.data`` file when it is large.

    Args:
        model: The ONNX ModelProto (tensors in memory).
        path: The graph file to write.
        threshold: Initializer bytes above which external data is used (default
            ``EXTERNAL_DATA_THRESHOLD_BYTES``, below protobuf's 2 GB limit).

    Returns:
        The files written (graph first).
    """
    onnx = require("onnx", "export")
    threshold = external_data_threshold() if threshold is None else threshold
    path = Path(path)
    data = path.with_name(path.name + DATA_SUFFIX)
    for stale in (path, data):
        stale.unlink(missing_ok=True)
    if initializer_bytes(model) > threshold:
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
            size_threshold=1024,
        )
        logger.info("saved %s with external data %s", path.name, data.name)
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def resave(src: Path, dst: Path, threshold: int | None = None) -> list[Path]:
    """Load a graph (with any external tensors) and save it at ``dst`` under the external-data policy."""
    onnx = require("onnx", "export")
    model = onnx.load(str(src), load_external_data=True)
    return save_model(model, dst, threshold)



def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def check_interface(path: Path, embedding_dim: int) -> None:
    """Check names, element types and dynamic axes of a graph's inputs and output against the interface."""
    onnx = require("onnx", "export")
    model = onnx.load(str(path), load_external_data=False)
    _check_io(model, embedding_dim, onnx.TensorProto)


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _check_io(model, embedding_dim: int, tensor_proto) -> None:
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    if list(inputs) != list(INPUT_NAMES) or list(outputs) != list(OUTPUT_NAMES):
        raise ExportGraphError(
            f"graph inputs {list(inputs)} / outputs {list(outputs)}; expected {list(INPUT_NAMES)} / {list(OUTPUT_NAMES)}"
        )
    for name in INPUT_NAMES:
        if inputs[name].type.tensor_type.elem_type != tensor_proto.INT64:
            raise ExportGraphError(f"graph input {name!r} is not int64")
        if _dims(inputs[name]) != [DYNAMIC_AXES[name][0], DYNAMIC_AXES[name][1]]:
            raise ExportGraphError(f"graph input {name!r} has dims {_dims(inputs[name])}; expected dynamic batch, sequence")
    out = outputs[OUTPUT_NAMES[0]]
    if out.type.tensor_type.elem_type != tensor_proto.FLOAT:
        raise ExportGraphError(f"graph output {OUTPUT_NAMES[0]!r} is not float32")
    if _dims(out) != [DYNAMIC_AXES[OUTPUT_NAMES[0]][0], embedding_dim]:
        raise ExportGraphError(
            f"graph output {OUTPUT_NAMES[0]!r} has dims {_dims(out)}; expected [batch, {embedding_dim}]"
        )


def _float_values(tensor, float_types) -> int:
    if tensor.data_type not in float_types:
        return 0
    n = 1
    for d in tensor.dims:
        n *= int(d)
    return n


def check_weights(path: Path, expected_parameters: int, llm_vocab: int, llm_hidden: int,
                  token_table_needed: bool = False) -> int:
    """Make sure the graph does not hold the LLM's LM head, nor its token-embedding table unless it is needed.

    Counts the float values stored in the graph (initializers and Constant nodes) and fails when they
    exceed the parameters the embedding needs by a whole vocabulary table.

    Args:
        path: The fp32 graph.
        expected_parameters: Parameters the graph needs (encoder, connector, decoder layers and norm,
            projection; plus the token-embedding table when ``token_table_needed``).
        llm_vocab: Vocabulary size of the LLM.
        llm_hidden: Hidden size of the LLM.
        token_table_needed: The graph takes LLM token ids (``llm-only``), so it holds the token-embedding
            table once (under either name when the LM head is tied to it); a second table still fails.

    Returns:
        The number of float values stored in the graph.
    """
    onnx = require("onnx", "export")
    model = onnx.load(str(path), load_external_data=False)
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    stored = 0
    tables = []
    for init in model.graph.initializer:
        stored += _float_values(init, float_types)
        lowered = init.name.lower()
        if "embed_tokens" in lowered or "lm_head" in lowered:
            tables.append(init.name)
    if len(tables) > (1 if token_table_needed else 0):
        what = "one token table (no LM head)" if token_table_needed else "no LLM token table / LM head"
        raise ExportGraphError(f"the graph holds {tables}: it must hold {what}")
    for node in model.graph.node:
        if node.op_type == "Constant":
            stored += sum(_float_values(a.t, float_types) for a in node.attribute if a.name == "value")
    table = llm_vocab * llm_hidden
    if stored - expected_parameters >= table:
        raise ExportGraphError(
            f"the graph stores {stored:,} float values, {stored - expected_parameters:,} more than the model needs "
            f"({expected_parameters:,}); that is at least one LLM vocabulary table ({llm_vocab} x {llm_hidden}): "
            "the token-embedding table or LM head was traced"
        )
    logger.info("graph weights: %s float values for %s model parameters", f"{stored:,}", f"{expected_parameters:,}")
    return stored
