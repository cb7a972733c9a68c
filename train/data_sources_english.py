"""Parsers turning English registry data (BIG-bench tasks, Brown corpus, WordNet, SOTU, Moby Dick, STS-B
train) into training rows. Pure functions on already-read text, so tests can feed them small inputs.

Row shapes:
    stage-1 text: {"text": str}
    stage-1 QA:   {"query": str, "answer": str}
    stage-2 pair: {"query": str, "positive": str, "negatives": [str, ...], "instruction": str}
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable

logger = logging.getLogger(__name__)

INSTRUCTIONS = {
    "vitaminc": "Given a claim, retrieve evidence that supports it",
    "disfl_qa": "Given a question, which may contain self-corrections, retrieve the passage that answers it",
    "knowledge_conflicts": "Given a question, retrieve a Wikipedia passage that answers it",
    "quoref": "Given a question about people in a story, retrieve the passage that answers it",
    "drop": "Given a question that needs counting or comparison, retrieve the passage that answers it",
    "cosmosqa": "Given a commonsense question about a situation, retrieve the passage describing the situation",
    "ropes": "Given a question about a situation, retrieve the story it refers to",
    "qasc": "Given a science question, retrieve the fact that answers it",
    "xsum": "Given a one-sentence news summary, retrieve the news article it summarizes",
    "paraphrase": "Given a sentence, retrieve a sentence that says the same thing in simpler words",
    "stsb": "Retrieve a sentence that is semantically similar to the given sentence",
}


class RecordError(ValueError):
    """A source record does not have the expected shape."""


@dataclass
class ParseStats:
    """Counts of rows kept and records rejected, per source, for the data manifest."""

    kept: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"kept": dict(sorted(self.kept.items())), "rejected": dict(sorted(self.rejected.items()))}


# ---- text cleaning ---------------------------------------------------------------------------------------

_SPACE_RE = re.compile(r"\s+")
_DETOK = [
    (re.compile(r"``\s*"), '"'),
    (re.compile(r"\s*''"), '"'),
    (re.compile(r"\s+([.,;:!?%)\]}])"), r"\1"),
    (re.compile(r"([(\[{$])\s+"), r"\1"),
    (re.compile(r"\s+'\s*(s|re|ve|ll|d|m|t)\b", re.I), r"'\1"),
    (re.compile(r"\s+n't\b"), "n't"),
    (re.compile(r"(\d)\s+([.,])\s+(\d)"), r"\1\2\3"),
]


def clean_text(text: str) -> str:
    """Collapse whitespace, drop replacement characters and undo tokenizer spacing (``word ,`` -> ``word,``)."""
    if not isinstance(text, str):
        raise RecordError(f"expected text, got {type(text).__name__}")
    text = text.replace("\ufffd", " ").replace("\u00a0", " ")
    text = _SPACE_RE.sub(" ", text).strip()
    for pattern, repl in _DETOK:
        text = pattern.sub(repl, text)
    return _SPACE_RE.sub(" ", text).strip()


def normalize_for_match(text: str) -> str:
    """Lowercase word tokens joined by single spaces: the form used to match training text against eval text."""
    return " ".join(re.findall(r"\w+", text.lower()))


_SENT_SPLIT_RE = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z])")


def split_sentences(text: str) -> list[str]:
    """A simple sentence splitter for edited English prose."""
    return [s.strip() for s in _SENT_SPLIT_RE.split(text) if s.strip()]


def chunk_sentences(sentences: list[str], max_chars: int = 400, max_sentences: int = 3) -> list[str]:
    """Group consecutive sentences into passages of at most ``max_sentences`` sentences / ``max_chars``."""
    out, cur = [], []
    for sent in sentences:
        if cur and (len(cur) >= max_sentences or sum(len(s) + 1 for s in cur) + len(sent) > max_chars):
            out.append(" ".join(cur))
            cur = []
        cur.append(sent)
    if cur:
        out.append(" ".join(cur))
    return out


# ---- BIG-bench -------------------------------------------------------------------------------------------


def bigbench_examples(raw: bytes | str, task: str) -> list[dict]:
    """The ``examples`` list of a BIG-bench ``task.json``."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RecordError(f"BIG-bench task {task!r}: task.json is not valid JSON: {exc}") from exc
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list):
        raise RecordError(f"BIG-bench task {task!r}: task.json has no 'examples' list")
    return examples


