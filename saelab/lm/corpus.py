"""Text corpora: the Python standard library (always present) or the user's own text.

The default corpus is the source of the running interpreter's standard library: code,
docstrings and comments that exist wherever Python does, so the embedded model can be
pretrained and its activations collected fully offline. Nothing is copied into the repo;
files are read at run time.

The train/validation split is decided by a hash of a stable key, so it is the same on every
machine and run. The unit is the DOCUMENT (a file, a JSONL line, a dataset row), except that
a document longer than ``chunk_chars`` is first cut into chunks at paragraph boundaries, and
each chunk is assigned by a hash of (document key, chunk index): a folder of two long books
still has a validation split. Chunks of one document that fall in the same split are joined
back in order, so text is only cut where a held-out chunk was taken out. The Python standard
library is split by whole file (``chunk_chars`` resolves to 0 for it): the embedded model was
pretrained on its train files, and its held-out numbers are measured on the others.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import sysconfig
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from saelab.fileio import unreadable_files, unreadable_reason

STDLIB = "python-stdlib"
DEFAULT_CHUNK_CHARS = 16_384  # ~4k tokens of English: 50 chunks per 800 kB of text
HF_PREFIX = "hf:"
SPLITS = ("train", "validation")

# Folders of the stdlib that are not "the standard library's source": the interpreter's
# own regression tests (huge, repetitive, and some contain deliberately broken text),
# third-party packages installed next to it, and build-configuration leftovers.
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


@dataclass
class CorpusConfig:
    """Where the text comes from and how it is split."""

    source: str = STDLIB
    """"python-stdlib", a local .txt/.jsonl file or folder of them, or "hf:<dataset name>"."""
    text_field: str = "text"
    """Field holding the text in .jsonl lines and Hugging Face dataset rows."""
    hf_config: str | None = None
    """Hugging Face dataset configuration name (e.g. "wikitext-103-raw-v1")."""
    hf_split: str = "train"
    """Hugging Face split that is then divided into our train/validation by row hash."""
    hf_revision: str | None = None
    val_fraction: float = 0.02
    """Fraction of documents (or chunks of long ones) held out for validation, by hash."""
    chunk_chars: int | None = None
    """Documents longer than this many characters are cut into chunks of about this size at
    paragraph boundaries before the split. None: 16384 for your own text, 0 (never cut) for
    python-stdlib; 0 splits by whole document."""

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"corpus.val_fraction={self.val_fraction}: must be in (0, 1)")
        if self.chunk_chars is not None and self.chunk_chars < 0:
            raise ValueError(
                f"corpus.chunk_chars={self.chunk_chars}: must be >= 0 (0: never cut documents)"
            )

    @property
    def effective_chunk_chars(self) -> int:
        if self.chunk_chars is not None:
            return self.chunk_chars
        return 0 if self.source == STDLIB else DEFAULT_CHUNK_CHARS


def as_config(cfg: CorpusConfig | Mapping[str, Any] | str | None) -> CorpusConfig:
    """Accept a CorpusConfig, a dict/DictConfig with its fields, a bare source string or None."""
    if cfg is None:
        return CorpusConfig()
    if isinstance(cfg, CorpusConfig):
        return cfg
    if isinstance(cfg, str):
        return CorpusConfig(source=cfg)
    known = {f.name for f in fields(CorpusConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown corpus keys {unknown}; allowed: {sorted(known)}")
    return CorpusConfig(**{k: cfg[k] for k in cfg})


def in_validation(key: str, val_fraction: float) -> bool:
    """Deterministic, machine-independent split decision for one document key."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return h / 2.0**64 < val_fraction


# A paragraph ends after a blank line: a zero-width cut point before the next non-blank text.
_PARAGRAPH_END = re.compile(r"(?<=\n\n)(?=[^\n])")


def _pieces(text: str, size: int) -> Iterator[str]:
    """Paragraphs; one longer than ``size`` is cut at line ends, a line longer than ``size``
    every ``size`` characters. Their concatenation is ``text``."""
    for paragraph in _PARAGRAPH_END.split(text):
        if len(paragraph) <= size:
            yield paragraph
            continue
        for line in paragraph.splitlines(keepends=True):
            while len(line) > size:
                yield line[:size]
                line = line[size:]
            yield line


def split_chunks(text: str, size: int) -> list[str]:
    """``text`` cut into chunks of about ``size`` characters (at most ``size``, unless a single
    paragraph piece fills one) at paragraph boundaries; ``"".join`` gives ``text`` back.
    ``size`` 0, or a text no longer than ``size``, gives one chunk."""
    if size <= 0 or len(text) <= size:
        return [text]
    chunks, current = [], ""
    for piece in _pieces(text, size):
        if current and len(current) + len(piece) > size:
            chunks.append(current)
            current = ""
        current += piece
    if current:
        chunks.append(current)
    return chunks


