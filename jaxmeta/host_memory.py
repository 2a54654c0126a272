"""Transparent huge pages for the C library's malloc: XLA:CPU's temporaries without page faults.

XLA:CPU allocates the temporaries of each call of a compiled program as one buffer through
the C library's ``malloc`` and frees it when the call returns: 173 MB for the canonical MAML
step with one query per class (Conv-4, 5-way 1-shot, 32 tasks, second order). glibc serves a
request that large with a fresh memory mapping and unmaps it on ``free``, so every step the
kernel maps and zeroes the whole buffer again, one 4 KiB page at a time: ~42,000 page faults
per step and about a fifth of the step's CPU time in the kernel (``perf``, 2-core CPU,
jax 0.10.2, 2026-12-07; benchmarks/README.md, "Host memory").

glibc's tunable ``glibc.malloc.hugetlb=1`` (glibc 2.35+) makes ``malloc`` advise transparent
huge pages for the memory it maps, so the kernel (THP mode ``madvise`` or ``always``) maps
that buffer in 2 MiB pages: ~7x fewer page faults, the same memory use. It is **opt-in**
(``JAXMETA_HUGE_PAGES=1``) because it is not faster everywhere: on the idle 2-core CPU
(2026-12-07, two interleaved rounds) the second-order step with 1 query per class took
3-12% less time with 1 inner step and 10-21% less with 5, but the 15-query step (tasks one
at a time) took 9-13% more. Tunables are read when a process starts, so with the opt-in set
the ``jaxmeta`` command starts itself again with the tunable (:func:`reexec_with_huge_pages`,
once, before it imports JAX). In your own scripts, start Python with it:
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python train.py``. Where it cannot apply (not Linux,
not glibc 2.35+, THP off) nothing changes.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["huge_page_environment", "reexec_with_huge_pages"]

TUNABLE = "glibc.malloc.hugetlb"
OPT_IN = "JAXMETA_HUGE_PAGES"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MIN_GLIBC = (2, 35)


def _glibc_version() -> tuple[int, ...] | None:
    name, version = platform.libc_ver()
    if name != "glibc":
        return None
    try:
        return tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return None


def _thp_available(mode_file: Path) -> bool:
    """Whether the kernel's THP mode (``always [madvise] never``) lets malloc's advice work."""
    try:
        mode = mode_file.read_text()
    except OSError:
        return False
    return "[never]" not in mode


def huge_page_environment(
    environ: Mapping[str, str],
    *,
    glibc: tuple[int, ...] | None = None,
    mode_file: Path = THP_MODE,
) -> dict[str, str] | None:
    """``environ`` with ``glibc.malloc.hugetlb=1`` added to ``GLIBC_TUNABLES``, or ``None``
    when there is nothing to add: the opt-in ``JAXMETA_HUGE_PAGES=1`` is not set, the tunable
    is set already (to any value), the C library is not glibc 2.35+ (``glibc``: its version,
    default the running one) or the kernel's transparent huge pages are off."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(OPT_IN) != "1" or any(
        t.split("=", 1)[0] == TUNABLE for t in tunables.split(":") if t
    ):
        return None
    glibc = _glibc_version() if glibc is None else glibc
    if glibc is None or glibc < MIN_GLIBC or not _thp_available(mode_file):
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"}


def reexec_with_huge_pages() -> None:
    """Start this process again with :func:`huge_page_environment` (same interpreter, same
    command line, same process id); return when there is nothing to add. Call it first
    thing in a command's entry point, before any thread or JAX backend exists."""
    if not sys.platform.startswith("linux"):
        return
    env = huge_page_environment(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)
