"""Every relative link in the README and docs leads somewhere: the file exists and, when the
link names a section (``page.md#section``), the page has a heading with that anchor as GitHub
renders it (lower case, punctuation dropped, spaces to hyphens, ``-1``, ``-2`` for repeats)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs import ROOT, doc_files

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def slug(heading: str) -> str:
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in page.read_text().splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links() -> list[tuple[str, str]]:
    out = []
    for page in doc_files():
        for target in _LINK.findall(page.read_text()):
            if not re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                out.append((str(page.relative_to(ROOT)), target))
    return sorted(set(out))


LINKS = links()


def test_the_docs_link_to_each_other() -> None:
    assert len(LINKS) >= 30, LINKS


@pytest.mark.parametrize(("page", "target"), LINKS, ids=[f"{p}->{t}" for p, t in LINKS])
def test_a_relative_link_leads_to_a_file_and_section_that_exist(page: str, target: str) -> None:
    path, _, anchor = target.partition("#")
    dest = (ROOT / page).parent / path if path else ROOT / page
    assert dest.exists(), f"{page}: ({target}): no {dest.relative_to(ROOT)}"
    if anchor and dest.suffix == ".md":
        assert anchor in anchors(dest), f"{page}: ({target}): no such section"


def test_anchors_are_those_github_renders() -> None:
    assert slug("The floor on two cores") == "the-floor-on-two-cores"
    assert slug("A camera's publisher") == "a-cameras-publisher"
    assert slug("`frames.valid`: binary, schema version 2") == "framesvalid-binary-schema-version-2"
    assert slug("Against a hand-written peer") == "against-a-hand-written-peer"
    found = anchors(ROOT / "docs" / "benchmarks.md")
    assert "the-floor-on-two-cores" in found and "the-floor" not in found
