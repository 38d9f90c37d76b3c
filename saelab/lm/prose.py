"""An English prose corpus built offline from two Debian packages, for the second embedded-style
LM (`tiny-llama`, saelab/lm/tiny_llama.py).

    apt-get install bible-kjv debian-handbook
    python -m saelab.lm.prose --out ~/.cache/saelab/corpora/english-prose

Sources (both public and free to redistribute, read from the installed packages):

- The King James Bible (package ``bible-kjv``: its ``bible`` program decompresses the text of
  ``bible-kjv-text``): narrative and poetry, 4.4 MB. One document per chapter (1,189), verse
  numbers dropped, verses joined into paragraphs.
- The Debian Administrator's Handbook, English edition (package ``debian-handbook``, HTML):
  modern expository prose about an operating system. Running text only (paragraphs, list items,
  headings, notes; code listings and screen output are left out), cut at paragraph boundaries
  into documents of about ``HANDBOOK_CHUNK_CHARS`` characters (a page is a whole chapter, too
  coarse for a 2% validation split by document).

The two differ in register, which a small LM has to model separately, as real LMs do. Written as
two JSONL files (``{"text": ...}`` per line) that ``saelab.lm.corpus`` reads as a local corpus
(split by document hash like every other source). The build is deterministic: same packages,
same bytes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

from saelab.fileio import atomic_file

HANDBOOK_HTML = Path("/usr/share/doc/debian-handbook/html/en-US")
BIBLE_PROGRAM = "bible"
INSTALL_HINT = "apt-get install bible-kjv debian-handbook"
DEFAULT_DIR = Path("~/.cache/saelab/corpora/english-prose")
HANDBOOK_CHUNK_CHARS = 8000
FILES = ("kjv.jsonl", "debian-handbook.jsonl")

# "Ge1:1 In the beginning ..." with -f (pretty-printing off): book, chapter, verse, text.
_VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


class MissingSource(FileNotFoundError):
    """A Debian package the corpus reads is not installed; the message says which."""


def kjv_chapters(bible: str | None = None) -> list[str]:
    """The King James Bible as one text per chapter, in canonical order."""
    program = bible or shutil.which(BIBLE_PROGRAM)
    if program is None:
        raise MissingSource(
            f"the `{BIBLE_PROGRAM}` program (Debian package bible-kjv) is not installed: "
            f"{INSTALL_HINT}"
        )
    # -f turns pretty-printing off: one verse per line, each led by its reference.
    try:
        out = subprocess.run(
            [program, "-f", "gen1:1-rev22:21"], capture_output=True, text=True, check=True
        ).stdout
    except (FileNotFoundError, subprocess.CalledProcessError) as e:
        raise MissingSource(
            f"could not run `{program}` (Debian package bible-kjv): {e}. {INSTALL_HINT}"
        ) from e
    chapters: dict[tuple[str, str], list[str]] = {}
    for line in out.splitlines():
        m = _VERSE.match(line.strip())
        if m:
            chapters.setdefault((m.group(1), m.group(2)), []).append(m.group(4).strip())
    if len(chapters) < 1000:  # the KJV has 1,189 chapters
        raise MissingSource(
            f"`{program}` printed {len(chapters)} chapters, not the KJV's 1,189: is bible-kjv-text "
            f"installed? {INSTALL_HINT}"
        )
    return [" ".join(verses) for verses in chapters.values()]


class _RunningText(HTMLParser):
    """Collects the paragraphs of an HTML page's running text. Skips code listings, screen
    output, navigation and scripts."""

    BLOCKS = {"p", "li", "h1", "h2", "h3", "h4", "dt", "dd", "td", "title", "div"}
    SKIP = {"pre", "script", "style", "code", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.paragraph: list[str] = []
        self.skip = 0

    def _flush(self) -> None:
        text = " ".join("".join(self.paragraph).split())
        if len(text.split()) >= 4:  # drop captions, button labels, lone words
            self.paragraphs.append(text)
        self.paragraph = []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        elif tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data):
        if not self.skip:
            self.paragraph.append(data)


def handbook_documents(folder: Path = HANDBOOK_HTML) -> list[str]:
    """The Debian Administrator's Handbook (English) in documents of about HANDBOOK_CHUNK_CHARS
    characters, pages in name order."""
    pages = sorted(folder.glob("*.html")) if folder.is_dir() else []
    if not pages:
        raise MissingSource(
            f"{folder} holds no HTML pages: the Debian package debian-handbook is not installed: "
            f"{INSTALL_HINT}"
        )
    docs = []
    for page in pages:
        parser = _RunningText()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        parser.close()
        parser._flush()
        chunk: list[str] = []
        for paragraph in parser.paragraphs:
            chunk.append(paragraph)
            if sum(map(len, chunk)) >= HANDBOOK_CHUNK_CHARS:
                docs.append("\n\n".join(chunk))
                chunk = []
        if chunk:
            docs.append("\n\n".join(chunk))
    return docs


def build(out: str | Path = DEFAULT_DIR) -> dict[str, int]:
    """Write the corpus folder (atomically, file by file); returns characters per file."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, docs in zip(FILES, (kjv_chapters(), handbook_documents())):
        with atomic_file(out / name, "w") as f:
            for text in docs:
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        sizes[name] = sum(len(d) for d in docs)
    return sizes


def ensure(out: str | Path = DEFAULT_DIR) -> Path:
    """The corpus folder, built first if any of its files is missing."""
    out = Path(out).expanduser()
    if not all((out / name).is_file() for name in FILES):
        build(out)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_DIR), help="corpus folder to write")
    args = p.parse_args(argv)
    for name, chars in build(args.out).items():
        print(f"{name}: {chars:,} characters")


if __name__ == "__main__":
    main()
