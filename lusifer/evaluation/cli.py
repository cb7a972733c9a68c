"""``lusifer-eval``: evaluate embedders on the development suite, or compare saved results.

``lusifer-eval MODEL... --suite DIR --out results.json`` (the ``run`` command is the default) and
``lusifer-eval compare results/*.json --out table.md --chart chart.png``. Parses options and delegates to
:mod:`lusifer.evaluation.pipeline`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from lusifer.evaluation.embedders import MODEL_KINDS
from lusifer.evaluation.runner import DEFAULT_INSTRUCTIONS

CONTEXT = {"help_option_names": ["-h", "--help"]}


class DefaultCommandGroup(click.Group):
    """A group whose ``run`` command is used when the first argument names no command."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in self.get_help_option_names(ctx):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def _user_errors() -> tuple[type[BaseException], ...]:
    from lusifer.extras import MissingExtraError

    errors: list[type[BaseException]] = [ValueError, MissingExtraError, OSError]
    try:
        from lusifer.runtime.errors import EmbedError

        errors.append(EmbedError)
    except ImportError:
        pass
    return tuple(errors)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@click.group(cls=DefaultCommandGroup, context_settings=CONTEXT, no_args_is_help=True)
def main() -> None:
    """Evaluate embedders on bitext mining and STS (MTEB metrics), or compare saved results.

    \b
    lusifer-eval [run] MODEL... --suite DIR --out results.json [--markdown table.md] [--chart chart.png]
    lusifer-eval compare RESULTS.json... --out table.md [--chart chart.png]
    """


@main.command("run", context_settings=CONTEXT)
@click.argument("models", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--suite", required=True, type=click.Path(), help="Suite folder holding suite.json.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Results JSON to write.")
@click.option("--name", "names", multiple=True, help="Row label, once per model in order (default: folder name).")
@click.option("--kind-of-model", "kind", default="auto", show_default=True,
              type=click.Choice(("auto", *MODEL_KINDS)),
              help="export: ONNX export folder; lusifer: LusiferModel folder; encoder: plain HF encoder "
                   "(mean pooling). auto recognises the folder.")
@click.option("--bitext-instruction", default=DEFAULT_INSTRUCTIONS["bitext"], show_default=True,
              help="Instruction for bitext tasks (both sides embedded as queries); '' for none.")
@click.option("--sts-instruction", default=DEFAULT_INSTRUCTIONS["sts"], show_default=True,
              help="Instruction for STS tasks (both sides embedded as queries); '' for none.")
@click.option("--encoder-prefix", default="", help="Prefix for every text of an encoder-alone model, e.g. 'query: ' for E5.")
@click.option("--variant", type=click.Choice(("fp32", "fp16", "int8")), default=None,
              help="ONNX variant of export folders (default: the runtime's choice).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Texts per forward pass.")
@click.option("--limit", type=click.IntRange(min=2), default=None, help="Only the first N rows of each task (quick runs).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N (no silent fallback).")
@click.option("--markdown", type=click.Path(dir_okay=False), default=None,
              help="Markdown table to write [default: OUT with .md].")
@click.option("--chart", type=click.Path(dir_okay=False), default=None, help="PNG chart to write [default: OUT with .png].")
@click.option("--save-vectors", type=click.Path(file_okay=False), default=None,
              help="Also save each task's vectors (both sides, float32) to DIR/<row label>/<task>.npz.")
@click.option("--no-cache", is_flag=True,
              help="Embed every task's texts afresh (default: a text repeated across tasks is embedded once per run).")
@click.option("--resume", is_flag=True, help="Continue an interrupted --out: keep its finished runs.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress per task.")
def run_command(models, suite, out, names, kind, bitext_instruction, sts_instruction, encoder_prefix, variant,
                batch_size, limit, device, markdown, chart, save_vectors, no_cache, resume, overwrite,
                verbose) -> None:
    """Evaluate one or more model folders on a suite; print per-language tables and write results JSON."""
    _setup_logging(verbose)
    if not verbose:  # hide transformers' weight-loading bars (read when transformers is first imported)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from tqdm.auto import tqdm

    from lusifer.evaluation.pipeline import EvalOptions, evaluate_models

    try:
        options = EvalOptions(
            suite=suite, out=out, kind=kind,
            instructions={"bitext": bitext_instruction, "sts": sts_instruction},
            batch_size=batch_size, limit=limit, device=device, encoder_prefix=encoder_prefix, variant=variant,
            markdown=markdown or str(Path(out).with_suffix(".md")), chart=chart or str(Path(out).with_suffix(".png")),
            resume=resume, overwrite=overwrite, save_vectors=save_vectors, cache=not no_cache,
        )
        evaluate_models(list(models), options, names=list(names), echo=click.echo,
                        progress=lambda tasks: tqdm(tasks, desc="tasks", unit="task", leave=False))
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"results: {out}  table: {options.markdown}  chart: {options.chart}")


@main.command("compare", context_settings=CONTEXT)
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Markdown table to write (it is printed either way).")
@click.option("--chart", type=click.Path(dir_okay=False), default=None, help="PNG chart to write.")
@click.option("--json", "merged_json", type=click.Path(dir_okay=False), default=None,
              help="Also write all runs as one results JSON.")
@click.option("--allow-different-suites", is_flag=True,
              help="Merge runs made on different suites or row limits (figures then are not comparable).")
def compare_command(results, out, chart, merged_json, allow_different_suites) -> None:
    """Merge results JSON files into one comparison table (and chart); one row per run, in order."""
    _setup_logging(False)
    from lusifer.evaluation.pipeline import compare_results

    try:
        _, text = compare_results(list(results), markdown=out, chart=chart, merged_json=merged_json,
                                  allow_different_suites=allow_different_suites)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(text, nl=False)


if __name__ == "__main__":
    main()
