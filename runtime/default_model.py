"""The default export folder used when ``--model`` is omitted (one-function hook)."""

from __future__ import annotations

from pathlib import Path

from lusifer.runtime.errors import NoDefaultModelError


def resolve_default_model() -> Path:
    """Return the folder of the default exported model.

    No default model is published yet, so this always raises; a later release will resolve (and verify) a
    packaged or cached export here.

    Raises:
        NoDefaultModelError: always, telling the user to pass ``--model EXPORT_DIR``.
    """
    raise NoDefaultModelError(
        "no default model is available yet: pass --model EXPORT_DIR (a folder written by lusifer-export)"
    )
