"""Every ``python -m tests.bench.…`` command the README and docs name inline runs a benchmark
that exists, with options it takes: parsed by the benchmark's own ``parse_args``, so a renamed
benchmark or flag fails here before someone copies it from the docs."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_SPAN = re.compile(r"`([^`]*python -m tests\.bench\.[^`]*)`")
_MODULE = re.compile(r"python -m (tests\.bench\.\w+)(.*)", re.S)


def _spans() -> list[tuple[str, str]]:
    out = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for span in _SPAN.findall(path.read_text()):
            out.add((str(path.relative_to(ROOT)), " ".join(span.split())))
    return sorted(out)


def _command(span: str) -> tuple[str, list[str]]:
    """The module and its arguments: what follows ``python -m`` up to ``&&``."""
    match = _MODULE.search(span.split("&&")[0])
    assert match is not None, span
    return match.group(1), shlex.split(match.group(2))


def _refusal(parse: object, argv: list[str]) -> str | None:
    """None when ``parse`` accepts ``argv``, else what it printed."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parse(argv)  # type: ignore[operator]
    except SystemExit as exc:
        return None if exc.code == 0 else err.getvalue().strip()
    return None


SPANS = _spans()


def test_the_docs_name_benchmark_commands() -> None:
    assert len(SPANS) >= 15, SPANS


@pytest.mark.parametrize(("path", "span"), SPANS, ids=[s for _, s in SPANS])
def test_a_documented_benchmark_command_parses(path: str, span: str) -> None:
    module_name, argv = _command(span)
    assert (ROOT / (module_name.replace(".", "/") + ".py")).is_file(), f"{path}: `{span}`"
    module = importlib.import_module(module_name)
    parse = getattr(module, "parse_args", None)
    if parse is None:
        assert argv == [], f"{path}: `{span}`: {module_name} takes no options"
        return
    if "[" in span:  # a usage line: every option it names exists
        usage = io.StringIO()
        with contextlib.redirect_stdout(usage), pytest.raises(SystemExit):
            parse(["--help"])
        named = re.findall(r"--[a-z][a-z-]*", span)
        assert named and all(f in usage.getvalue() for f in named), f"{path}: `{span}`"
        return
    assert _refusal(parse, argv) is None, f"{path}: `{span}`: {_refusal(parse, argv)}"


def test_a_benchmark_option_that_does_not_exist_is_refused() -> None:
    module = importlib.import_module("tests.bench.bench_serving")
    assert _refusal(module.parse_args, ["--backend", "remote"]) is not None
    assert _refusal(module.parse_args, ["--frams", "10"]) is not None
    assert isinstance(module.parse_args(["--backend", "local"]), argparse.Namespace)
