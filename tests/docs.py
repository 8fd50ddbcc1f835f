"""The pages a user reads: the README and every page of docs/, for the tests that hold them to
the code (commands, links, snippets)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