def chunk_key(key: str, index: int, n_chunks: int) -> str:
    """The split key of chunk ``index``: the document's own key when it is not cut (so short
    documents split exactly as whole documents do), else ``<key>#<index>``."""
    return key if n_chunks == 1 else f"{key}#{index}"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[tuple[str, Path]]:
    """(relative posix path, path) of the stdlib's .py files, tests excluded, sorted."""
    root = stdlib_root()
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        dirs = rel.parts[:-1]
        if any(d in _EXCLUDED_DIRS or d.startswith("config-") for d in dirs):
            continue
        if rel.name.startswith("_sysconfigdata"):  # build-machine paths, not source
            continue
        out.append((rel.as_posix(), path))
    return sorted(out)


def _local_files(root: Path) -> list[tuple[str, Path]]:
    if root.is_symlink() and not root.exists():
        raise FileNotFoundError(
            f"corpus.source={str(root)!r} is {unreadable_reason(root)}; point it at the text "
            "itself (is the disk it is on mounted?)"
        )
    if not root.exists():
        raise FileNotFoundError(
            f"corpus.source={str(root)!r} does not exist: give an existing .txt/.jsonl file or "
            f"folder, '{STDLIB}', or '{HF_PREFIX}<dataset name>'"
        )
    if root.is_file():
        return [(root.name, root)]
    files = [p for p in root.rglob("*") if p.suffix in (".txt", ".jsonl") and not p.is_dir()]
    _check_readable(root, files)
    if not files:
        raise FileNotFoundError(f"corpus.source={str(root)!r} holds no .txt or .jsonl files")
    return sorted((p.relative_to(root).as_posix(), p) for p in files)


def _check_readable(root: Path, files: list[Path]) -> None:
    problem = unreadable_files(root, files)
    if problem:
        raise FileNotFoundError(
            f"corpus.source={str(root)!r}: {problem}. Mount or restore them, or move them out "
            "of the folder."
        )


# A document is refused as "not text" when more than this fraction of its characters are
# U+FFFD (bytes that are not UTF-8) or NUL, and there are at least NOT_TEXT_MIN of them: binary
# data or UTF-16 decodes to far more (about half of random bytes), while a stray bad byte in
# real text, or Latin-1 accents read as UTF-8, stays well below.
NOT_TEXT_FRACTION = 0.1
NOT_TEXT_MIN = 16


def check_text(text: str, where: str) -> str:
    """``text`` itself, or a ValueError naming ``where`` when it is mostly undecodable bytes."""
    bad = text.count("\ufffd") + text.count("\0")
    if bad >= NOT_TEXT_MIN and bad > NOT_TEXT_FRACTION * len(text):
        raise ValueError(
            f"{where} is not UTF-8 text: {bad:,} of its {len(text):,} characters are NUL or "
            "bytes that do not decode (binary data, or another encoding such as UTF-16). "
            "Training on it would teach the SAE noise; remove it from the corpus or convert "
            "it to UTF-8."
        )
    return text


def _read_text(path: Path) -> str:
    # errors="replace": a stray non-UTF-8 byte in one file must not stop a run; a file that is
    # mostly such bytes is not text and does (check_text).
    return check_text(path.read_text(encoding="utf-8", errors="replace"), str(path))


def _jsonl_row(line: str, path: Path, number: int) -> dict:
    try:
        row = json.loads(line)
    except ValueError as error:
        raise ValueError(
            f"{path}:{number} is not valid JSON ({error}); fix or remove the line"
        ) from None
    if not isinstance(row, dict):
        raise ValueError(
            f"{path}:{number} holds a {type(row).__name__}, not a JSON object with the text field"
        )
    return row


def _file_documents(files: list[tuple[str, Path]], field: str) -> Iterator[tuple[str, str]]:
    """(key, text) pairs: one per .txt/.py file, one per non-empty .jsonl line."""
    for rel, path in files:
        if path.suffix != ".jsonl":
            yield rel, _read_text(path)
            continue
        for i, line in enumerate(_read_text(path).splitlines()):
            if not line.strip():
                continue
            row = _jsonl_row(line, path, i + 1)
            if field not in row:
                raise ValueError(f"{path}:{i + 1} has no {field!r} field; set corpus.text_field")
            if not isinstance(row[field], str):
                raise ValueError(
                    f"{path}:{i + 1}: {field!r} is a {type(row[field]).__name__}, not text"
                )
            yield f"{rel}:{i}", check_text(row[field], f"{path}:{i + 1}")


