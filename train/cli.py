"""``lusifer-train``: command line for training. Parses options and delegates to library functions."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import click

from lusifer.train.config import CONFIG_CLASSES, ConfigError, load_config

_STAGE_HELP = {
    "stage1": "Stage 1: align the multilingual encoder with the frozen LLM (English data).",
    "stage2": "Stage 2: contrastive representation finetuning with LoRA.",
}


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # peft calls a transformers method that transformers 5.2x renamed; the warning is not actionable here
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        from datasets.utils import logging as ds_logging

        ds_logging.disable_progress_bar()
    except ImportError:
        pass


def _load(stage: str, config_file: str | None, overrides: tuple[str, ...], **values):
    try:
        return load_config(stage, config_file, list(overrides), values)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _common_options(func):
    options = [
        click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False),
                     help="JSON or YAML file of config fields (paths relative to the file)."),
        click.option("--output-dir", default=None, help="Override output_dir."),
        click.option("--max-steps", type=int, default=None, help="Override max_steps."),
        click.option("--resume", "resume_from", is_flag=False, flag_value="latest", default=None, metavar="[CHECKPOINT]",
                     help="Continue from the latest checkpoint in output_dir (or from CHECKPOINT)."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override any field (repeatable; dotted keys reach into 'model'; values parse as JSON/YAML)."),
        click.option("-v", "--verbose", is_flag=True, help="Debug logging."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run_stage(stage: str, config_file, output_dir, max_steps, resume_from, overrides, verbose) -> None:
    _setup_logging(verbose)
    config = _load(stage, config_file, overrides, output_dir=output_dir, max_steps=max_steps, resume_from=resume_from)
    from lusifer.train.checkpoint import CheckpointError
    from lusifer.train.data import DataError
    from lusifer.train.loop import TrainingError
    from lusifer.train.merge import MergeError

    if stage == "stage1":
        from lusifer.train.stage1 import train_stage1 as train
    else:
        from lusifer.train.stage2 import train_stage2 as train
    try:
        result = train(config)
    except (DataError, CheckpointError, TrainingError, MergeError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    if os.environ.get("RANK", "0") == "0":  # one summary per launch, not per process
        click.echo(f"{stage} finished at step {result.steps}: final checkpoint {result.final_checkpoint}")
        for name, path in result.outputs.items():
            click.echo(f"{name}: {path}")


# commands defined in other modules of lusifer.train, imported only when used
_LAZY_COMMANDS = {
    "prepare-base": ("lusifer.train.prepare_base", "prepare_base"),
    "prepare-data": ("lusifer.train.prepare_data", "prepare_data_command"),
}


class _TrainGroup(click.Group):
    """A click group that also offers the lazily imported data/model preparation commands."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        import importlib.util

        lazy = [name for name, (module, _) in _LAZY_COMMANDS.items() if importlib.util.find_spec(module) is not None]
        return sorted(set(super().list_commands(ctx)) | set(lazy))

    def get_command(self, ctx: click.Context, name: str):
        if name in _LAZY_COMMANDS and name not in self.commands:
            import importlib

            module, attr = _LAZY_COMMANDS[name]
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError):
                return None
        return super().get_command(ctx, name)


@click.group(cls=_TrainGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train LUSIFER: stage 1 alignment, stage 2 representation finetuning, LoRA merge.

    Multi-GPU: launch the same command with `torchrun --nproc_per_node N -m lusifer.train.cli ...` or
    `accelerate launch --num_processes N -m lusifer.train.cli ...`.
    """


@main.command(help=_STAGE_HELP["stage1"])
@_common_options
def stage1(**kwargs) -> None:
    _run_stage("stage1", **kwargs)


@main.command(help=_STAGE_HELP["stage2"])
@_common_options
def stage2(**kwargs) -> None:
    _run_stage("stage2", **kwargs)


@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the merged model.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, auto or a torch device such as cuda:1.")
@click.option("--no-verify", is_flag=True, help="Skip the merged-vs-unmerged embedding check.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def merge(model_dir: str, out: str, device: str, no_verify: bool, verbose: bool) -> None:
    """Merge LoRA of a finished run (MODEL_DIR = its output_dir) or a checkpoint folder into a standalone
    LusiferModel folder that loads without peft."""
    _setup_logging(verbose)
    from lusifer.train.checkpoint import CheckpointError
    from lusifer.train.merge import MergeError, merge_checkpoint

    try:
        report = merge_checkpoint(model_dir, out, device=device, verify=not no_verify)
    except (MergeError, CheckpointError, ConfigError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    cosine = "not checked" if report.min_cosine is None else f"{report.min_cosine:.6f}"
    click.echo(f"merged {', '.join(report.merged) or 'no LoRA'} from {report.checkpoint} into {report.output} "
               f"(min cosine merged vs unmerged: {cosine})")


@main.command("import-reference")
@click.argument("src_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model folder to write.")
@click.option("--encoder-dir", default=None, type=click.Path(file_okay=False),
              help="Local folder (config.json + tokenizer.json) of the encoder, when the release names an unknown one.")
@click.option("--llm-dir", default=None, type=click.Path(file_okay=False),
              help="Local folder (config.json, tokenizer optional) of the LLM, when the release names an unknown one.")
@click.option("--projection/--no-projection", default=True, show_default=True,
              help="Apply the release's output projection to the pooled vector.")
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True,
              help="Storage dtype (auto: the checkpoint's, bf16 for the release); LoRA is merged in fp32.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def import_reference_command(src_dir, out, encoder_dir, llm_dir, projection, dtype, overwrite, verbose) -> None:
    """Import the authors' released LUSIFER (SRC_DIR: its config.json + model.safetensors) as a model folder
    that lusifer-export and LusiferModel.from_pretrained read."""
    _setup_logging(verbose)
    from lusifer.train.reference_import import ReferenceImportError, import_reference

    try:
        path = import_reference(src_dir, out, encoder_dir=encoder_dir, llm_dir=llm_dir, projection=projection,
                                dtype=dtype, overwrite=overwrite)
    except (ReferenceImportError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"imported {src_dir} into {path}")


@main.command("show-config")
@click.argument("stage", type=click.Choice(sorted(CONFIG_CLASSES)))
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="Config file to validate and resolve (defaults are shown without one).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a field (repeatable).")
def show_config(stage: str, config_file: str | None, overrides: tuple[str, ...]) -> None:
    """Validate a config and print it with every field resolved (YAML)."""
    if config_file is None:
        # show the defaults with placeholders for the required fields
        required = {"output_dir": "runs/" + stage, "train_files": ["data.jsonl"], "model_path": "MODEL_DIR"}
        overrides = tuple(f"{k}={v}" if isinstance(v, str) else f"{k}={v!r}".replace("'", '"')
                          for k, v in required.items()) + overrides
    config = _load(stage, config_file, overrides)
    click.echo(config.to_yaml(), nl=False)


if __name__ == "__main__":
    main()