def _label(example: dict) -> str:
    scores = example.get("target_scores")
    if not isinstance(scores, dict):
        raise RecordError("record has no target_scores object")
    winners = [k for k, v in scores.items() if v == 1]
    if len(winners) != 1:
        raise RecordError(f"record has {len(winners)} labels with score 1, expected exactly one: {scores}")
    return winners[0]


def parse_vitaminc(example: dict) -> tuple[str, str, str]:
    """``(claim, evidence, label)`` from a VitaminC record ``"Title: evidence\\nClaim: claim"``.

    The evidence keeps its page title (``"Title: sentence"``), as in the source. Label is True/False/Neither.
    """
    text = example.get("input")
    if not isinstance(text, str) or "\nClaim: " not in text:
        raise RecordError(f"VitaminC record input lacks '\\nClaim: ': {str(text)[:80]!r}")
    evidence, claim = text.rsplit("\nClaim: ", 1)
    label = _label(example)
    if label not in ("True", "False", "Neither"):
        raise RecordError(f"VitaminC label {label!r} is not True/False/Neither")
    evidence, claim = clean_text(evidence), clean_text(claim)
    if not evidence or not claim:
        raise RecordError("VitaminC record has an empty claim or evidence")
    return claim, evidence, label


def vitaminc_pairs(examples: Iterable[dict], stats: ParseStats | None = None, max_negatives: int = 3) -> list[dict]:
    """Claim -> supporting evidence, with the same claim's refuting/insufficient evidence as hard negatives.

    VitaminC pairs each claim with contrastive revisions of one Wikipedia sentence; the ``False`` and
    ``Neither`` evidences of the claim are near-duplicates of the ``True`` one that do not support it.
    Claims without a ``True`` evidence give no pair.
    """
    stats = stats if stats is not None else ParseStats()
    families: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    order: list[str] = []
    for ex in examples:
        try:
            claim, evidence, label = parse_vitaminc(ex)
        except RecordError:
            stats.rejected["vitaminc"] += 1
            continue
        if claim not in families:
            order.append(claim)
        if evidence not in families[claim][label]:
            families[claim][label].append(evidence)
    pairs = []
    for claim in order:
        fam = families[claim]
        negatives = [e for lab in ("False", "Neither") for e in fam.get(lab, [])]
        for positive in fam.get("True", []):
            negs = [n for n in negatives if n != positive][:max_negatives]
            pairs.append(_pair(claim, positive, negs, "vitaminc"))
        if not fam.get("True"):
            stats.rejected["vitaminc_no_true_evidence"] += 1
    stats.kept["vitaminc"] += len(pairs)
    return pairs


def _pair(query: str, positive: str, negatives: list[str], task: str) -> dict:
    return {"query": query, "positive": positive, "negatives": list(negatives), "instruction": INSTRUCTIONS[task]}


def parse_disfl_qa(example: dict) -> tuple[str, str, str]:
    """``(question, passage, answer)`` from a Disfl-QA record ``"question \\ncontext: passage"``."""
    text = example.get("input")
    if not isinstance(text, str) or "\ncontext: " not in text:
        raise RecordError(f"Disfl-QA record input lacks '\\ncontext: ': {str(text)[:80]!r}")
    question, passage = text.split("\ncontext: ", 1)
    answer = example.get("target")
    if isinstance(answer, list):
        answer = answer[0] if answer else ""
    question, passage, answer = clean_text(question), clean_text(passage), clean_text(answer or "")
    if not question or not passage:
        raise RecordError("Disfl-QA record has an empty question or passage")
    return question, passage, answer


_KC_RE = re.compile(r"^\s*Question:\s*(?P<q>.*?)\s*\nContext:\s*(?P<c>.*)$", re.S)


