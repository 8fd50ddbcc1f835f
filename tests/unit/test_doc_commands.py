"""Every ``streamloop …`` command the README and docs name inline exists, with the options
they give it: parsed by the command line's own parser, so a renamed command or flag fails
here before a user meets it. (Fenced snippets run in tests/e2e/test_doc_snippets.py.)"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from streamloop.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
_SPAN = re.compile(r"`(streamloop [^`]+)`")
_SYNOPSIS = ("[", "|", "...", "…")
"""A usage line (``[--json]``, ``promote|rollback``, ``FILE...``, ``models …``): only its
command is checked."""


def _spans() -> list[tuple[str, str]]:
    out = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for span in _SPAN.findall(path.read_text()):
            out.add((str(path.relative_to(ROOT)), span))
    return sorted(out)


def _parse(argv: list[str]) -> str | None:
    """None when the parser accepts ``argv``, else its error."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        return None if exc.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


def _argv(span: str) -> list[str]:
    text = re.sub(r"<[^>]*>", "PLACEHOLDER", span.replace("…", "x"))
    words = shlex.split(text)[1:]
    out = []
    for i, word in enumerate(words):
        if word.isupper() and len(word) > 1:  # a placeholder: VERSION, FRAME_ID, NAME...
            word = "ingest" if i and words[i - 1] == "serve" else "x"
        out.append(word)
    return out


SPANS = _spans()


def test_the_docs_name_commands() -> None:
    assert len(SPANS) >= 20, SPANS


@pytest.mark.parametrize(("path", "span"), SPANS, ids=[s for _, s in SPANS])
def test_a_documented_command_parses(path: str, span: str) -> None:
    if any(mark in span for mark in _SYNOPSIS):
        words = span.replace("|", " ").split()[1:]
        command = [w for w in words if re.fullmatch(r"[a-z][a-z-]*", w)][:2]
        error = _parse([*command, "--help"])
        assert error is None, f"{path}: `{span}`: {error}"
        return
    error = _parse(_argv(span))
    # A command or option named in passing without its value (``streamloop models promote``,
    # ``streamloop publish --labels``) is fine; anything else the parser refuses is a
    # documented command or option that does not exist.
    if error is not None and ("arguments are required" in error or "expected one" in error):
        return
    assert error is None, f"{path}: `{span}`: {error}"


def test_a_command_that_does_not_exist_is_refused() -> None:
    assert _parse(_argv("streamloop tail predictons")) is not None
    assert _parse(_argv("streamloop retrain --reasons x")) is not None
    assert _parse(_argv("streamloop models show VERSION")) is None