def _hf_documents(cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"corpus.source={cfg.source!r} needs the optional 'datasets' package: "
            "pip install 'saelab[datasets]'"
        ) from e
    name = cfg.source[len(HF_PREFIX) :]
    # Streaming: no full download before the first batch; rows arrive in a fixed order.
    ds = datasets.load_dataset(
        name, cfg.hf_config, split=cfg.hf_split, revision=cfg.hf_revision, streaming=True
    )
    for i, row in enumerate(ds):
        yield str(i), check_text(row[cfg.text_field], f"{cfg.source} row {i}")


def _documents(cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    if cfg.source == STDLIB:
        return _file_documents(stdlib_files(), cfg.text_field)
    if cfg.source.startswith(HF_PREFIX):
        return _hf_documents(cfg)
    return _file_documents(_local_files(Path(cfg.source).expanduser()), cfg.text_field)


def _units(cfg: CorpusConfig) -> Iterator[tuple[str, str, list[bool]]]:
    """(key, text, validation flag of each chunk) of every non-empty document, in order."""
    size = cfg.effective_chunk_chars
    for key, text in _documents(cfg):
        if not text:
            continue
        chunks = split_chunks(text, size)
        flags = [
            in_validation(chunk_key(key, i, len(chunks)), cfg.val_fraction)
            for i in range(len(chunks))
        ]
        yield key, chunks, flags


def iter_keyed_documents(
    cfg: CorpusConfig | Mapping[str, Any] | str | None, split: str
) -> Iterator[tuple[str, str]]:
    """Yield (key, text) of one split in a fixed order; key = relative path[:line] or row, and
    ``#<i>`` for a run of chunks of a long document starting at chunk i."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; allowed: {SPLITS}")
    cfg = as_config(cfg)
    want_val = split == "validation"
    for key, chunks, flags in _units(cfg):
        i = 0
        while i < len(chunks):
            if flags[i] != want_val:
                i += 1
                continue
            j = i
            while j < len(chunks) and flags[j] == want_val:
                j += 1
            yield chunk_key(key, i, len(chunks)), "".join(chunks[i:j])
            i = j


def check_split(cfg: CorpusConfig | Mapping[str, Any] | str | None, split: str) -> None:
    """Fail in seconds, naming the corpus, the fraction and the fixes, if ``split`` would be
    empty (reads the text until the split's first chunk; tokenizes nothing)."""
    cfg = as_config(cfg)
    want_val = split == "validation"
    documents = chunks = 0
    for _, pieces, flags in _units(cfg):
        if any(flag == want_val for flag in flags):
            return
        documents, chunks = documents + 1, chunks + len(pieces)
    size = cfg.effective_chunk_chars
    cut = (
        f"cut into {chunks} chunks of about {size} characters"
        if size
        else "not cut (data.corpus.chunk_chars=0)"
    )
    fixes = "raise data.corpus.val_fraction (e.g. 0.1)"
    if size:
        fixes += ", lower data.corpus.chunk_chars"
    elif cfg.source != STDLIB:
        fixes += f", set data.corpus.chunk_chars={DEFAULT_CHUNK_CHARS} to cut long documents"
    raise ValueError(
        f"the {split} split of corpus.source={cfg.source!r} is empty: its {documents} "
        f"document(s), {cut}, put none in it at val_fraction={cfg.val_fraction} (the split is "
        f"decided per document or chunk by a hash). Fix: {fixes}, or add more text."
    )


def iter_documents(cfg: CorpusConfig | Mapping[str, Any] | str | None, split: str) -> Iterator[str]:
    """Yield the documents (strings) of one split ("train" or "validation"), in a fixed order."""
    for _, text in iter_keyed_documents(cfg, split):
        yield text


def fingerprint(cfg: CorpusConfig | Mapping[str, Any] | str | None = None) -> str:
    """A short stable id of the corpus CONTENT and split, for cache keys.

    Local files are hashed by content (a changed file changes the id); a Hugging Face dataset
    by name/config/split/revision, since hashing a remote corpus would mean reading all of it.
    """
    cfg = as_config(cfg)
    h = hashlib.sha256(f"split-by-sha256 val={cfg.val_fraction}".encode())
    if cfg.effective_chunk_chars:  # whole-document splits keep the ids they always had
        h.update(f" chunks={cfg.effective_chunk_chars}".encode())
    if cfg.source.startswith(HF_PREFIX):
        parts = (cfg.source, cfg.hf_config, cfg.hf_split, cfg.hf_revision, cfg.text_field)
        h.update(repr(parts).encode())
        return h.hexdigest()[:16]
    if cfg.source == STDLIB:
        h.update(f"python-stdlib {sys.version_info[:3]}".encode())
        files = stdlib_files()
    else:
        h.update(cfg.text_field.encode())
        files = _local_files(Path(cfg.source).expanduser())
    for rel, path in files:
        h.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]
