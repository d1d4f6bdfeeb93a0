"""The documentation holds together: a README read in five minutes, its first screen the two commands, and every
relative link in README.md and docs/*.md reaching a file (and a heading, for `#anchor`) that exists.

Anchors are GitHub's: a heading's text without its Markdown, lower case, punctuation dropped, spaces as hyphens, a
repeated heading numbered (`-1`, `-2`, ...).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: The most lines the README may have: what a user reads in five minutes; the rest lives in docs/.
README_MAX_LINES = 350
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6}) +(.+?) *#* *$")


def _prose(text: str) -> list[str]:
    """The page's lines outside code fences, inline code blanked (a link or heading there is not one)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "``", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := _HEADING.match(line)):
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            seen.setdefault(f"{base}-{n}" if n else base, 1)
    return set(seen)


def links(page: Path) -> list[str]:
    return [m.group(1) for line in _prose(page.read_text()) for m in _LINK.finditer(line)]


def test_slugs_are_githubs() -> None:
    assert slug("Upgrading (`esrs_upgrade`)") == "upgrading-esrs_upgrade"
    assert slug("On a slow network, with credentials, under load") == "on-a-slow-network-with-credentials-under-load"
    assert slug("`esrs-fix decode`: the payload, or the frame") == "esrs-fix-decode-the-payload-or-the-frame"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading_that_exist(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not this repository's
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or not file.resolve().is_relative_to(ROOT):
            broken.append(f"{target}: no such file")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_is_read_in_five_minutes_and_links_every_page() -> None:
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= README_MAX_LINES
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(readme)}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs/ pages the README does not link to: {unlinked}"


def test_the_first_screen_is_the_two_commands() -> None:
    """The README's first code block: `scripts/lab` then `scripts/test`, each on a line of its own."""
    block = (ROOT / "README.md").read_text().split("```", 2)[1]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()[1:] if line.strip()]
    assert commands == ["scripts/lab", "scripts/test"]
