"""A workdir trained before the engine was restructured (issue 14) still works unchanged.

``tests/data/pre14_workdir.tar.gz`` is a tiny Omniglot MAML run (``configs/tests/tiny.yaml``:
Conv-4 with 8 filters, 20 meta-steps, checkpoints at steps 10 and 20, best at 20) written by
``jaxmeta train`` at commit eaf8919, before any change. The numbers below were recorded with
that code: the restructured engine must restore its checkpoints (same tree, same checksum),
evaluate them to the same accuracy, resume the run bit-identically, and ``jaxmeta.load`` it.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import jaxmeta
from jaxmeta.cli import main
from jaxmeta.train import Checkpoints, load_config, train_and_evaluate

FIXTURE = Path(__file__).resolve().parent / "data" / "pre14_workdir.tar.gz"

# Recorded at eaf8919 (``jaxmeta evaluate`` on the best checkpoint, step 20).
TEST_ACCURACY = 0.30199999213218687
TEST_ACCURACY_INDUCTIVE = 0.27999999299645423
# Recorded at eaf8919: the run resumed from step 20 to step 30 (``--set train.steps=30``).
RESUMED_TEST_ACCURACY = 0.2919999897480011
RESUMED_CHECKSUM = "sha256:70c3ce389faed9515c3960f471127ed548f006c4b4bd75be3f8b9af4132082ea"
# Recorded at eaf8919: ``jaxmeta.load(workdir).predict`` on the synthetic task of _task().
LOGITS_INDUCTIVE_ROW0 = [0.10472, -0.30704, -0.10305, 0.21285, -0.23992]
LOGITS_TRANSDUCTIVE_ROW6 = [-0.13792, -0.26209, -0.40024, 0.40495, 0.55632]


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
    assert main(["evaluate", "--workdir", str(workdir), *sets]) == 0
    res = json.loads((workdir / "eval_test_best_20ep.json").read_text())
    assert (res["step"], res["checkpoint"], res["episodes"]) == (20, "best", 20)
    assert res["accuracy"] == pytest.approx(TEST_ACCURACY, abs=1e-9)
    assert res["accuracy_inductive"] == pytest.approx(TEST_ACCURACY_INDUCTIVE, abs=1e-9)
    # The run's own test result, written by the old code, says the same.
    old = json.loads((workdir / "eval_test.json").read_text())
    assert old["accuracy"] == pytest.approx(res["accuracy"], abs=1e-9)


def test_pre14_workdir_resumes_bit_identically(workdir, data_sets):
    cfg = load_config(workdir / "config.yaml", ["train.steps=30", *data_sets])
    out = train_and_evaluate(cfg, workdir, progress=False, log=lambda _: None)
    assert out["start_step"] == 20 and out["steps"] == 30
    assert out["test"]["accuracy"] == pytest.approx(RESUMED_TEST_ACCURACY, abs=1e-9)
    ckpt = Checkpoints(workdir, read_only=True)
    try:
        assert ckpt.latest_step() == 30
        assert ckpt.saved_meta()["checksum"] == RESUMED_CHECKSUM
    finally:
        ckpt.close()


def test_pre14_workdir_loads_as_a_classifier(workdir):
    clf = jaxmeta.load(workdir)
    assert (clf.step, clf.checkpoint, clf.ways, clf.inner_steps) == (20, "best", 5, 2)
    sx, sy, qx = _task()
    inductive = np.asarray(clf.predict(sx, sy, qx))
    transductive = np.asarray(clf.predict(sx, sy, qx, bn_mode="transductive"))
    np.testing.assert_allclose(inductive[0], LOGITS_INDUCTIVE_ROW0, atol=2e-5)
    np.testing.assert_allclose(transductive[6], LOGITS_TRANSDUCTIVE_ROW6, atol=2e-5)
