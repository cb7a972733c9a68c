"""``lusifer-train``: command line for training. Parses options and delegates to library functions."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train LUSIFER: stage 1 alignment, stage 2 representation finetuning, LoRA merge."""


@main.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False), help="JSON or YAML config.")
def stage1(config_file: str) -> None:
    """Stage 1: align the multilingual encoder with the frozen LLM (English data)."""
    raise click.ClickException("stage 1 training is not implemented yet (issue 3)")


@main.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False), help="JSON or YAML config.")
def stage2(config_file: str) -> None:
    """Stage 2: contrastive representation finetuning with LoRA."""
    raise click.ClickException("stage 2 training is not implemented yet (issue 3)")
