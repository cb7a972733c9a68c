"""Length control: the ``--max-length`` check, and the tally of rows cut at the max length.

Rows longer than the max length are truncated (right side) unless ``--chunk-tokens`` splits them into
windows (:mod:`lusifer.runtime.chunking`). Truncated rows are counted, the first few are listed by their row
position in the corpus (and by id when ids are given), and a warning is logged once per run when more than
1% of the rows seen so far were cut.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from lusifer.runtime.errors import OptionError

logger = logging.getLogger(__name__)

TRUNCATED_LISTED = 10  # truncated rows listed (by position and id) in the summary and sidecar
TRUNCATED_WARN_FRACTION = 0.01  # warn once when more than this fraction of the rows seen were cut


def resolve_max_length(requested: int | None, export_limit: int) -> int:
    """The max length of a job: ``requested`` (from 1 to the export's limit) or the export's limit.

    Args:
        requested: ``--max-length``; ``None`` for the export's limit.
        export_limit: The export manifest's ``max_length`` (the longest sequence it was exported for).

    Raises:
        OptionError: ``requested`` is not an integer from 1 to ``export_limit``.
    """
    if requested is None:
        return export_limit
    if isinstance(requested, bool) or not isinstance(requested, (int, np.integer)):
        raise OptionError(f"max_length={requested!r}: expected an integer from 1 to {export_limit}")
    if not 1 <= requested <= export_limit:
        raise OptionError(
            f"max_length={requested} is outside 1..{export_limit}: this export handles at most {export_limit} "
            "tokens per text (its manifest's max_length); use --chunk-tokens to embed longer texts whole"
        )
    return int(requested)


@dataclass
class TruncationTally:
    """Rows cut at the max length: how many, and the first few by corpus position (and id, when given).

    Chunks are added in corpus order, so the first rows listed are the first truncated rows of the corpus.
    A resumed job starts from the counts stored by the earlier run (:meth:`from_progress`).

    Attributes:
        max_length: The job's max length (for the warning).
        count: Truncated rows so far.
        rows: Positions (row index in the corpus) of the first :data:`TRUNCATED_LISTED` truncated rows.
        ids: Their ids, when the job has an id column (else empty).
    """

    max_length: int
    count: int = 0
    rows: list[int] = field(default_factory=list)
    ids: list[Any] = field(default_factory=list)
    warned: bool = False

    @classmethod
    def from_progress(cls, progress: dict, max_length: int) -> TruncationTally:
        """The tally stored in a sidecar's ``progress`` (``truncated``, ``truncated_rows``, ``truncated_ids``)."""
        return cls(max_length=max_length, count=int(progress.get("truncated", 0)),
                   rows=list(progress.get("truncated_rows", [])), ids=list(progress.get("truncated_ids", [])))

    def add(self, first_row: int, positions: np.ndarray, ids: Sequence | None = None) -> int:
        """Record the truncated rows of a chunk.

        Args:
            first_row: Corpus position of the chunk's first row.
            positions: Positions of the truncated rows within the chunk (ascending).
            ids: The chunk's id column (one per chunk row), if the job has one.

        Returns:
            How many rows of this chunk were truncated.
        """
        positions = np.asarray(positions, dtype=np.int64)
        room = TRUNCATED_LISTED - len(self.rows)
        if room > 0:
            listed = positions[:room]
            self.rows.extend(int(first_row + p) for p in listed)
            if ids is not None:
                self.ids.extend(_plain(ids[int(p)]) for p in listed)
        self.count += len(positions)
        return len(positions)

    def maybe_warn(self, rows_seen: int) -> bool:
        """Log one warning per run when more than 1% of the ``rows_seen`` so far were truncated."""
        if self.warned or not rows_seen or self.count <= TRUNCATED_WARN_FRACTION * rows_seen:
            return False
        self.warned = True
        logger.warning(
            "%d of the %d rows so far (%.1f%%) are longer than the max length of %d tokens and were cut: their "
            "ends are not embedded (%s). Pass --chunk-tokens N to embed long texts whole, as windows.",
            self.count, rows_seen, 100.0 * self.count / rows_seen, self.max_length, self.describe_rows(5),
        )
        return True

    def describe_rows(self, limit: int = TRUNCATED_LISTED) -> str:
        """``"rows 3, 17"`` or, with ids, ``"ids 'a' (row 3), 'b' (row 17)"``; ``"..."`` when more were cut."""
        return describe_rows(self.count, self.rows, self.ids, limit)

    def progress_fields(self) -> dict:
        """The sidecar ``progress`` fields of the listing (set, not added, at each commit)."""
        fields: dict = {"truncated_rows": list(self.rows)}
        if self.ids:
            fields["truncated_ids"] = list(self.ids)
        return fields


def describe_rows(count: int, rows: Sequence[int], ids: Sequence | None = None, limit: int = TRUNCATED_LISTED) -> str:
    """Text listing the first truncated rows (see :meth:`TruncationTally.describe_rows`)."""
    shown = list(rows)[:limit]
    more = ", ..." if count > len(shown) else ""
    if ids is not None and len(ids) >= len(shown) > 0:
        return "ids " + ", ".join(f"{ids[i]!r} (row {r})" for i, r in enumerate(shown)) + more
    return "rows " + ", ".join(map(str, shown)) + more


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar (numpy and pyarrow scalars become Python ones)."""
    if hasattr(value, "as_py"):
        return value.as_py()
    if isinstance(value, np.generic):
        return value.item()
    return value
