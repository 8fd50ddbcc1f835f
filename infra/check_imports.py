"""The import rule, checked by reading the code (``make lint``; no import is executed).

1. A service imports no other service and not the command line: services meet on Kafka
   topics and the registry's read API, never in each other's code.
2. ``shared/`` imports no service and not the command line.
3. A logic module (named in ``LOGIC`` below: the pure modules of each service and of
   ``shared/``) loads no Kafka, Redis, faust or Ray client, neither by itself nor through
   any module of the project it imports. Logic talks to the ports in ``shared.ports``; the
   adapters that import the clients live beside them.

Imports under ``if TYPE_CHECKING:`` do not count: they are never executed. In a logic module
every other import counts, in a function or at the top (a lazy import still loads the client
when the function runs); in the modules it imports, what they import when they are loaded
(a function of theirs that the logic never calls may import a client lazily).

    python infra/check_imports.py          # exit 1 and one line per violation
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

CLIENTS = frozenset({"kafka", "redis", "faust", "aiokafka", "ray", "mode"})
"""Top-level packages that open connections to infrastructure (``mode`` is faust's core)."""

LOGIC: dict[str, tuple[str, ...]] = {
    "services.evaluation": ("gate", "handler", "metrics", "service"),
    "services.ingest": ("handler", "logic"),
    "services.labelling": ("join",),
    "services.monitoring": ("board", "dashboard", "drift", "join", "monitor", "trigger", "windows"),
    "services.registry": ("http", "sequential", "service", "state"),
    "services.serving": ("core", "ingress"),
    "services.simulator": ("fleet", "render", "runner", "scenario", "sink"),
    "services.training": ("bootstrap", "dataset", "handler", "service", "trainer"),
    "shared": (
        "calibration",
        "commands",
        "datasets",
        "events",
        "expiry",
        "fitting",
        "image_errors",
        "images",
        "model",
        "ports",
        "registry",
        "settings",
        "telemetry",
        "zoo",
    ),
}
"""The logic modules, by package. A name here that is not a module is itself a violation, so
the list cannot silently fall behind the code."""

PROJECT = ("services", "shared", "streamloop")


@dataclass(frozen=True, order=True)
class Violation:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class _Import:
    module: str
    """The dotted name imported (for ``from a import b``, ``a.b`` when that is a module)."""
    line: int


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, *, functions: bool) -> Iterator[ast.AST]:
    """Every node below ``node`` except the bodies of ``if TYPE_CHECKING:`` (and of
    functions, unless ``functions``)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                yield sub
                yield from _walk(sub, functions=functions)
            continue
        if not functions and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        yield child
        yield from _walk(child, functions=functions)


class Tree:
    """The project's modules under ``root``, by dotted name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: dict[str, Path] = {}
        for top in PROJECT:
            for path in sorted((root / top).rglob("*.py")):
                parts = path.relative_to(root).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                self.paths[".".join(parts)] = path
        self._imports: dict[tuple[str, bool], list[_Import]] = {}

    def _package_of(self, module: str) -> str:
        is_package = self.paths[module].name == "__init__.py"
        return module if is_package else module.rpartition(".")[0]

    def imports(self, module: str, *, functions: bool = True) -> list[_Import]:
        """What ``module`` imports, resolved to module names: everywhere, or (not
        ``functions``) when it is loaded."""
        if (module, functions) not in self._imports:
            tree = ast.parse(self.paths[module].read_text(), str(self.paths[module]))
            found: list[_Import] = []
            for node in _walk(tree, functions=functions):
                if isinstance(node, ast.Import):
                    found += [_Import(a.name, node.lineno) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        anchor = self._package_of(module).split(".")
                        anchor = anchor[: len(anchor) - node.level + 1]
                        base = ".".join([*anchor, base] if base else anchor)
                    for alias in node.names:
                        sub = f"{base}.{alias.name}"
                        found.append(_Import(sub if sub in self.paths else base, node.lineno))
            self._imports[module, functions] = found
        return self._imports[module, functions]

    def loaded(self, module: str) -> set[str]:
        """Every module importing ``module`` loads: its packages' ``__init__`` too, and
        what those import in turn."""
        parts = module.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & self.paths.keys() | {
            module
        }

    def clients_behind(self, module: str) -> dict[str, list[str]]:
        """Client packages ``module`` loads, each with the chain of project modules that
        leads to it (``module`` first)."""
        chains: dict[str, list[str]] = {}
        seen = {module}
        frontier = [[module]]
        while frontier:
            chain = frontier.pop(0)
            for imp in self.imports(chain[-1], functions=len(chain) == 1):
                top = imp.module.split(".")[0]
                if top in CLIENTS:
                    chains.setdefault(top, chain)
                    continue
                for dep in sorted(self.loaded(imp.module)):
                    if dep in self.paths and dep not in seen:
                        seen.add(dep)
                        frontier.append([*chain, dep])
        return chains


def _service(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "services" and len(parts) > 1 else None


def _rel(tree: Tree, module: str) -> str:
    return str(tree.paths[module].relative_to(tree.root))


def floors(tree: Tree) -> Iterable[Violation]:
    """Rules 1 and 2."""
    for module in sorted(tree.paths):
        own = _service(module)
        if own is None and not module.startswith("shared"):
            continue
        for imp in tree.imports(module):
            target = imp.module
            other = _service(target)
            if target.split(".")[0] == "streamloop":
                yield Violation(_rel(tree, module), imp.line, f"imports the CLI ({target})")
            elif module.startswith("shared") and target.split(".")[0] == "services":
                yield Violation(_rel(tree, module), imp.line, f"shared/ imports {target}")
            elif own is not None and other is not None and other != own:
                message = f"service {own} imports service {other} ({target})"
                yield Violation(_rel(tree, module), imp.line, message)


def logic(tree: Tree, rules: dict[str, tuple[str, ...]] = LOGIC) -> Iterable[Violation]:
    """Rule 3."""
    for package, names in sorted(rules.items()):
        for name in names:
            module = f"{package}.{name}"
            if module not in tree.paths:
                yield Violation(package.replace(".", "/"), 0, f"logic module {module} not found")
                continue
            for client, chain in sorted(tree.clients_behind(module).items()):
                via = " -> ".join(chain)
                yield Violation(_rel(tree, module), 1, f"logic module loads {client} ({via})")


def check(root: Path, rules: dict[str, tuple[str, ...]] = LOGIC) -> list[Violation]:
    """Every violation of the import rule in the tree at ``root``, sorted."""
    tree = Tree(root)
    return sorted({*floors(tree), *logic(tree, rules)})


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    violations = check(root)
    for v in violations:
        sys.stderr.write(f"{v}\n")
    if violations:
        sys.stderr.write(f"import rule: {len(violations)} violations (infra/check_imports.py)\n")
        return 1
    sys.stdout.write("import rule: ok\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
