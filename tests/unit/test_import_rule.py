"""The import rule (infra/check_imports.py, run by ``make lint``) on small trees that break
it on purpose, and on the project itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.check_imports import check

ROOT = Path(__file__).resolve().parents[2]

RULES = {"services.ingest": ("logic",), "shared": ("ports",)}


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    base = {
        "services/__init__.py": "",
        "services/ingest/__init__.py": "",
        "services/ingest/logic.py": "from shared.ports import Message\n",
        "services/ingest/__main__.py": "import kafka\nfrom services.ingest.logic import x\n",
        "services/serving/__init__.py": "",
        "services/serving/core.py": "",
        "shared/__init__.py": "",
        "shared/ports.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import redis\n"
        ),
        "shared/bus.py": "import kafka\n",
        "shared/topics.py": "def provision():\n    import kafka\n",
        "streamloop/__init__.py": "",
        "streamloop/cli.py": "from services.ingest.logic import x\n",
    }
    for name, text in {**base, **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def _messages(root: Path) -> list[str]:
    return [f"{v.path}:{v.line}: {v.message}" for v in check(root, RULES)]


def test_a_tree_that_keeps_the_rule_passes(tmp_path: Path) -> None:
    """Adapters and __main__ may import clients, the CLI may import services, a logic module
    may load a module whose functions import a client lazily, and TYPE_CHECKING imports
    never run."""
    root = _tree(tmp_path, {"services/ingest/logic.py": "from shared.topics import provision\n"})
    assert _messages(root) == []


@pytest.mark.parametrize(
    ("path", "text", "expected"),
    [
        (
            "services/ingest/logic.py",
            "from services.serving.core import Core\n",
            "services/ingest/logic.py:1: service ingest imports service serving",
        ),
        (
            "services/ingest/__main__.py",
            "\n\nfrom streamloop.cli import main\n",
            "services/ingest/__main__.py:3: imports the CLI (streamloop.cli)",
        ),
        (
            "shared/ports.py",
            "from services.ingest import logic\n",
            "shared/ports.py:1: shared/ imports services.ingest.logic",
        ),
        (
            "services/ingest/logic.py",
            "def f():\n    import redis\n",
            "services/ingest/logic.py:1: logic module loads redis (services.ingest.logic)",
        ),
        (
            "services/ingest/logic.py",
            "from shared import bus\n",
            "logic module loads kafka (services.ingest.logic -> shared.bus)",
        ),
        (
            "services/ingest/logic.py",
            "from .. import serving\nfrom ..serving import core\n",
            "service ingest imports service serving (services.serving.core)",
        ),
    ],
)
def test_each_break_of_the_rule_is_named(
    tmp_path: Path, path: str, text: str, expected: str
) -> None:
    root = _tree(tmp_path, {path: text})
    messages = _messages(root)
    assert any(expected in m for m in messages), messages


def test_a_logic_module_that_is_gone_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {})
    (root / "services/ingest/logic.py").unlink()
    assert _messages(root) == ["services/ingest:0: logic module services.ingest.logic not found"]


def test_the_project_keeps_the_rule() -> None:
    assert [str(v) for v in check(ROOT)] == []


def test_no_test_and_no_script_imports_a_bench_script() -> None:
    """Benchmarks are a library (tests/bench/lib) and thin scripts; what a test or another
    script needs lives in the library."""
    import ast

    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            if any(n.startswith("tests.bench.bench_") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
