"""The README and docs/ hold together: every relative link points at a file that exists and, with
an anchor, at a heading of that file (GitHub's anchor rule); the README stays short; each doc
opens with a paragraph saying what it is for."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to
    hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            base = anchor(match.group(1))
            result.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return result


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def test_anchor_rule():
    assert anchor("Looking at a model: test.py, re-ranking, pictures") == \
        "looking-at-a-model-testpy-re-ranking-pictures"
    assert anchor("The `numerics` block (CUDA)") == "the-numerics-block-cuda"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target}: no heading #{fragment} in {file.name}")
    assert broken == []


def test_readme_is_short_and_links_every_doc():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    linked = {Path(target.partition("#")[0]).name for target in links(REPO / "README.md")}
    for doc in (REPO / "docs").glob("*.md"):
        assert doc.name in linked, f"README does not link docs/{doc.name}"


@pytest.mark.parametrize("page", PAGES[1:], ids=lambda p: p.name)
def test_each_doc_opens_with_what_it_is_for(page):
    blocks = [b.strip() for b in page.read_text().split("\n\n") if b.strip()]
    assert blocks[0].startswith("# ")
    assert not blocks[1].startswith(("#", "|", "```", "-")) and len(blocks[1]) > 80
