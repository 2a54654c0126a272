"""The package's shape (issue 29), measured from the source by ``tools/shape.py`` (``ast`` only).

The bounds are what the code reached; lower them when it improves, never raise them.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Function-level ``jaxmeta`` imports left: the CLI's 18 (``jaxmeta --help`` imports no JAX),
# ``jaxmeta.inference``'s 5 (the engine, imported when a run is loaded), the cheetah's 2 (brax).
MAX_FUNCTION_LEVEL_IMPORTS = 25
MAX_LONG_FUNCTIONS = 1  # maml_rl
MAX_LONG_MODULES = 1  # cli.py
MAX_REFLECTIVE_MODULES = 8


@pytest.fixture(scope="module")
def shape():
    spec = importlib.util.spec_from_file_location("_jaxmeta_shape", ROOT / "tools" / "shape.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures(shape):
    return shape.measure(ROOT)


def test_no_import_cycles(figures):
    assert figures["cycles_module_level"] == []
    assert figures["cycles_with_function_level"] == [], (
        "import cycle among jaxmeta modules (module- and function-level imports): "
        "move the shared code down instead of importing inside a function"
    )


def test_function_level_imports_only_go_down(figures):
    found = figures["function_level_imports"]
    assert len(found) <= MAX_FUNCTION_LEVEL_IMPORTS, "\n".join(map(str, found))


def test_long_functions_modules_and_reflection_only_go_down(figures):
    assert len(figures["long_functions"]) <= MAX_LONG_FUNCTIONS, figures["long_functions"]
    assert len(figures["long_modules"]) <= MAX_LONG_MODULES, figures["long_modules"]
    reflective = {module for module, _, _ in figures["reflection"]}
    assert len(reflective) <= MAX_REFLECTIVE_MODULES, sorted(reflective)


def test_the_check_finds_a_cycle_and_function_level_imports(shape, tmp_path):
    """The measure itself: a package-level cycle through a function-level import and a
    parent package's ``__init__`` is found; ``TYPE_CHECKING`` imports are not edges."""
    pkg = tmp_path / "jaxmeta"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from jaxmeta.sub import b\n")
    (pkg / "sub" / "b.py").write_text("X = 1\n")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from jaxmeta import c\n"
        "def f():\n    from jaxmeta.sub.b import X\n    return X\n"
    )
    (pkg / "c.py").write_text("import jaxmeta.a\n")
    (pkg / "sub" / "d.py").write_text("def g():\n    from jaxmeta.c import a\n")
    # a -> sub (the package runs first) and sub.b; sub -> sub.b; sub.d -> c -> a: no cycle.
    figures = shape.measure(tmp_path)
    assert figures["cycles_with_function_level"] == []
    assert [(m, t) for m, _, t in figures["function_level_imports"]] == [
        ("jaxmeta.a", "jaxmeta.sub.b"),
        ("jaxmeta.sub.d", "jaxmeta.c"),
    ]
    (pkg / "sub" / "b.py").write_text("def h():\n    import jaxmeta.a\n")
    figures = shape.measure(tmp_path)
    assert figures["cycles_module_level"] == []
    assert figures["cycles_with_function_level"] == [["jaxmeta.a", "jaxmeta.sub", "jaxmeta.sub.b"]]
