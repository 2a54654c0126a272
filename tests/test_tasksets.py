"""``jaxmeta.data.tasksets`` (one call from a dataset name to its tasks) and
``jaxmeta.evaluate`` at the top level."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxmeta


def test_sinusoid_tasksets_and_top_level_evaluate():
    sets = jaxmeta.data.tasksets("sinusoid", shots=5, queries=5)
    assert sets.source.name == "sinusoid" and sets.test is not None
    ep = jax.jit(lambda k: sets.train.sample(k, tasks=3))(jax.random.key(0))
    assert ep.support_x.shape == (3, 5, 1) and ep.query_y.shape == (3, 5, 1)
    model = jaxmeta.MLP(hidden=(8,), out=1)
    learner = jaxmeta.maml(model.apply, inner_lr=0.01, inner_steps=1, loss_fn=jaxmeta.mse_loss)
    params = model.init(jax.random.key(0), ep.support_x[0])
    test = sets.test.fixed(episodes=8, seed=3)
    res = jaxmeta.evaluate(learner, params, test, batch_size=8)  # regression: float labels
    assert res["episodes"] == 8 and res["mse"] > 0
    assert res["ci95"] == pytest.approx(1.96 * np.std(res["per_episode"]) / np.sqrt(8), rel=1e-4)
    with pytest.raises(ValueError, match=r"unknown option 'shotz' \(did you mean 'shots'\?\)"):
        jaxmeta.data.tasksets("sinusoid", shotz=5)
    with pytest.raises(ValueError, match="shots: must be positive"):
        jaxmeta.data.tasksets("sinusoid", shots=0)
    with pytest.raises(ValueError, match="unknown dataset 'omniglott'"):
        jaxmeta.data.tasksets("omniglott", ways=5)


def test_omniglot_tasksets(omniglot, omniglot_data_dir, omniglot_zip_dir):
    sets = jaxmeta.data.tasksets(
        "omniglot",
        ways=5,
        shots=1,
        queries=2,
        data_dir=str(omniglot_data_dir),
        manual_dir=str(omniglot_zip_dir),
        download=False,
    )
    # The MAML split: 1100 / 100 / 423 characters of 20 drawings, each split on the device.
    sizes = [s.data.shape for s in (sets.train, sets.validation, sets.test)]
    assert sizes == [(1100, 20, 28, 28), (100, 20, 28, 28), (423, 20, 28, 28)]
    draw = jax.jit(lambda k, d: sets.test.sample(k, tasks=2, data=d))
    ep = draw(jax.random.key(1), sets.test.data)
    assert ep.support_x.shape == (2, 5, 28, 28, 1) and ep.query_x.shape == (2, 10, 28, 28, 1)
    np.testing.assert_array_equal(ep.support_y[0], np.arange(5))
    fixed = sets.test.fixed(episodes=3, queries=15)
    again = sets.source.eval_episodes("test", episodes=3, seed=0, queries=15)
    np.testing.assert_array_equal(fixed.query_x, again.query_x)
    assert fixed.query_x.shape == (3, 75, 28, 28, 1)
