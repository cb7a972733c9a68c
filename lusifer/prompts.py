"""Prompt templates, as in the LUSIFER reference code.

Queries read ``"{instruction}.\\n{text}"`` and documents ``"{instruction}. Candidate:\\n{text}"``; the
instruction tokens are embedded and take part in the mean. Without an instruction the text is used as is.
Pure Python (no torch): the runtime uses the same function through the export manifest.
"""

from __future__ import annotations

from typing import Iterable

KINDS = ("query", "document")

DEFAULT_QUERY_TEMPLATE = "{instruction}.\n{text}"
DEFAULT_DOCUMENT_TEMPLATE = "{instruction}. Candidate:\n{text}"


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is a known text kind, else raise ``ValueError``."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not supported; expected one of {', '.join(KINDS)}")
    return kind


def format_text(text: str, template: str, instruction: str | None) -> str:
    """Apply a template to one text.

    Args:
        text: The raw text.
        template: A template with ``{instruction}`` and ``{text}`` fields.
        instruction: The task instruction; ``None`` or empty means the text is used unchanged.
    """
    if not instruction:
        return text
    instruction = instruction.rstrip().rstrip(".")
    return template.format(instruction=instruction, text=text)


def format_texts(
    texts: Iterable[str],
    kind: str,
    instruction: str | None,
    query_template: str = DEFAULT_QUERY_TEMPLATE,
    document_template: str = DEFAULT_DOCUMENT_TEMPLATE,
) -> list[str]:
    """Format a batch of texts of one kind (``"query"`` or ``"document"``)."""
    template = query_template if check_kind(kind) == "query" else document_template
    return [format_text(t, template, instruction) for t in texts]
