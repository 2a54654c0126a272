"""LEO (Rusu et al. 2019): the model against naive references and hand computations, its
meta-gradient against finite differences (float64), a short run that learns on synthetic
embeddings written in the paper's pickle format."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_once_compiles
from jax.test_util import check_grads
from leo_pickles import write_leo_embeddings

import jaxmeta
from jaxmeta.algorithms import leo as leo_module
from jaxmeta.algorithms.leo import (
    clip_per_tensor,
    gaussian,
    kl_divergence,
    leo,
    orthogonality_penalty,
)
from jaxmeta.data import LEOEmbeddings
from jaxmeta.models.identity import Identity
from jaxmeta.types import Episode

IDENTITY = Identity()


def _task(key, ways, shots, queries, d, dtype=jnp.float32):
    """One episode of well-separated random classes (class-major labels)."""
    kc, kx = jax.random.split(key)
    centers = jax.random.normal(kc, (ways, 1, d), dtype)
    x = centers + 0.3 * jax.random.normal(kx, (ways, shots + queries, d), dtype)
    y = jnp.repeat(jnp.arange(ways, dtype=jnp.int32), shots)
    yq = jnp.repeat(jnp.arange(ways, dtype=jnp.int32), queries)
    return Episode(x[:, :shots].reshape(-1, d), y, x[:, shots:].reshape(-1, d), yq)


# ----------------------------------------------------------------------------- hand checks


@jax.enable_x64(True)
def test_kl_matches_a_hand_computation():
    mean = jnp.array([[0.3, -1.2], [2.0, 0.1]], jnp.float64)
    u = jnp.array([[0.5, 1.0], [0.8, 1.5]], jnp.float64)  # std = exp(u) - 1 + offset
    z, kl = gaussian(jnp.concatenate([mean, u], -1), jax.random.key(0), offset=0.25)
    std = np.exp(np.asarray(u)) - 0.75
    eps = (np.asarray(z) - np.asarray(mean)) / std
    np.testing.assert_allclose(eps, jax.random.normal(jax.random.key(0), (2, 2), jnp.float64))
    hand = []
    for zi, mi, si in zip(np.ravel(z), np.ravel(mean), np.ravel(std), strict=True):
        log_q = -0.5 * ((zi - mi) / si) ** 2 - math.log(si) - 0.5 * math.log(2 * math.pi)
        log_p = -0.5 * zi**2 - 0.5 * math.log(2 * math.pi)
        hand.append(log_q - log_p)
    np.testing.assert_allclose(float(kl), sum(hand) / 4, rtol=1e-12)
    assert float(kl_divergence(mean, mean, jnp.ones_like(mean))) == pytest.approx(
        float(jnp.mean(0.5 * mean**2))
    )
    # Evaluation: the means, no KL.
    z_eval, kl_eval = gaussian(jnp.concatenate([mean, u], -1), None)
    np.testing.assert_array_equal(z_eval, mean)
    assert float(kl_eval) == 0.0


@jax.enable_x64(True)
def test_orthogonality_matches_a_hand_computation():
    w = np.array([[1.0, 2.0, 0.0, -1.0], [0.5, -0.5, 3.0, 1.0], [2.0, 4.0, 0.0, -2.0]])
    rows, total = w.shape[0], 0.0
    for i in range(rows):
        for j in range(rows):
            c = sum(w[i, k] * w[j, k] for k in range(4)) / (
                math.sqrt(sum(v * v for v in w[i])) * math.sqrt(sum(v * v for v in w[j]))
            )
            total += (c - (1.0 if i == j else 0.0)) ** 2
    got = float(orthogonality_penalty(jnp.asarray(w, jnp.float64)))
    assert got == pytest.approx(total / rows**2, rel=1e-12)
    assert got > 0.2  # rows 0 and 2 are parallel
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))[0][:3]
    assert float(orthogonality_penalty(jnp.asarray(q))) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- naive reference


def _naive_predict(w, sx, sy, qx, *, ways, inner_steps, finetune_steps):
    """LEO's evaluation (means, no dropout) written as plain loops over examples and pairs."""
    n, lat = sx.shape[0], w.encoder.shape[1]
    d = sx.shape[1]
    shots = n // ways
    codes = [sx[i] @ w.encoder for i in range(n)]
    rel = []
    for i in range(n):
        acc = 0.0
        for j in range(n):
            h = jnp.concatenate([codes[i], codes[j]])
            h = jax.nn.relu(h @ w.relation[0])
            h = jax.nn.relu(h @ w.relation[1])
            acc = acc + h @ w.relation[2]
        rel.append(acc / n)
    z = []
    for c in range(ways):
        members = [rel[i] for i in range(n) if int(sy[i]) == c]
        mean = sum(members) / len(members)
        z.append([mean[:lat] for _ in range(shots)])
    z = jnp.array([[jnp.asarray(v) for v in row] for row in z])  # [N, K, L]

    def decode(z):
        return jnp.stack(
            [jnp.stack([(z[c, k] @ w.decoder)[:d] for k in range(shots)]) for c in range(ways)]
        )

    def logits(x, cw):
        return jnp.stack([sum(x @ cw[c, k] for k in range(shots)) / shots for c in range(ways)])

    def loss(cw):
        total = 0.0
        for i in range(n):
            total = total - jax.nn.log_softmax(logits(sx[i], cw))[int(sy[i])]
        return total

    for _ in range(inner_steps):
        z = z - w.inner_lr[None, None, :] * jax.grad(lambda z: loss(decode(z)))(z)
    cw = decode(z)
    for _ in range(finetune_steps):
        cw = cw - w.finetune_lr[None, None, :] * jax.grad(loss)(cw)
    return jnp.stack([logits(qx[q], cw) for q in range(qx.shape[0])])


