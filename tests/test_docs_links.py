"""Every relative link in README.md and docs/ resolves: the file exists and the anchor is a heading."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# [text](target) or ![alt](target); the target ends at whitespace or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (headings and links inside them are not Markdown)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation other than '-' and '_' dropped,
    spaces to '-'."""
    out = []
    for ch in heading.strip().lower():
        if ch == " ":
            out.append("-")
        elif ch in "-_" or unicodedata.category(ch)[0] in "LNM":
            out.append(ch)
    return "".join(out)


def anchors(page: Path) -> set[str]:
    """Every anchor GitHub gives the headings of a page (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in _prose_lines(page.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2))  # a link's text only
        base = slug(text)
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return found


def links(page: Path) -> list[str]:
    """The relative link targets of a page, outside code blocks and inline code."""
    targets = []
    for line in _prose_lines(page.read_text()):
        line = re.sub(r"`[^`]*`", "", line)
        targets += [t for t in LINK.findall(line) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]
    return targets


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken(page: Path) -> list[str]:
    problems = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{target}: no file {_shown(dest)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {_shown(dest)}")
    return problems


def test_slug_follows_githubs_rules():
    assert slug("Choosing eps and lambda: JumpReLU on small token budgets") == (
        "choosing-eps-and-lambda-jumprelu-on-small-token-budgets"
    )
    assert slug("§8 saelab's JumpReLU training recipe") == "8-saelabs-jumprelu-training-recipe"
    assert slug("Budgets and knobs (`conf/data/activations.yaml`)") == (
        "budgets-and-knobs-confdataactivationsyaml"
    )
    assert slug("snake_case and kebab-case") == "snake_case-and-kebab-case"


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "target.md").write_text("# Title\n\n## A section: here\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](target.md#a-section-here) [ok](#page) [bad](target.md#gone)\n"
        "[missing](nowhere.md) `[code](ignored.md)` [web](https://example.com)\n"
        "```\n[fenced](ignored-too.md)\n```\n"
    )
    problems = broken(page)
    assert len(problems) == 2, problems
    assert "target.md#gone" in problems[0] and "nowhere.md" in problems[1]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page):
    assert broken(page) == []
