"""``lusifer-eval``: evaluate an embedder on the development suite."""

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Evaluate a model on the development suite (not implemented yet: issue 6)."""
    raise click.ClickException("lusifer-eval is not implemented yet (issue 6)")