def _leo64(ways: int, d: int, **kw):
    """A float64 LEO on ``d``-d features (call inside ``jax.enable_x64``)."""
    return leo(IDENTITY.apply, ways=ways, input_shape=(d,), dtype="float64", **kw)


def test_latent_inner_loop_and_finetuning_match_a_naive_loop():
    with jax.enable_x64(True), run_once_compiles():  # tiny float64 programs, run once
        ways, shots, d = 2, 2, 6
        learner = _leo64(
            ways,
            d,
            num_latents=4,
            inner_steps=2,
            finetune_steps=2,
            inner_lr_init=0.5,
            finetune_lr_init=0.3,
        )
        params = learner.init(jax.random.key(0), {})
        w = params["leo"]
        # Distinct learning rates per latent / feature: the elementwise rates must be used.
        w = w._replace(
            inner_lr=w.inner_lr * jnp.linspace(0.5, 1.5, 4),
            finetune_lr=w.finetune_lr * jnp.linspace(0.5, 1.5, d),
        )
        params = {"model": {}, "leo": w}
        ep = _task(jax.random.key(1), ways, shots, 3, d, jnp.float64)
        got = learner.predict(params, ep.support_x, ep.support_y, ep.query_x)
        want = _naive_predict(
            w,
            ep.support_x,
            np.asarray(ep.support_y),
            ep.query_x,
            ways=ways,
            inner_steps=2,
            finetune_steps=2,
        )
        assert got.shape == (ways * 3, ways) and got.dtype == jnp.float64
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        # The loops did something: no adaptation gives other logits.
        still = _leo64(ways, d, num_latents=4, inner_steps=0, finetune_steps=0).predict(
            params, ep.support_x, ep.support_y, ep.query_x
        )
        assert float(jnp.max(jnp.abs(still - got))) > 1e-3
        # Labels order does not matter (codes are averaged per class by label).
        perm = jnp.array([2, 0, 3, 1])
        again = learner.predict(params, ep.support_x[perm], ep.support_y[perm], ep.query_x)
        np.testing.assert_allclose(again, got, rtol=1e-10, atol=1e-12)


