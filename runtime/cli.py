"""``lusifer-embed``: command line for batch embedding. Parses options and delegates to library functions."""

from __future__ import annotations

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("corpus")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output .npy file.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), help="Export folder.")
def main(corpus: str, out_path: str, model_dir: str | None) -> None:
    """Embed the text column of a parquet corpus into a .npy file."""
    raise click.ClickException("lusifer-embed is not implemented yet (issue 5)")