def parse_knowledge_conflict(example: dict) -> tuple[str, str, str]:
    """``(question, passage, answer)`` from a contextual_parametric_knowledge_conflicts record."""
    text = example.get("input")
    match = _KC_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise RecordError(f"knowledge-conflict record is not 'Question: ...\\nContext: ...': {str(text)[:80]!r}")
    answer = example.get("target")
    question, passage = clean_text(match["q"]), clean_text(match["c"])
    if not question or not passage or not isinstance(answer, str):
        raise RecordError("knowledge-conflict record has an empty question/passage or no string target")
    return question, passage, clean_text(answer)


_NI_LABEL_RE = re.compile(r"^\s*(Passage|Context|Background Paragraph|Fact)\s*:\s*", re.S)


def parse_natural_instructions_qa(example: dict) -> tuple[str, str, str]:
    """``(question, passage, answer)`` from a natural_instructions QA record.

    Inputs look like ``"Passage: ...\\nQuestion: ...[\\nAnswer type: ...]"`` (also ``Context:``, ``Fact:``, and
    ``Background Paragraph: ...\\nStory: ...`` where the story is the passage the question is about).
    """
    text = example.get("input")
    if not isinstance(text, str) or "\nQuestion:" not in text:
        raise RecordError(f"natural_instructions record lacks '\\nQuestion:': {str(text)[:80]!r}")
    body, question = text.rsplit("\nQuestion:", 1)
    question = question.split("\nAnswer type:", 1)[0]
    if "\nStory:" in body:
        body = body.rsplit("\nStory:", 1)[1]
    body = _NI_LABEL_RE.sub("", body, count=1)
    target = example.get("target")
    answer = target[0] if isinstance(target, list) and target else target
    question, passage = clean_text(question), clean_text(body)
    if not question or not passage or not isinstance(answer, str) or not answer.strip():
        raise RecordError("natural_instructions record has an empty question, passage or answer")
    return question, passage, clean_text(answer)


def parse_summary(example: dict) -> tuple[str, str]:
    """``(document, summary)`` from a GEM XSum record."""
    doc, target = example.get("input"), example.get("target")
    if isinstance(target, list):
        target = target[0] if target else None
    if not isinstance(doc, str) or not isinstance(target, str):
        raise RecordError("XSum record needs a string input and target")
    doc, target = clean_text(doc), clean_text(target)
    if not doc or not target:
        raise RecordError("XSum record has an empty document or summary")
    return doc, target


def parse_paraphrases(example: dict) -> tuple[str, list[str]]:
    """``(sentence, [simplifications...])`` from a GEM ASSET/TURK record."""
    src, targets = example.get("input"), example.get("target")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(src, str) or not isinstance(targets, list):
        raise RecordError("paraphrase record needs a string input and a list of targets")
    src = clean_text(src)
    refs = []
    for t in targets:
        if isinstance(t, str):
            t = clean_text(t)
            if t and t != src and t not in refs:
                refs.append(t)
    if not src or not refs:
        raise RecordError("paraphrase record has no usable target")
    return src, refs


# ---- hard-negative mining (lexical) ---------------------------------------------------------------------

_STOP = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its this that "
    "these those he she they them his her their we our you your i me my not no do does did have has had which who "
    "whom what when where why how than then there here also into over under about after before between more most "
    "such can could would should will shall may might must one two".split()
)


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2 and w not in _STOP}


def mine_lexical_negatives(
    queries: list[str], positives: list[str], k: int = 3, max_df: float = 0.01, seed_words: int = 8
) -> list[list[str]]:
    """For each query, the ``k`` candidate documents sharing the most rare words with it (IDF-weighted).

    The pool is the set of distinct positives; a query's own positive (and any text equal to it) is never
    returned. This gives topically close but wrong passages, in the spirit of BM25-mined hard negatives.

    Args:
        queries: Query texts.
        positives: The positive document of each query (same length).
        k: Negatives per query.
        max_df: Words in more than this fraction of documents are ignored.
        seed_words: Only the query's rarest ``seed_words`` words are looked up.
    """
    if len(queries) != len(positives):
        raise ValueError(f"{len(queries)} queries but {len(positives)} positives")
    docs = list(dict.fromkeys(positives))
    doc_index = {d: i for i, d in enumerate(docs)}
    postings: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(docs):
        for w in _content_words(d):
            postings[w].append(i)
    n = max(len(docs), 1)
    limit = max(2, int(max_df * n))
    idf = {w: math.log(n / len(p)) for w, p in postings.items()}
    out = []
    from tqdm.auto import tqdm

    for q, pos in tqdm(list(zip(queries, positives)), desc="mining negatives", unit="query", mininterval=5,
                       disable=len(queries) < 2000):  # fmt: skip
        own = doc_index[pos]
        words = [w for w in _content_words(q) if w in postings and len(postings[w]) <= limit]
        words = sorted(words, key=lambda w: (-idf[w], w))[:seed_words]
        scores: dict[int, float] = defaultdict(float)
        for w in words:
            for d in postings[w]:
                if d != own:
                    scores[d] += idf[w]
        best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        out.append([docs[d] for d, _ in best])
    return out