def test_meta_gradient_matches_finite_differences():
    # Tiny float64 programs run a few times: compiled without XLA's backend optimisation
    # (exact all the same; 21 -> 10 CPU s with the one jitted loss below, 2026-12-07).
    with jax.enable_x64(True), run_once_compiles():
        ways, shots, d = 2, 2, 5
        # kl_weight 0: the KL's -log(std) has unbounded curvature where a std approaches its
        # 1e-10 floor (finite differences break there); its gradient is checked below on
        # scales away from the floor. encoder_penalty_weight 0: the penalty stops the
        # gradient through the adapted codes (the paper's definition), so its autodiff
        # gradient is by design not the derivative finite differences measure.
        learner = _leo64(
            ways,
            d,
            num_latents=3,
            inner_steps=2,
            finetune_steps=1,
            inner_lr_init=0.3,
            finetune_lr_init=0.1,
            dropout_rate=0.2,
            kl_weight=0.0,
            encoder_penalty_weight=0.0,
            l2_penalty_weight=0.01,
            orthogonality_penalty_weight=0.2,
        )
        params = learner.init(jax.random.key(2), {})
        ep = _task(jax.random.key(3), ways, shots, 2, d, jnp.float64)
        key = jax.random.key(4)  # fixed noise: a smooth function of the parameters
        # One program for the finite differences and the metrics (eagerly, outer_loss
        # compiles its pieces one by one).
        loss_and_metrics = jax.jit(lambda p: learner.outer_loss(p, ep, key))
        loss = lambda p: loss_and_metrics(p)[0]  # noqa: E731
        check_grads(loss, (params,), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)
        _, m = loss_and_metrics(params)
        for name in ("kl", "encoder_penalty", "orthogonality", "query_loss", "accuracy"):
            assert np.isfinite(float(m[name]))
        assert float(m["encoder_penalty"]) > 0  # the codes moved in the inner loop
        dist = jnp.concatenate(
            [jax.random.normal(key, (2, 3, 4)), jax.random.uniform(key, (2, 3, 4)) + 0.5], -1
        )
        check_grads(
            lambda p: gaussian(p, key, offset=0.1)[1],
            (dist,),
            order=1,
            modes=["rev"],
            eps=1e-6,
            atol=1e-7,
            rtol=1e-7,
        )


def test_gradients_are_clipped_per_tensor_by_value_then_norm():
    rng = np.random.default_rng(0)
    for g in (rng.normal(size=(5, 3)), 0.01 * rng.normal(size=(4,)), rng.normal(size=(2, 2))):
        got = np.asarray(clip_per_tensor(jnp.asarray(g), value=0.5, norm=0.8))
        want = np.clip(g, -0.5, 0.5)
        want = want * min(1.0, 0.8 / np.linalg.norm(want))
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert (
        np.abs(clip_per_tensor(jnp.asarray(rng.normal(size=(9,))), value=0.0, norm=0.0)).max() > 0.5
    )


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="ways must be"):
        leo(IDENTITY.apply, ways=1)
    with pytest.raises(ValueError, match="dropout_rate"):
        leo(IDENTITY.apply, ways=5, dropout_rate=1.0)
    with pytest.raises(ValueError, match="kl_weight must be >= 0"):
        leo(IDENTITY.apply, ways=5, kl_weight=-1.0)
    learner = leo(IDENTITY.apply, ways=3, input_shape=(4,), num_latents=2)
    params = learner.init(jax.random.key(0), {})
    x = jnp.zeros((4, 4))
    with pytest.raises(ValueError, match="same number of support examples per class"):
        learner.predict(params, x, jnp.array([0, 1, 2, 0]), x)


