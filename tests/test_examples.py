"""Smoke tests of the runnable examples in examples/ (tiny settings: JAXMETA_EXAMPLE_TINY=1).

``fewshot_my_images.py`` needs a trained run: it is tested in tests/test_inference.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RUN_ONCE_ENV

REPO = Path(__file__).resolve().parents[1]


def tiny_env() -> dict[str, str]:
    """Tiny settings, and the programs compiled with XLA's backend optimisations off
    (``conftest.RUN_ONCE_ENV``): the examples' programs run a few times on tiny shapes
    (their numbers mean nothing here)."""
    return {**os.environ, "JAXMETA_EXAMPLE_TINY": "1", "JAX_PLATFORMS": "cpu", **RUN_ONCE_ENV}


def run_example(name: str, *args: str, timeout: float = 600) -> str:
    env = tiny_env()
    p = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    assert p.returncode == 0, f"{name} failed:\n{p.stdout}\n{p.stderr[-3000:]}"
    return p.stdout


@pytest.mark.slow
def test_train_in_python(omniglot, omniglot_data_dir, tmp_path):
    """Tiny settings, interrupted by Ctrl-C (SIGINT) once training has started: it stops
    cleanly (no traceback), then tests and saves what it trained."""
    env = {**tiny_env(), "PYTHONUNBUFFERED": "1"}
    args = ["--data-dir", str(omniglot_data_dir), "--out", str(tmp_path), "--steps", "10000000"]
    # A Ctrl-C reaches Python only if SIGINT is not ignored (as it is in background jobs):
    # the child restores Python's handler itself, then runs the example as __main__ (a
    # preexec_fn would make subprocess fork this multithreaded process).
    launcher = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
        " sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", launcher, str(REPO / "examples" / "train_in_python.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    head = []
    for line in p.stdout:  # the header is printed right before the training loop
        head.append(line)
        if line.startswith("MAML 5-way 1-shot"):
            break
    p.send_signal(signal.SIGINT)
    try:
        rest, err = p.communicate(timeout=600)
    finally:
        p.kill()
    out = "".join(head) + rest
    assert p.returncode == 0 and "Traceback" not in err, f"{out}\n{err[-3000:]}"
    assert "interrupted after step" in out
    assert "test accuracy:" in out and "95% CI, 20 episodes" in out
    assert "restored and checked: True" in out
    assert (tmp_path / "params").is_dir()


def test_first_vs_second_order():
    out = run_example("first_vs_second_order.py")
    assert "second order:" in out and "first order :" in out
    assert out.count("ms/meta-step") == 2 and out.count("test MSE after 1 step") == 2
