"""A workdir trained before the engine was restructured (issue 14) still works unchanged.

``tests/data/pre14_workdir.tar.gz`` is a tiny Omniglot MAML run (``configs/tests/tiny.yaml``:
Conv-4 with 8 filters, 20 meta-steps, checkpoints at steps 10 and 20, best at 20) written by
``jaxmeta train`` at commit eaf8919, before any change. The numbers below were recorded with
that code on one machine. The restructured engine must restore its checkpoints, evaluate them
to the recorded accuracy, resume the run exactly, and ``jaxmeta.load`` it.

Which promise holds across machines: the recorded accuracies and logits are float32 results of
another CPU and XLA version, so they are compared with tolerances that cover that (see each
constant); bit-identity is a promise about one machine and one set of versions, so resuming is
checked against a run computed in the same test.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_once_compiles

import jaxmeta
from jaxmeta.cli import main
from jaxmeta.train import Checkpoints, load_config, read_metrics, train_and_evaluate

FIXTURE = Path(__file__).resolve().parent / "data" / "pre14_workdir.tar.gz"

# Recorded at eaf8919 (``jaxmeta evaluate`` on the best checkpoint, step 20).
TEST_ACCURACY = 0.30199999213218687
TEST_ACCURACY_INDUCTIVE = 0.27999999299645423
# Recorded at eaf8919: the run resumed from step 20 to step 30 (``--set train.steps=30``).
RESUMED_TEST_ACCURACY = 0.2919999897480011
# Recorded at eaf8919: ``jaxmeta.load(workdir).predict`` on the synthetic task of _task().
LOGITS_INDUCTIVE_ROW0 = [0.10472, -0.30704, -0.10305, 0.21285, -0.23992]
LOGITS_TRANSDUCTIVE_ROW6 = [-0.13792, -0.26209, -0.40024, 0.40495, 0.55632]

# Why these tolerances hold on other CPUs and XLA versions: the test accuracy is the mean over
# 20 episodes x 25 queries (500 predictions) of a barely trained model whose logits lie close
# together, so a different summation order (another SIMD width, a fused op) may flip a near-tie.
# Float32 rounding differences of ~1e-6 relative, carried through 4 convolutions, 2 inner
# steps and (when resuming) 10 Adam steps, stay below 1e-3 in the logits; ties closer than that
# are a few of 500 predictions, far below 0.02 (10 predictions). The recorded logits (rounded to
# 5 decimals when recorded) are compared at 1e-3 for the same reason. A wrong restore (another
# step, a mis-mapped parameter, another BatchNorm mode) moves accuracy and logits by far more.
ACCURACY_TOLERANCE = 0.02
LOGITS_TOLERANCE = 1e-3


@pytest.fixture
def workdir(tmp_path) -> Path:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "pre14_workdir"


@pytest.fixture
def data_sets(omniglot, omniglot_data_dir) -> list[str]:
    return [f"data.data_dir={omniglot_data_dir}", "data.download=false"]


def _task():
    rng = np.random.default_rng(0)
    sx = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8) // 200 * 255
    qx = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8) // 200 * 255
    return sx, [0, 1, 2, 3, 4], qx


def test_pre14_checkpoint_evaluates_to_the_recorded_accuracy(workdir, data_sets, monkeypatch):
    monkeypatch.setenv("JAXMETA_CACHE_DIR", "off")
    sets = [x for s in data_sets for x in ("--set", s)]
    with run_once_compiles():  # each evaluation program runs once
        assert main(["evaluate", "--workdir", str(workdir), *sets]) == 0
    res = json.loads((workdir / "eval_test_best_20ep.json").read_text())
    assert (res["step"], res["checkpoint"], res["episodes"]) == (20, "best", 20)
    assert res["accuracy"] == pytest.approx(TEST_ACCURACY, abs=ACCURACY_TOLERANCE)
    assert res["accuracy_inductive"] == pytest.approx(
        TEST_ACCURACY_INDUCTIVE, abs=ACCURACY_TOLERANCE
    )
    # The run's own test result, written by the old code, says the same.
    old = json.loads((workdir / "eval_test.json").read_text())
    assert old["accuracy"] == pytest.approx(res["accuracy"], abs=ACCURACY_TOLERANCE)


def _resume(workdir: Path, steps: int, data_sets: list[str]) -> dict:
    cfg = load_config(workdir / "config.yaml", [f"train.steps={steps}", *data_sets])
    return train_and_evaluate(cfg, workdir, progress=False, log=lambda _: None)


def _checksum(workdir: Path, step: int) -> str:
    ckpt = Checkpoints(workdir, read_only=True)
    try:
        assert ckpt.latest_step() == step
        return ckpt.saved_meta()["checksum"]
    finally:
        ckpt.close()


@pytest.mark.slow
def test_pre14_workdir_resumes_exactly(workdir, data_sets, tmp_path):
    """The old run resumes (20 -> 30) to the accuracy the old code reached, and resuming is
    exact on this machine: stopping at 25 and resuming again gives the same trained state,
    bit for bit, as going from 20 to 30 in one go."""
    out = _resume(workdir, 30, data_sets)
    assert out["start_step"] == 20 and out["steps"] == 30
    assert out["test"]["accuracy"] == pytest.approx(RESUMED_TEST_ACCURACY, abs=ACCURACY_TOLERANCE)

    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path / "twice", filter="data")
    interrupted = tmp_path / "twice" / "pre14_workdir"
    assert _resume(interrupted, 25, data_sets)["steps"] == 25
    again = _resume(interrupted, 30, data_sets)
    assert again["start_step"] == 25 and again["steps"] == 30
    assert _checksum(interrupted, 30) == _checksum(workdir, 30)

    # Every training row after step 20 is logged once, with the same values. (The test
    # accuracies may differ: stopping at 25 validates there, so the best checkpoint may be 25.)
    def train_rows(wd: Path) -> list[tuple]:
        rows = read_metrics(wd / "metrics.jsonl")
        return [(r["step"], r["loss"], r["accuracy"]) for r in rows if r["split"] == "train"]

    resumed = [r for r in train_rows(workdir) if r[0] > 20]
    assert [r[0] for r in resumed] == [25, 30]
    assert [r for r in train_rows(interrupted) if r[0] > 20] == resumed


def test_pre14_workdir_loads_as_a_classifier(workdir):
    clf = jaxmeta.load(workdir)
    assert (clf.step, clf.checkpoint, clf.ways, clf.inner_steps) == (20, "best", 5, 2)
    sx, sy, qx = _task()
    with run_once_compiles():  # each program runs once: the same computation, compiled faster
        inductive = np.asarray(clf.predict(sx, sy, qx))
        transductive = np.asarray(clf.predict(sx, sy, qx, bn_mode="transductive"))
    np.testing.assert_allclose(inductive[0], LOGITS_INDUCTIVE_ROW0, atol=LOGITS_TOLERANCE)
    np.testing.assert_allclose(transductive[6], LOGITS_TRANSDUCTIVE_ROW6, atol=LOGITS_TOLERANCE)