# ----------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_shapes_and_a_short_run_learns_on_synthetic_embeddings(tmp_path):
    """The paper's pickle layout (synthetic 640-d classes) -> the task source -> the engine's
    meta-step: far above chance (20%) after 150 steps."""
    root = write_leo_embeddings(
        tmp_path, classes={"train": 24, "val": 6, "test": 8}, per_class=25, informative=16
    )
    source = LEOEmbeddings(manual_dir=str(root), ways=5, shots=1, queries=5)
    data = source.train_data()
    learner = leo(
        IDENTITY.apply, ways=5, input_shape=source.input_shape, num_latents=16, dropout_rate=0.1
    )
    opt = optax.adam(1e-3)
    state = jaxmeta.init_meta_train_state(learner, opt, {}, key=jax.random.key(0))
    params = state.params
    assert params["leo"].encoder.shape == (640, 16)
    assert params["leo"].decoder.shape == (16, 1280)
    assert [r.shape for r in params["leo"].relation] == [(32, 32)] * 3
    assert params["leo"].inner_lr.shape == (16,) and params["leo"].finetune_lr.shape == (640,)
    test = source.eval_episodes("test", episodes=50, seed=0)
    assert test.support_x.shape == (50, 5, 640) and test.query_x.shape == (50, 25, 640)
    evaluate = jax.jit(
        lambda p: jnp.mean(
            jnp.argmax(
                jax.vmap(learner.predict, in_axes=(None, 0, 0, 0))(
                    p, test.support_x, test.support_y, test.query_x
                ),
                -1,
            )
            == test.query_y
        )
    )
    before = float(evaluate(params))
    step = jaxmeta.make_meta_step(learner, opt)
    sample = jax.jit(functools.partial(source.sample, tasks=8))
    for i in range(150):
        ks, kt = jax.random.split(jax.random.key(100 + i))
        state, metrics = step(state, sample(ks, data), kt)
    assert step._cache_size() == 1
    assert {"loss", "accuracy", "kl", "encoder_penalty", "orthogonality"} <= set(metrics)
    logits = learner.predict(state.params, test.support_x[0], test.support_y[0], test.query_x[0])
    assert logits.shape == (25, 5)
    acc = float(evaluate(state.params))
    print(f"LEO synthetic 5-way 1-shot test accuracy: {before:.3f} at init, {acc:.3f} after")
    assert acc > 0.6 and acc > before + 0.2, (before, acc)


def test_the_guard_decays_on_a_nonfinite_step_and_keeps_bad_labels_nan():
    """``guarded_grads`` on plain arrays: a finite step passes (clipped); a NaN gradient is
    replaced by the weight decay ``1e-4 * w`` of the networks (0 for the rates and the model)
    with ``nonfinite`` 1 and finite metrics; a label outside ``[0, ways)`` poisons it all."""
    opts = leo_module._options(
        ways=2, input_shape=(3,), num_latents=2, inner_steps=1, finetune_steps=1,
        inner_lr_init=1.0, finetune_lr_init=0.001, dropout_rate=0.0, kl_weight=0.0,
        encoder_penalty_weight=0.0, l2_penalty_weight=0.0, orthogonality_penalty_weight=0.0,
        grad_clip_value=0.0, grad_clip_norm=0.0, normalize=False, dtype="float32",
    )  # fmt: skip
    w = leo_module.LEOWeights(
        encoder=jnp.full((3, 2), 2.0), relation=(jnp.ones((4, 4)),) * 3,
        decoder=jnp.full((2, 6), 3.0), inner_lr=jnp.ones(2), finetune_lr=jnp.ones(3),
    )  # fmt: skip
    meta = {"model": {"k": jnp.ones(2)}, "leo": w}
    grads = jax.tree_util.tree_map(lambda a: 0.5 * jnp.ones_like(a), meta)
    good = jnp.array([0, 1])
    out, metrics = leo_module.guarded_grads(opts, meta, grads, {"loss": jnp.float32(1.0)}, good)
    assert float(metrics["nonfinite"]) == 0.0
    jax.tree_util.tree_map(lambda g: np.testing.assert_allclose(g, 0.5), out)
    nan = {**grads, "model": {"k": jnp.array([jnp.nan, 0.0])}}
    out, metrics = leo_module.guarded_grads(opts, meta, nan, {"loss": jnp.float32(jnp.nan)}, good)
    assert float(metrics["nonfinite"]) == 1.0 and float(metrics["loss"]) == 0.0
    np.testing.assert_allclose(out["leo"].encoder, 2e-4, rtol=1e-6)
    np.testing.assert_allclose(out["leo"].decoder, 3e-4, rtol=1e-6)
    assert float(jnp.max(jnp.abs(out["leo"].inner_lr))) == 0.0 and not out["model"]["k"].any()
    out, metrics = leo_module.guarded_grads(
        opts, meta, grads, {"loss": jnp.float32(1.0)}, jnp.array([0, 2])
    )
    assert np.isnan(float(metrics["loss"])) and np.isnan(np.asarray(out["leo"].encoder)).all()
