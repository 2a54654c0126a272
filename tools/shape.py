"""The shape of the ``jaxmeta`` package, measured from its source with :mod:`ast` alone.

Run from the repository root (it imports nothing of ``jaxmeta`` and no JAX)::

    python tools/shape.py            # a table
    python tools/shape.py --json     # the same figures as JSON

What it counts (issue 29's "shape we expect to see afterwards"):

* the import graph among ``jaxmeta`` modules, module-level imports (run when the module is
  imported) and function-level imports (run when the function is called) as separate edge kinds,
  and its strongly connected components (import cycles), with module-level edges alone and with
  both kinds. Imports under ``if TYPE_CHECKING:`` are not edges (they never run). An import of
  ``jaxmeta.a.b`` is an edge to ``jaxmeta.a.b`` and to each package above it that the importer
  is not inside (Python runs ``jaxmeta/a/__init__.py`` first); ``from pkg import name`` is an edge
  to ``pkg.name`` when that is a module, else to ``pkg``. Names looked up lazily by string
  (``importlib.import_module``, PEP 562 tables) are not edges.
* function-level ``jaxmeta`` imports (``from jaxmeta ...``, ``import jaxmeta ...``, relative),
  one per statement;
* functions over 80 lines of code: non-blank, non-comment lines of the ``def`` (nested
  functions included in their parent and counted on their own), docstring lines excluded;
* modules over 700 lines (physical lines);
* uses of reflection: ``inspect.signature``, ``inspect.Signature``, ``get_type_hints``,
  ``__signature__``, and docstring parsing (``__doc__`` read, ``inspect.getdoc``,
  ``inspect.cleandoc``).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "jaxmeta"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 700
REFLECTION_ATTRS = {"signature", "Signature", "get_type_hints", "getdoc", "cleandoc"}
REFLECTION_NAMES = {"signature", "get_type_hints", "getdoc", "cleandoc"}


@dataclass
class Module:
    name: str
    path: Path
    lines: int
    is_package: bool
    module_imports: set[str] = field(default_factory=set)  # targets (jaxmeta modules)
    function_imports: list[tuple[int, str]] = field(default_factory=list)  # (line, target)
    function_edges: set[str] = field(default_factory=set)  # targets of function_imports
    long_functions: list[tuple[str, int, int]] = field(default_factory=list)  # (name, line, loc)
    reflection: list[tuple[int, str]] = field(default_factory=list)  # (line, what)


def module_name(path: Path, package_dir: Path) -> tuple[str, bool]:
    rel = path.relative_to(package_dir.parent).with_suffix("")
    parts = list(rel.parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _code_lines(source_lines: list[str], start: int, end: int, skip: set[int]) -> int:
    """Non-blank, non-comment lines in [start, end] (1-based) not in ``skip``."""
    n = 0
    for i in range(start, end + 1):
        if i in skip:
            continue
        text = source_lines[i - 1].strip()
        if text and not text.startswith("#"):
            n += 1
    return n


def _docstring_lines(tree: ast.AST) -> set[int]:
    """Line numbers taken by docstrings (module, class and function) anywhere in ``tree``."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def _string_lines(source: str) -> set[int]:
    """Lines inside multi-line string tokens (so a ``#`` there is not taken for a comment)."""
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
            lines.update(range(tok.start[0] + 1, tok.end[0] + 1))
    return lines


class _Visitor(ast.NodeVisitor):
    def __init__(self, mod: Module, known: set[str], source_lines: list[str], doc: set[int]):
        self.mod = mod
        self.known = known
        self.source_lines = source_lines
        self.doc = doc
        self.depth = 0  # function nesting
        self.scope: list[str] = []

    # -- imports ---------------------------------------------------------------------------
    def _resolve_from(self, node: ast.ImportFrom) -> list[str]:
        if node.level:
            base = self.mod.name.split(".")
            if not self.mod.is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target != PACKAGE and not target.startswith(PACKAGE + "."):
            return []
        out = []
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            out.append(sub if sub in self.known else target)
        return out

    def _add(self, node: ast.AST, targets: list[str]) -> None:
        edges, direct = set(), []
        for t in targets:
            while t not in self.known and "." in t:  # a name inside a module
                t = t.rsplit(".", 1)[0]
            if t not in self.known:
                continue
            edges.add(t)
            direct.append(t)
            # Importing a.b.c runs the packages a.b and a first: an edge to each one the
            # importer is not inside (a module inside a package runs after its package).
            parts = t.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if not (self.mod.name == parent or self.mod.name.startswith(parent + ".")):
                    edges.add(parent)
        edges.discard(self.mod.name)
        direct = [t for t in direct if t != self.mod.name]
        if not direct:
            return
        if self.depth:  # one count per import statement
            self.mod.function_imports.append((node.lineno, direct[0]))
            self.mod.function_edges.update(edges)
        else:
            self.mod.module_imports.update(edges)

    def visit_Import(self, node: ast.Import) -> None:
        self._add(
            node,
            [a.name for a in node.names if a.name == PACKAGE or a.name.startswith(PACKAGE + ".")],
        )

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self._add(node, self._resolve_from(node))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    # -- functions -------------------------------------------------------------------------
    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        start = node.lineno
        loc = _code_lines(self.source_lines, start, node.end_lineno, self.doc)
        qualname = ".".join([*self.scope, node.name])
        if loc > MAX_FUNCTION_LINES:
            self.mod.long_functions.append((qualname, start, loc))
        self.scope.append(node.name)
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1
        self.scope.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    # -- reflection ------------------------------------------------------------------------
    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in REFLECTION_ATTRS and isinstance(node.value, ast.Name):
            if node.value.id in {"inspect", "typing"}:
                self.mod.reflection.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif node.attr in {"__doc__", "__signature__"}:
            if (
                not isinstance(getattr(node, "ctx", None), ast.Store)
                or node.attr == "__signature__"
            ):
                self.mod.reflection.append((node.lineno, node.attr))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in REFLECTION_NAMES:
            self.mod.reflection.append((node.lineno, node.func.id))
        self.generic_visit(node)


