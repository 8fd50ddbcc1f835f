"""Every ``streamloop …`` command the README and docs name inline exists, with the options
they give it: parsed by the command line's own parser, so a renamed command or flag fails
here before a user meets it. The same for every ``python -m tests.bench.…`` they name, by the
benchmark's own ``parse_args``. (Fenced snippets run in tests/e2e/test_doc_snippets.py.)"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from streamloop.cli import build_parser
from tests.docs import doc_files

ROOT = Path(__file__).resolve().parents[2]
_SPAN = re.compile(r"`(streamloop [^`]+)`")
_SYNOPSIS = ("[", "|", "...", "…")
"""A usage line (``[--json]``, ``promote|rollback``, ``FILE...``, ``models …``): only its
command is checked."""


_BENCH_SPAN = re.compile(r"`([^`]*python -m tests\.bench\.[^`]*)`")
_BENCH = re.compile(r"python -m (tests\.bench\.\w+)(.*)", re.S)


def _spans(pattern: re.Pattern[str] = _SPAN) -> list[tuple[str, str]]:
    out = set()
    for path in doc_files():
        for span in pattern.findall(path.read_text()):
            out.add((str(path.relative_to(ROOT)), " ".join(span.split())))
    return sorted(out)


def _parse(argv: list[str], parse: Callable[[list[str]], object] | None = None) -> str | None:
    """None when the parser (the command line's, else ``parse``) accepts ``argv``, else its
    error."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            (parse or build_parser().parse_args)(argv)
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


BENCH_SPANS = _spans(_BENCH_SPAN)


def test_the_docs_name_benchmark_commands() -> None:
    assert len(BENCH_SPANS) >= 15, BENCH_SPANS


@pytest.mark.parametrize(("path", "span"), BENCH_SPANS, ids=[s for _, s in BENCH_SPANS])
def test_a_documented_benchmark_command_parses(path: str, span: str) -> None:
    match = _BENCH.search(span.split("&&")[0])
    assert match is not None, span
    name, argv = match.group(1), shlex.split(match.group(2))
    assert (ROOT / (name.replace(".", "/") + ".py")).is_file(), f"{path}: `{span}`"
    parse = getattr(importlib.import_module(name), "parse_args", None)
    if parse is None:
        assert argv == [], f"{path}: `{span}`: {name} takes no options"
    elif "[" in span:  # a usage line: every option it names exists
        usage = io.StringIO()
        with contextlib.redirect_stdout(usage), pytest.raises(SystemExit):
            parse(["--help"])
        named = re.findall(r"--[a-z][a-z-]*", span)
        assert named and all(f in usage.getvalue() for f in named), f"{path}: `{span}`"
    else:
        assert _parse(argv, parse) is None, f"{path}: `{span}`: {_parse(argv, parse)}"


def test_a_benchmark_option_that_does_not_exist_is_refused() -> None:
    parse = importlib.import_module("tests.bench.bench_serving").parse_args
    assert _parse(["--backend", "remote"], parse) is not None
    assert _parse(["--frams", "10"], parse) is not None
    assert _parse(["--backend", "local"], parse) is None
