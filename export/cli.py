"""``lusifer-export``: command line for ONNX export. Parses options and delegates to library functions."""

from __future__ import annotations

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Export folder to write.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--quantize", type=click.Choice(["int8"]), default=None, help="Also write a dynamic INT8 graph (CPU).")
def main(model_dir: str, out_dir: str, dtype: str, quantize: str | None) -> None:
    """Export a LUSIFER model folder to a self-contained ONNX folder."""
    raise click.ClickException("export is not implemented yet (issue 4)")
