"""Test-wide settings: strict rank promotion (no silent broadcasting between ranks, the
project's convention, docs/architecture.md) and shared fixtures."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

REPO = Path(__file__).resolve().parents[1]

# One persistent XLA compilation cache for the whole run, shared by the xdist workers and the
# subprocesses the tests start: many tests compile the same programs (the tiny Omniglot run,
# the sinusoid MLP), and only the first compiles each. The controller creates it before the
# workers start (they inherit the variable) and removes it at the end; a test that needs a
# cold cache or no cache sets its own. Every compiled program is cached (no size or time floor).
_XLA_CACHE_ENV = "JAXMETA_TEST_XLA_CACHE"


def _use_xla_cache(directory: str) -> None:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", directory)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


# XLA's CPU compiler emits each fusion through its newer MLIR "fusion emitters" by default;
# its older loop emitters compile the suite's programs about twice as fast and run them as
# fast (2026-12-07, 2-core CPU, CPU seconds: the algorithm contract's 11 meta-steps compile
# in 74 s instead of 140 s; tests/test_conv4, test_resnet12, test_leo and test_maml 435 ->
# 325 s). The code generated differs, the computation does not (same HLO, no fast-math
# either way). Only the suite's processes use it, and only where the installed XLA knows
# the flag (an unknown flag in XLA_FLAGS aborts the process): the controller probes it once.
_FAST_COMPILE_FLAG = "--xla_cpu_use_fusion_emitters=false"


def _use_fast_cpu_compiles() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_use_fusion_emitters" in flags:  # the caller chose
        return
    trial = f"{flags} {_FAST_COMPILE_FLAG}".strip()
    probe = subprocess.run(
        [sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(2).sum().block_until_ready()"],
        env={**os.environ, "XLA_FLAGS": trial, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        timeout=120,
    )
    if probe.returncode == 0:
        os.environ["XLA_FLAGS"] = trial


def _refuse_xdist_that_does_not_group(config) -> None:
    """pytest 9.2 renamed the node id that pytest-xdist (3.8) rewrites to ``<id>@<group>``
    under ``--dist loadgroup`` (pytest-dev/pytest-xdist#1386): the groups are then split
    silently and each worker builds a group's shared fixtures again (the gpu.sh dry run:
    60 CPU s twice). tests/test_suite.py checks the grouping itself for any other pair."""
    from importlib.metadata import version

    from packaging.version import Version

    if getattr(config.option, "dist", "no") != "loadgroup" or not getattr(
        config.option, "numprocesses", None
    ):
        return
    pytest_v, xdist_v = Version(version("pytest")), Version(version("pytest-xdist"))
    if pytest_v >= Version("9.2") and xdist_v <= Version("3.8.0"):
        raise pytest.UsageError(
            f"pytest {pytest_v} with pytest-xdist {xdist_v} does not group tests (--dist"
            " loadgroup); install the tested set: pip install -c constraints.txt -e '.[test]'"
        )


def pytest_configure(config) -> None:
    directory = os.environ.get(_XLA_CACHE_ENV)
    if directory is None:  # the controller (or a run without xdist): before any compile
        directory = tempfile.mkdtemp(prefix="jaxmeta-tests-xla-")
        os.environ[_XLA_CACHE_ENV] = directory
        config._jaxmeta_xla_cache = directory
        _use_fast_cpu_compiles()
        _refuse_xdist_that_does_not_group(config)
    _use_xla_cache(directory)


def pytest_unconfigure(config) -> None:
    directory = getattr(config, "_jaxmeta_xla_cache", None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def pytest_report_header(config) -> list[str]:
    """Say when the installed packages are not the set CI tests (``constraints.txt``): a
    failure may then come from a newer release rather than from the change under test."""
    from importlib.metadata import PackageNotFoundError, version

    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#") and "==" in line:
            name, pinned = line.split("==", 1)
            pins[name.strip()] = pinned.strip()
    differ = []
    for name, pinned in sorted(pins.items()):
        try:
            got = version(name)
        except PackageNotFoundError:
            got = "missing"
        if got != pinned:
            differ.append(f"{name} {got} (tested {pinned})")
    flags = [f"XLA_FLAGS: {os.environ['XLA_FLAGS']}"] if os.environ.get("XLA_FLAGS") else []
    if not differ:
        return ["packages: the tested set (constraints.txt)", *flags]
    return [
        "packages NOT the tested set (pip install -c constraints.txt): " + ", ".join(differ),
        *flags,
    ]


def shipped_algorithms() -> set[str]:
    """The algorithms the package itself registers (``jaxmeta.algorithms.SHIPPED``): the set
    every "each algorithm is covered" test compares with. Plug-ins registered while the suite
    runs (``jaxmeta.rl``'s ``maml_trpo``/``maml_rl`` once an RL test imported it, test
    plug-ins) are not included, so those tests do not depend on test order."""
    from jaxmeta.algorithms import SHIPPED

    return set(SHIPPED)


def algorithm_spec(name: str):
    """The registered :class:`~jaxmeta.algorithms.base.AlgorithmSpec` of ``name``: its
    factory, its model kind and the example every per-algorithm test builds."""
    from jaxmeta.algorithms import ALGORITHMS

    return ALGORITHMS[name]


@pytest.fixture(scope="session")
def omniglot_zip_dir() -> Path:
    """Folder with the genuine Omniglot zips (../shared/data/omniglot or $JAXMETA_OMNIGLOT_DIR)."""
    path = Path(
        os.environ.get("JAXMETA_OMNIGLOT_DIR", REPO.parent / "shared" / "data" / "omniglot")
    )
    if not (path / "images_background.zip").exists():
        pytest.fail(f"Omniglot zips not found in {path}; set JAXMETA_OMNIGLOT_DIR")
    return path


@pytest.fixture(scope="session")
def omniglot_data_dir(tmp_path_factory) -> Path:
    """A fresh TFDS data dir for this session (the prepared Omniglot lives here)."""
    return tmp_path_factory.mktemp("tfds_data")


@pytest.fixture(scope="session")
def omniglot(omniglot_zip_dir, omniglot_data_dir):
    """The genuine Omniglot (28x28), prepared once per session from ``omniglot_zip_dir``."""
    from jaxmeta.data import load_omniglot

    return load_omniglot(data_dir=omniglot_data_dir, manual_dir=omniglot_zip_dir, download=False)


def jit_run_once(fn, **kwargs):
    """``jax.jit`` with XLA's backend optimisations off, for the programs a test runs a few
    times on tiny shapes (float64 gradient checks): they compile about 2x faster and the
    unoptimised code is still exact (no fast-math either way), only slower to run."""
    from jaxmeta.train.build import RUN_ONCE_COMPILER_OPTIONS

    return jax.jit(fn, compiler_options=RUN_ONCE_COMPILER_OPTIONS, **kwargs)


# For subprocesses whose programs run a few times on tiny shapes: every program they compile
# (the library's jits included) has XLA's backend optimisations off, as with jit_run_once.
RUN_ONCE_ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}


def xla_flags_with(*flags: str) -> str:
    """This process's ``XLA_FLAGS`` with ``flags`` appended, for a subprocess's environment:
    the suite's own flags (the fast-compiling loop emitters above) stay."""
    return " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()


@contextlib.contextmanager
def run_once_compiles():
    """Inside, every program compiled (the library's own jits included) has XLA's backend
    optimisations off (``jax_disable_most_optimizations``, what :func:`jit_run_once` does
    for one function): for tests that run library programs a few times on tiny shapes. The
    persistent cache keys on the option; a program compiled inside and called again after
    keeps its (slower, equally exact) executable."""
    from jax._src import compiler  # the flag has no public getter

    before = compiler._DISABLE_MOST_OPTIMIZATIONS.value
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
