"""iMAML (jaxmeta.imaml): the implicit meta-gradient against a closed form and against
differentiating a converged unrolled inner loop; memory independent of the inner steps; the
reference code's protocol (aravindr93/imaml_dev) by construction; learning on sinusoids."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import enable_x64

from jaxmeta.algorithms.imaml import conjugate_gradient, imaml, implicit_adapt
from jaxmeta.algorithms.maml import maml
from jaxmeta.data.sinusoid import sample_sinusoid_tasks
from jaxmeta.losses import cross_entropy_loss
from jaxmeta.models.mlp import MLP
from jaxmeta.train import load_config
from jaxmeta.train.build import RUN_ONCE_COMPILER_OPTIONS, algorithm_kwargs
from jaxmeta.types import Episode

REPO = Path(__file__).resolve().parents[1]

WAYS, TASKS = 3, 2


def _episodes(key, dtype=jnp.float32):
    k1, k2 = jax.random.split(key)
    y = jnp.tile(jnp.arange(WAYS, dtype=jnp.int32), (TASKS, 1))
    return Episode(
        support_x=jax.random.normal(k1, (TASKS, WAYS * 2, 2), dtype),
        support_y=jnp.repeat(y, 2, axis=1),
        query_x=jax.random.normal(k2, (TASKS, WAYS * 2, 2), dtype),
        query_y=jnp.repeat(y, 2, axis=1),
    )


def test_conjugate_gradient_solves_a_spd_system_in_n_steps():
    with enable_x64():
        m = jax.random.normal(jax.random.key(0), (6, 6), jnp.float64)
        a = m @ m.T + 0.5 * jnp.eye(6)
        b = {"u": jnp.arange(6.0)}
        x = conjugate_gradient(lambda v: {"u": a @ v["u"]}, b, steps=6)
        np.testing.assert_allclose(x["u"], np.linalg.solve(a, b["u"]), rtol=1e-8)


@pytest.mark.parametrize("solver", ["gd", "hf"])
def test_quadratic_task_implicit_gradient_equals_closed_form(solver):
    # Support loss 1/2 p'Ap - b'p: phi* = (A + lam I)^-1 (lam theta + b). Query loss
    # 1/2 |phi - c|^2: d/dtheta = lam (A + lam I)^-1 (phi* - c) = (I + A/lam)^-1 (phi* - c).
    with enable_x64():
        n, lam = 5, 1.5
        k1, k2, k3, k4 = jax.random.split(jax.random.key(3), 4)
        m = jax.random.normal(k1, (n, n), jnp.float64)
        a = m @ m.T / n + 0.2 * jnp.eye(n)
        b, c, theta = (jax.random.normal(k, (n,), jnp.float64) for k in (k2, k3, k4))
        support = lambda p, data: 0.5 * p["w"] @ data[0] @ p["w"] - data[1] @ p["w"]
        steps, lr = (400, 0.3) if solver == "gd" else (2, 1.0)
        adapt = implicit_adapt(
            support, lam=lam, steps=steps, inner_lr=lr, solver=solver, cg_steps=n, hf_cg_steps=n
        )
        query = lambda t: 0.5 * jnp.sum(jnp.square(adapt(t, (a, b))["w"] - c))
        phi_star = np.linalg.solve(a + lam * np.eye(n), lam * theta + b)
        want = lam * np.linalg.solve(a + lam * np.eye(n), phi_star - c)
        np.testing.assert_allclose(adapt({"w": theta}, (a, b))["w"], phi_star, rtol=1e-9)
        got = jax.jit(jax.grad(query))({"w": theta})["w"]
        np.testing.assert_allclose(got, want, rtol=1e-8)
        # not the plain gradient at phi* (what ignoring the Jacobian would give)
        assert np.abs(np.asarray(want) - (phi_star - np.asarray(c))).max() > 1e-2


def test_small_mlp_float64_equals_gradient_through_converged_unrolled_loop():
    with enable_x64():
        model = MLP(hidden=(4,), out=WAYS, dtype=jnp.float64)
        params = model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.float64))
        eps = _episodes(jax.random.key(1), jnp.float64)
        lam, lr, steps = 4.0, 0.1, 600
        learner = imaml(
            model.apply, inner_lr=lr, inner_steps=steps, lam=lam, cg_steps=40, cg_damping=0.0
        )
        got, _ = jax.jit(learner.meta_grad)(params, eps, jax.random.key(0), task_chunk=None)

        # Reference: plain autodiff through `steps` GD steps on the regularised loss.
        def unrolled(theta, ep):
            def reg(p):
                sup = cross_entropy_loss(model.apply(p, ep.support_x), ep.support_y)
                prox = sum(
                    jnp.sum(jnp.square(x - t))
                    for x, t in zip(
                        jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(theta), strict=True
                    )
                )
                return sup + 0.5 * lam * prox

            def step(p, _):
                return jax.tree_util.tree_map(lambda w, g: w - lr * g, p, jax.grad(reg)(p)), None

            phi = jax.lax.scan(step, theta, None, length=steps)[0]
            return cross_entropy_loss(model.apply(phi, ep.query_x), ep.query_y)

        mean_loss = lambda t: jnp.mean(jax.vmap(lambda ep: unrolled(t, ep))(eps))
        want = jax.jit(jax.grad(mean_loss))(params)
        flat = lambda t: np.asarray(jax.flatten_util.ravel_pytree(t)[0])
        assert np.abs(flat(want)).max() > 1e-3
        np.testing.assert_allclose(flat(got), flat(want), rtol=1e-6, atol=1e-9)


def _temp_bytes(learner, params, eps) -> int:
    # XLA's backend optimisations off: buffer assignment (what memory_analysis reports)
    # comes before code generation, so the sizes are those of the optimised program
    # (checked 2026-12-07: the same four numbers), and the compiles are ~1/4 cheaper.
    fn = jax.jit(lambda p, e: learner.meta_grad(p, e, jax.random.key(0), task_chunk=None))
    compiled = fn.lower(params, eps).compile(compiler_options=RUN_ONCE_COMPILER_OPTIONS)
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_does_not_grow_with_inner_steps():
    model = MLP(hidden=(64, 64), out=WAYS)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)))
    eps = _episodes(jax.random.key(2))
    imaml_mem = [_temp_bytes(imaml(model.apply, inner_steps=s), params, eps) for s in (5, 50)]
    maml_mem = [
        _temp_bytes(maml(model.apply, inner_lr=0.1, inner_steps=s), params, eps) for s in (5, 50)
    ]
    # The measure sees growth: second-order MAML keeps every inner step's residuals.
    assert maml_mem[1] > 2 * maml_mem[0], maml_mem
    assert imaml_mem[1] == imaml_mem[0], imaml_mem


def test_bad_options_are_one_line_errors():
    model = MLP(hidden=(4,), out=WAYS)
    with pytest.raises(ValueError, match="solver must be one of"):
        imaml(model.apply, solver="newton")
    with pytest.raises(ValueError, match="lam"):
        imaml(model.apply, lam=0.0)
    with pytest.raises(ValueError, match="cg_damping"):
        imaml(model.apply, cg_damping=-1.0)
    with pytest.raises(ValueError, match="cg_system must be one of"):
        imaml(model.apply, cg_system="paper")
    with pytest.raises(ValueError, match="eval_lam"):
        imaml(model.apply, eval_lam=-1.0)
    with pytest.raises(ValueError, match="eval_lam must be > 0 with solver 'hf'"):
        imaml(model.apply, solver="hf", eval_lam=0.0)


# ----------------------------------------------- the reference code's protocol (imaml_dev)


def _tiny_task():
    """A 3-way task for an MLP with 17 parameters (dense Hessians are cheap)."""
    model = MLP(hidden=(3,), out=WAYS, dtype=jnp.float64)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.float64))
    ep = jax.tree_util.tree_map(lambda a: a[0], _episodes(jax.random.key(1), jnp.float64))
    return model, params, ep


def _reference_inner(model, theta, x, y, *, lr, steps, lam):
    """omniglot_implicit_maml.py, written out: ``steps`` plain SGD steps on the support loss
    (``learn_task``, no regularisation), then one SGD step on ``regularization_loss`` alone."""
    flat, unravel = jax.flatten_util.ravel_pytree(theta)
    sup = jax.grad(lambda v: cross_entropy_loss(model.apply(unravel(v), x), y))
    phi = flat
    for _ in range(steps):
        phi = phi - lr * sup(phi)
    return phi - lr * lam * (phi - flat)


def test_reference_inner_solve_equals_its_plain_steps_then_pull_back():
    with enable_x64():
        model, params, ep = _tiny_task()
        lr, steps, lam = 0.3, 4, 2.0
        learner = imaml(model.apply, inner_lr=lr, inner_steps=steps, lam=lam, solver="gd_pullback")
        got = jax.flatten_util.ravel_pytree(
            jax.jit(learner.adapt)(params, ep.support_x, ep.support_y)
        )[0]
        want = _reference_inner(
            model, params, ep.support_x, ep.support_y, lr=lr, steps=steps, lam=lam
        )
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        # Test time (measure_accuracy.py: lam 0): plain steps, the pull-back is a no-op.
        test = imaml(
            model.apply,
            inner_lr=lr,
            inner_steps=steps,
            lam=lam,
            solver="gd_pullback",
            eval_lam=0.0,
        )
        got0 = jax.flatten_util.ravel_pytree(
            jax.jit(test.adapt)(params, ep.support_x, ep.support_y)
        )[0]
        want0 = _reference_inner(
            model, params, ep.support_x, ep.support_y, lr=lr, steps=steps, lam=0.0
        )
        np.testing.assert_allclose(got0, want0, rtol=1e-12, atol=1e-14)
        assert np.abs(np.asarray(got0) - np.asarray(got)).max() > 1e-3  # lam matters


@pytest.mark.parametrize("cg_system", ["imaml_dev", "damped"])
def test_cg_system_equals_a_dense_solve_of_its_matrix(cg_system):
    # imaml_dev: matrix_evaluator(task, lam, regu_coef=cg_damping) with lam_damping=10,
    # (1 + regu_coef) v + H v / (lam + lam_damping); damped: I + H / (lam + cg_damping).
    with enable_x64():
        model, params, ep = _tiny_task()
        lr, steps, lam, damping = 0.3, 4, 2.0, 1.0
        learner = imaml(
            model.apply,
            inner_lr=lr,
            inner_steps=steps,
            lam=lam,
            solver="gd_pullback",
            cg_steps=17,
            cg_damping=damping,
            cg_system=cg_system,
        )
        eps = jax.tree_util.tree_map(lambda a: a[None], ep)
        fn = jax.jit(lambda p, e: learner.meta_grad(p, e, jax.random.key(0), task_chunk=None))
        got = np.asarray(jax.flatten_util.ravel_pytree(fn(params, eps)[0])[0])

        _, unravel = jax.flatten_util.ravel_pytree(params)
        phi = _reference_inner(
            model, params, ep.support_x, ep.support_y, lr=lr, steps=steps, lam=lam
        )
        sup = lambda v: cross_entropy_loss(model.apply(unravel(v), ep.support_x), ep.support_y)
        qry = lambda v: cross_entropy_loss(model.apply(unravel(v), ep.query_x), ep.query_y)
        h, g = np.asarray(jax.jit(jax.hessian(sup))(phi)), np.asarray(jax.jit(jax.grad(qry))(phi))
        eye = np.eye(h.shape[0])
        if cg_system == "imaml_dev":
            a = (1 + damping) * eye + h / (lam + 10.0)
        else:
            a = eye + h / (lam + damping)
        want = np.linalg.solve(a, g)
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)
        # The two systems differ (the reference's is not the paper's I + H / lam).
        paper = np.linalg.solve(eye + h / lam, g)
        assert np.abs(want - paper).max() > 1e-2 * np.abs(paper).max()


def test_paper_configs_select_the_reference_protocol():
    for setting in ("5w1s", "5w5s", "20w1s", "20w5s"):
        cfg = load_config(REPO / "configs" / "omniglot" / f"imaml_{setting}.yaml")
        kw = cfg.algorithm.kwargs
        assert (kw["solver"], kw["cg_system"], kw["eval_lam"]) == ("gd_pullback", "imaml_dev", 0.0)
        assert cfg.optimizer.kwargs["eps"] == 1e-3
        hf = load_config(REPO / "configs" / "omniglot" / f"imaml_hf_{setting}.yaml")
        assert hf.algorithm.kwargs["cg_system"] == "imaml_dev"


# ------------------------------------------------------------------------- sinusoid


@pytest.mark.slow
def test_sinusoid_config_learns_beyond_the_zero_predictor():
    """Issue 32: iMAML on sinusoids scored the zero predictor's MSE (a flat curve). The
    shipped config, meta-trained briefly (10 tasks a step), must clearly beat predicting 0."""
    cfg = load_config(REPO / "configs" / "sinusoid" / "imaml_k10.yaml")
    model = MLP(hidden=tuple(cfg.model.kwargs["hidden"]), out=1)
    learner = imaml(model.apply, **algorithm_kwargs(cfg))
    params = model.init(jax.random.key(0), jnp.zeros((1, 1)))
    opt = optax.adam(cfg.optimizer.kwargs["learning_rate"])
    shots = cfg.data.shots

    def step(carry, key):
        p, s = carry
        eps = sample_sinusoid_tasks(key, tasks=10, shots=shots, queries=shots)
        g, _ = learner.meta_grad(p, eps, key, task_chunk=None)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    @jax.jit
    def train_and_test(p):
        keys = jax.random.split(jax.random.key(1), 800)
        p = jax.lax.scan(step, (p, opt.init(p)), keys)[0][0]
        ev = sample_sinusoid_tasks(jax.random.key(2), tasks=100, shots=shots, queries=50)
        pred = jax.vmap(lambda sx, sy, qx: learner.predict(p, sx, sy, qx))(
            ev.support_x, ev.support_y, ev.query_x
        )
        return jnp.mean(jnp.square(pred - ev.query_y)), jnp.mean(jnp.square(ev.query_y))

    mse, zero = train_and_test(params)
    assert np.isfinite(mse) and mse < 0.5 * zero, (float(mse), float(zero))
