"""Smoke tests of the runnable examples in examples/ (tiny settings: JAXMETA_EXAMPLE_TINY=1).

``fewshot_my_images.py`` needs a trained run: it is tested in tests/test_inference.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str, timeout: float = 600) -> str:
    env = {**os.environ, "JAXMETA_EXAMPLE_TINY": "1", "JAX_PLATFORMS": "cpu"}
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


def test_train_in_python(omniglot, omniglot_data_dir, tmp_path):
    out = run_example(
        "train_in_python.py", "--data-dir", str(omniglot_data_dir), "--out", str(tmp_path)
    )
    assert "step    20  loss" in out
    assert "test accuracy:" in out and "95% CI, 20 episodes" in out
    assert "restored and checked: True" in out
    assert (tmp_path / "params").is_dir()


def test_first_vs_second_order():
    out = run_example("first_vs_second_order.py")
    assert "second order:" in out and "first order :" in out
    assert out.count("ms/meta-step") == 2 and out.count("test MSE after 1 step") == 2
