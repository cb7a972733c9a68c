"""Prompt templates, as in the LUSIFER reference code.

Queries read ``"{instruction}.\\n{text}"`` and documents ``"{instruction}. Candidate:\\n{text}"``; the
instruction tokens are embedded and take part in the mean. In the ``"lusifer"`` style a text without an
instruction is used as is and a trailing dot of the instruction is stripped; the ``"reference"`` style applies
the template always and keeps the instruction verbatim (the reference code writes ``"."`` and
``". Candidate:"`` even with an empty instruction, and its templates write ``<s>``/``</s>`` as text).
Pure Python (no torch): the runtime uses the same function through the export manifest.
"""

from __future__ import annotations

from typing import Iterable

from lusifer.onnx_interface import PROMPT_STYLES

KINDS = ("query", "document")

DEFAULT_QUERY_TEMPLATE = "{instruction}.\n{text}"
DEFAULT_DOCUMENT_TEMPLATE = "{instruction}. Candidate:\n{text}"
# the released LUSIFER's text format: special tokens written as text (tokenised without added specials)
REFERENCE_QUERY_TEMPLATE = "<s>{instruction}.\n{text}</s>"
REFERENCE_DOCUMENT_TEMPLATE = "<s>{instruction}. Candidate:\n{text}</s>"


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is a known text kind, else raise ``ValueError``."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not supported; expected one of {', '.join(KINDS)}")
    return kind


def check_style(style: str) -> str:
    """Return ``style`` if it is a known prompt style, else raise ``ValueError``."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style={style!r} is not supported; expected one of {', '.join(PROMPT_STYLES)}")
    return style


def format_text(text: str, template: str, instruction: str | None, style: str = "lusifer") -> str:
    """Apply a template to one text.

    Args:
        text: The raw text.
        template: A template with ``{instruction}`` and ``{text}`` fields.
        instruction: The task instruction; ``None`` or empty means "none".
        style: ``"lusifer"``: without an instruction the text is used unchanged, and a trailing dot of the
            instruction is stripped. ``"reference"``: the template is always applied (``None`` becomes ``""``)
            and the instruction is kept verbatim.
    """
    if check_style(style) == "reference":
        return template.format(instruction=instruction or "", text=text)
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
    style: str = "lusifer",
) -> list[str]:
    """Format a batch of texts of one kind (``"query"`` or ``"document"``) in prompt ``style``."""
    template = query_template if check_kind(kind) == "query" else document_template
    check_style(style)
    return [format_text(t, template, instruction, style) for t in texts]