def qa_pairs_with_mined_negatives(triples: list[tuple[str, str, str]], task: str, k: int = 3) -> list[dict]:
    """Question -> passage pairs from ``(question, passage, answer)`` triples, hard negatives mined lexically."""
    seen, unique = set(), []
    for q, p, _a in triples:
        if (q, p) not in seen:
            seen.add((q, p))
            unique.append((q, p))
    negatives = mine_lexical_negatives([q for q, _ in unique], [p for _, p in unique], k=k)
    return [_pair(q, p, n, task) for (q, p), n in zip(unique, negatives)]


# ---- other English sources -------------------------------------------------------------------------------

_BROWN_TOKEN_RE = re.compile(r"(\S+)/[^\s/]+")


def brown_sentences(raw: str) -> list[str]:
    """Sentences of one Brown corpus file (``word/tag`` tokens; one sentence per indented line)."""
    out = []
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        tokens = _BROWN_TOKEN_RE.findall(line)
        if len(tokens) < 5:
            continue
        out.append(clean_text(" ".join(tokens)))
    return out


def wordnet_entries(data_file: str, pos_name: str) -> list[dict]:
    """Entries of a WordNet ``data.<pos>`` file: ``{"words", "pos", "definition", "examples"}``.

    Lines starting with two spaces are the license header. The gloss after ``|`` holds the definition and
    quoted example sentences separated by ``;``.
    """
    out = []
    for line in data_file.splitlines():
        if not line or line.startswith("  ") or "|" not in line:
            continue
        head, gloss = line.split("|", 1)
        fields = head.split()
        try:
            count = int(fields[3], 16)
            words = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
        except (IndexError, ValueError):
            continue
        words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]
        examples = [clean_text(m) for m in re.findall(r'"([^"]+)"', gloss)]
        definition = clean_text(re.sub(r'"[^"]*"', "", gloss).strip(" ;"))
        definition = definition.rstrip(" ;")
        if definition:
            out.append({"words": words, "pos": pos_name, "definition": definition, "examples": examples})
    return out


def stsb_rows(raw: str, source: str) -> list[tuple[str, str, float]]:
    """``(sentence1, sentence2, score)`` rows of an STS-B multi-MT CSV (no header, excel dialect)."""
    rows = []
    for i, rec in enumerate(csv.reader(io.StringIO(raw))):
        if not rec:
            continue
        if len(rec) != 3:
            raise RecordError(f"{source} line {i + 1}: expected 3 fields (sentence1, sentence2, score), got {len(rec)}")
        try:
            score = float(rec[2])
        except ValueError as exc:
            raise RecordError(f"{source} line {i + 1}: score {rec[2]!r} is not a number") from exc
        if not 0.0 <= score <= 5.0:
            raise RecordError(f"{source} line {i + 1}: score {score} is outside 0..5")
        rows.append((rec[0].strip(), rec[1].strip(), score))
    return rows


def stsb_pairs(rows: list[tuple[str, str, float]], min_score: float = 4.0) -> list[dict]:
    """High-similarity STS-B pairs as positives, with the low-scored partners of the same sentence as negatives."""
    low: dict[str, list[str]] = defaultdict(list)
    for a, b, s in rows:
        if s <= 1.0:
            low[a].append(b)
            low[b].append(a)
    pairs = []
    for a, b, s in rows:
        if s >= min_score and a != b:
            pairs.append(_pair(a, b, [n for n in low.get(a, []) if n != b][:3], "stsb"))
    return pairs
