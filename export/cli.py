"""``lusifer-export``: command line for ONNX export. Parses options and delegates to ``export_model``."""

from __future__ import annotations

import logging

import click

from lusifer.export.int8_graph import WEIGHT_TYPES
from lusifer.export.quantize import DEFAULT_OUTLIER_SHARE, DEFAULT_SMOOTH_ALPHA, DEFAULT_WEIGHT_TYPE

from lusifer.onnx_interface import (
    DEFAULT_FP16_FUSIONS,
    DEFAULT_INT8_SCHEME,
    DEFAULT_OPSET,
    FP16_FUSIONS,
    INT8_SCHEMES,
    MIN_COSINE,
)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Export folder to write.")
@click.option(
    "--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
    help="fp32 (CPU or CUDA) or fp16 (CUDA execution provider).",
)
@click.option("--quantize", type=click.Choice(["int8"]), default=None, help="Also write an INT8 graph (CPU; see --int8-scheme).")
@click.option(
    "--int8-scheme", type=click.Choice(list(INT8_SCHEMES)), default=DEFAULT_INT8_SCHEME, show_default=True,
    help="block: ONNX Runtime MatMulNBits, 8-bit weights, activations quantised per row and block (batch-invariant, "
         "batched); dynamic: SmoothQuant + dynamic INT8 (one scale per pass: run one row per pass; the "
         "--int8-smooth-alpha, --int8-weights and --int8-outlier-share options).",
)
@click.option(
    "--int8-only", is_flag=True,
    help="With --quantize int8: ship only the INT8 graph (model_int8.onnx). The fp32 graph is traced and validated "
         "as the INT8 graph's source, then not kept (lusifer-small: 245 MB instead of 1.1 GB).",
)
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True, help="ONNX opset (17-20).")
@click.option("--overwrite", is_flag=True, help="Replace an existing export folder at --out.")
@click.option(
    "--int8-min-cosine", type=float, default=MIN_COSINE["int8"], show_default=True,
    help="Fail when the INT8 graph's cosine to PyTorch fp32 falls below this on any validation text.",
)
@click.option(
    "--int8-smooth-alpha", type=float, default=DEFAULT_SMOOTH_ALPHA, show_default=True,
    help="SmoothQuant strength for the INT8 graph (0 to 1; 0 turns smoothing off).",
)
@click.option(
    "--int8-weights", "int8_weight_type", type=click.Choice(list(WEIGHT_TYPES)), default=DEFAULT_WEIGHT_TYPE,
    show_default=True, help="INT8 weight format: uint8 (8-bit) or int8 (7-bit, faster on x86, less precise).",
)
@click.option(
    "--int8-embeddings/--no-int8-embeddings", default=True, show_default=True,
    help="Store the token table as int8 (per-row scales) in the INT8 graph.",
)
@click.option(
    "--int8-outlier-share", type=float, default=DEFAULT_OUTLIER_SHARE, show_default=True,
    help="Fraction of each MatMul input's largest channels computed in fp32 beside the INT8 product (0 to 0.5).",
)
@click.option(
    "--int8-optional", is_flag=True,
    help="Leave the INT8 graph out (with a warning) instead of failing when it misses --int8-min-cosine.",
)
@click.option(
    "--fp16-fusions", type=click.Choice(FP16_FUSIONS), default=DEFAULT_FP16_FUSIONS, show_default=True,
    help="Traced ops of the fp16 graph fused into ONNX Runtime kernels: norm = norms with their residual Adds and "
         "bias+GELU; all = also rotary and attention (slower on Hopper GPUs with ONNX Runtime 1.31: cuDNN "
         "attention); none = the traced ops.",
)
@click.option("--no-fp16-fusions", is_flag=True, help="Same as --fp16-fusions none.")
@click.option(
    "--validation-device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
    help="Where the graphs are checked against PyTorch fp32: cuda (with --dtype fp16) for models too large for "
         "the CPU, such as the released 7B LUSIFER (PyTorch fp32 and ONNX Runtime's CUDA provider on the GPU).",
)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(
    model_dir: str,
    out_dir: str,
    dtype: str,
    quantize: str | None,
    opset: int,
    overwrite: bool,
    int8_scheme: str,
    int8_only: bool,
    int8_min_cosine: float,
    int8_smooth_alpha: float,
    int8_weight_type: str,
    int8_embeddings: bool,
    int8_outlier_share: float,
    int8_optional: bool,
    fp16_fusions: str,
    no_fp16_fusions: bool,
    validation_device: str,
    quiet: bool,
) -> None:
    """Export a LUSIFER model folder to a self-contained, validated ONNX folder.

    The folder holds the graph(s), the encoder's tokenizer.json and manifest.json; every graph is checked
    against PyTorch fp32 with ONNX Runtime (CPU) on multilingual texts before the folder is moved into place.
    """
    from lusifer.export.errors import ExportError

    from lusifer.extras import MissingExtraError

    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from lusifer.export.api import export_model

    try:
        manifest = export_model(
            model_dir,
            out_dir,
            dtype=dtype,
            quantize=quantize,
            opset=opset,
            overwrite=overwrite,
            int8_scheme=int8_scheme,
            int8_only=int8_only,
            int8_min_cosine=int8_min_cosine,
            int8_smooth_alpha=int8_smooth_alpha,
            int8_weight_type=int8_weight_type,
            int8_embeddings=int8_embeddings,
            int8_outlier_share=int8_outlier_share,
            int8_required=not int8_optional,
            fp16_fusions="none" if no_fp16_fusions else fp16_fusions,
            validation_device=validation_device,
        )
    except (ExportError, MissingExtraError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    for name, info in manifest.variants.items():
        click.echo(
            f"{name}: {info.file}  min cosine {info.parity['min_cosine']:.6f}  "
            f"max abs diff {info.parity['max_abs_diff']:.3g}"
        )
    dropped = manifest.source.get("int8_only")
    if dropped:
        click.echo(f"fp32: validated (min cosine {dropped['fp32_min_cosine']:.6f}), not kept (--int8-only)")
    skipped = manifest.source.get("int8_quantization", {}).get("skipped")
    if skipped:
        click.echo(f"int8: left out ({skipped})")
    click.echo(f"wrote {out_dir}")