def scan(root: Path = ROOT) -> dict[str, Module]:
    """Parses every module of the package under ``root``: name -> :class:`Module`."""
    package_dir = root / PACKAGE
    paths = sorted(package_dir.rglob("*.py"))
    names = {}
    for path in paths:
        name, is_package = module_name(path, package_dir)
        names[name] = (path, is_package)
    modules = {}
    for name, (path, is_package) in names.items():
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        source_lines = source.splitlines()
        mod = Module(name, path, len(source_lines), is_package)
        skip = _docstring_lines(tree) | _string_lines(source)
        _Visitor(mod, set(names), source_lines, skip).visit(tree)
        modules[name] = mod
    return modules


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return sorted(out)


def measure(root: Path = ROOT) -> dict:
    """All figures as plain data (what the test asserts and ``--json`` prints)."""
    modules = scan(root)
    module_graph = {n: set(m.module_imports) for n, m in modules.items()}
    full_graph = {n: m.module_imports | m.function_edges for n, m in modules.items()}
    return {
        "modules": len(modules),
        "lines": sum(m.lines for m in modules.values()),
        "cycles_module_level": strongly_connected(module_graph),
        "cycles_with_function_level": strongly_connected(full_graph),
        "function_level_imports": sorted(
            (n, line, t) for n, m in modules.items() for line, t in m.function_imports
        ),
        "long_functions": sorted(
            (n, q, line, loc) for n, m in modules.items() for q, line, loc in m.long_functions
        ),
        "long_modules": sorted(
            (n, m.lines) for n, m in modules.items() if m.lines > MAX_MODULE_LINES
        ),
        "reflection": sorted(
            (n, line, what) for n, m in modules.items() for line, what in m.reflection
        ),
    }


def _table(figures: dict, verbose: bool) -> str:
    out = []
    reflective = sorted({n for n, _, _ in figures["reflection"]})
    rows = [
        ("modules", figures["modules"]),
        ("lines", figures["lines"]),
        ("import cycles (module-level imports)", len(figures["cycles_module_level"])),
        ("import cycles (module- + function-level)", len(figures["cycles_with_function_level"])),
        ("function-level jaxmeta imports", len(figures["function_level_imports"])),
        (f"functions over {MAX_FUNCTION_LINES} lines of code", len(figures["long_functions"])),
        (f"modules over {MAX_MODULE_LINES} lines", len(figures["long_modules"])),
        ("reflection uses", len(figures["reflection"])),
        ("modules using reflection", len(reflective)),
    ]
    width = max(len(k) for k, _ in rows)
    out += [f"{k:<{width}}  {v:>6}" for k, v in rows]
    for kind in ("cycles_module_level", "cycles_with_function_level"):
        for comp in figures[kind]:
            out.append(f"\ncycle ({kind.removeprefix('cycles_')}): " + " <-> ".join(comp))
    if figures["long_functions"]:
        out.append("\nlong functions:")
        out += [f"  {n}:{line} {q}  {loc}" for n, q, line, loc in figures["long_functions"]]
    if figures["long_modules"]:
        out.append("\nlong modules:")
        out += [f"  {n}  {lines}" for n, lines in figures["long_modules"]]
    out.append("\nreflection: " + ", ".join(reflective))
    if verbose:
        out.append("\nfunction-level jaxmeta imports:")
        out += [f"  {n}:{line} -> {t}" for n, line, t in figures["function_level_imports"]]
        out.append("\nreflection uses:")
        out += [f"  {n}:{line} {what}" for n, line, what in figures["reflection"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every import and use")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    figures = measure(args.root)
    print(json.dumps(figures, indent=1) if args.json else _table(figures, args.verbose))
    return 0


if __name__ == "__main__":
    sys.exit(main())
