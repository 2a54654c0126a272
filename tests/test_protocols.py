"""Each paper config reproduces its reference code's protocol (issue 30; docs/protocols.md).

The reference behaviour is recomputed here by hand (the reference's loss, its BatchNorm, Pillow's
resize of the mode-"1" PNG) and compared with what the paper configs build.
"""

from __future__ import annotations

import io
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from jaxmeta.algorithms import get_algorithm
from jaxmeta.algorithms.protonets import protonets, prototypes, squared_euclidean
from jaxmeta.data.episodes import eval_episodes, sample_episodes
from jaxmeta.data.images import preprocess
from jaxmeta.data.omniglot.decode import decode_and_resize
from jaxmeta.inner import norm_free_mask
from jaxmeta.losses import cross_entropy_loss
from jaxmeta.models.conv4 import Conv4
from jaxmeta.train.build import build_optimizer
from jaxmeta.train.config import load_config
from jaxmeta.types import Episode

OMNIGLOT_MAML_FAMILY = [
    f"configs/omniglot/{alg}_{setting}.yaml"
    for alg in ("maml", "fomaml", "anil", "metasgd")
    for setting in ("5w1s", "5w5s", "20w1s", "20w5s")
    if (alg, setting) != ("maml", "5w1s")  # the short one; its paper length is maml_5w1s_paper
] + ["configs/omniglot/maml_5w1s_paper.yaml"]
MINI_MAML_FAMILY = [
    f"configs/miniimagenet/{a}_5w{k}s.yaml" for a in ("maml", "fomaml") for k in (1, 5)
]


def _tiny_task(seed, ways, shots, size=8):
    """float64 images ``[ways*shots, size, size, 1]`` and class-major labels (NumPy draws: no
    eager jax.random compiles)."""
    x = jnp.asarray(np.random.default_rng(seed).uniform(size=(ways * shots, size, size, 1)))
    return x, jnp.repeat(jnp.arange(ways, dtype=jnp.int32), shots)


def _params(model, x, seed=0):
    """Parameters of ``model`` shaped by ``eval_shape`` and drawn with NumPy (cheaper than
    running Flax's ``init`` op by op); the scale keeps the activations non-trivial."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.5, s.dtype), shapes)


def test_maml_paper_inner_step_is_the_reference_step(path="configs/omniglot/maml_5w1s_paper.yaml"):
    """One inner step of the paper config = cbfinn/maml's: loss sum(xent) / K, gradient on the
    ``weights`` only (conv kernels and head; the BatchNorm offset is not adapted), float64."""
    cfg = load_config(path)
    ways, shots = cfg.data.ways, cfg.data.shots
    with jax.enable_x64():
        model = Conv4(
            num_classes=ways, filters=2, dtype=jnp.float64, conv_impl="xla", **_bn_kwargs(cfg)
        )
        x, y = _tiny_task(0, ways, shots)
        params = _params(model, x)
        kwargs = {k: v for k, v in cfg.algorithm.kwargs.items() if k != "inner_steps"}
        learner = get_algorithm(cfg.algorithm.name)(model.apply, inner_steps=1, **kwargs)
        lr = cfg.algorithm.kwargs["inner_lr"]

        def reference_loss(p):  # utils.xent: per-example cross-entropy / update_batch_size, summed
            logp = jax.nn.log_softmax(model.apply(p, x))
            return jnp.sum(-logp[jnp.arange(y.shape[0]), y] / shots)

        @jax.jit  # one compiled program for both sides
        def both(params):
            grads = jax.grad(reference_loss)(params)
            keep = norm_free_mask(params)
            step = lambda w, g, adapt: w - lr * g if adapt else w
            return learner.adapt(params, x, y), jax.tree_util.tree_map(step, params, grads, keep)

        adapted, expected = both(params)
        assert not np.allclose(adapted["params"]["conv0"], params["params"]["conv0"])
        assert not any(k.endswith("_scale") for k in params["params"])  # no BatchNorm scale
        for a, b in zip(jax.tree.leaves(adapted), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
    # The step on the mean loss is N x inner_lr: 2.0 in both Omniglot settings.
    for p in ("maml_5w1s_paper", "maml_20w1s"):
        c = load_config(f"configs/omniglot/{p}.yaml")
        assert c.data.ways * c.algorithm.kwargs["inner_lr"] == pytest.approx(2.0)


def _bn_kwargs(cfg):
    return {"bn_scale": cfg.model.kwargs["bn_scale"]} if "bn_scale" in cfg.model.kwargs else {}


def test_protonets_joint_batch_normalises_the_concatenated_batch():
    with jax.enable_x64():
        model = Conv4(num_classes=None, filters=2, pool=True, dtype=jnp.float64, conv_impl="xla")
        sx, sy = _tiny_task(0, 3, 2, size=16)  # 16 -> 8 -> 4 -> 2 -> 1
        qx, qy = _tiny_task(1, 3, 3, size=16)
        params = _params(model, sx)
        episode = Episode(sx, sy, qx, qy)

        @jax.jit
        def losses(params, episode):
            joint = protonets(model.apply, joint_batch=True).outer_loss(params, episode, None)[0]
            separate = protonets(model.apply).outer_loss(params, episode, None)[0]
            z = model.apply(params, jnp.concatenate([episode.support_x, episode.query_x]))
            protos, _ = prototypes(z[:6], episode.support_y, 6)  # one pass: joint statistics
            expected = cross_entropy_loss(-squared_euclidean(z[6:], protos)[:, :3], episode.query_y)
            return joint, separate, expected

        joint, separate, expected = losses(params, episode)
        np.testing.assert_allclose(float(joint), float(expected), rtol=1e-10)
        assert abs(float(joint) - float(separate)) > 1e-6  # the switch changes the statistics


def test_binary_preprocessing_is_pillow_resize_of_the_mode_1_png(omniglot_zip_dir):
    """cbfinn/maml resize_images.py: Image.open(png).resize((28, 28), LANCZOS) on the 1-bit PNG."""
    with zipfile.ZipFile(omniglot_zip_dir / "images_evaluation.zip") as z:
        names = [n for n in z.namelist() if n.endswith(".png")][::400]
        pngs = [z.read(n) for n in names]
    refs = []
    for png in pngs:
        with Image.open(io.BytesIO(png)) as im:
            assert im.mode == "1"
            small = im.resize((28, 28), resample=Image.LANCZOS)
            assert small.mode == "1"
            refs.append(np.where(np.asarray(small), 0, 255).astype(np.uint8))  # ink high
    ref = np.stack(refs)
    for use_pil in (False, True):
        ours = decode_and_resize(pngs, 28, resize="binary", use_pil=use_pil)
        np.testing.assert_array_equal(ours, ref)
    assert set(np.unique(ref)) == {0, 255}
    # Your own drawings reach a binary-trained model in the same form (jaxmeta predict).
    decoded = [np.asarray(Image.open(io.BytesIO(png))) for png in pngs]  # bool, True = paper
    np.testing.assert_array_equal(preprocess(decoded, resize="binary"), ref)
    # jaxmeta's default differs: anti-aliased grey levels
    assert len(np.unique(decode_and_resize(pngs, 28))) > 2


def test_distinct_characters_never_puts_two_rotations_of_one_character_in_a_task():
    n_char = 5  # ways = characters: every task must hold each character exactly once
    images = np.repeat(np.arange(n_char, dtype=np.uint8)[:, None] * 40, 2, axis=1)
    images = np.broadcast_to(images[:, :, None, None], (n_char, 2, 4, 4)).copy()
    kw = dict(tasks=64, ways=n_char, shots=1, queries=1, rotations=True)
    ep = sample_episodes(jax.random.key(0), images, distinct_characters=True, **kw)
    chars = np.rint(np.asarray(ep.support_x)[:, :, 0, 0, 0] * 255 / 40).astype(int)
    assert all(sorted(row) == list(range(n_char)) for row in chars)
    ep = sample_episodes(jax.random.key(0), images, **kw)  # the default draws rotated classes
    chars = np.rint(np.asarray(ep.support_x)[:, :, 0, 0, 0] * 255 / 40).astype(int)
    assert any(len(set(row)) < n_char for row in chars)


def test_minimagenet_clip_by_value_is_the_reference_clip():
    """The reference clips its meta-gradient to [-10, 10] on its loss (sum over 75 queries / K):
    the clip on our mean loss is 10 / (75 / K)."""
    for path in MINI_MAML_FAMILY:
        cfg = load_config(path)
        k, n_query = cfg.data.shots, cfg.data.ways * cfg.data.queries
        clip = cfg.optimizer.kwargs["grad_clip_value"]
        assert clip == pytest.approx(10 / (n_query / k), rel=1e-6), path
        opt = build_optimizer(cfg)
        g = {"w": jnp.array([100.0, -100.0, 1e-3])}
        ref = optax.adam(1e-3).update(
            {"w": jnp.clip(g["w"], -clip, clip)}, optax.adam(1e-3).init(g)
        )
        ours = opt.update(g, opt.init(g))
        np.testing.assert_allclose(ours[0]["w"], ref[0]["w"], rtol=1e-6)


@pytest.mark.parametrize("path", OMNIGLOT_MAML_FAMILY + MINI_MAML_FAMILY)
def test_maml_family_paper_configs_set_the_reference_switches(path):
    cfg = load_config(path)
    alg, data = cfg.algorithm.kwargs, cfg.data
    assert alg["inner_loss_reduction"] == "sum_over_k"
    if cfg.algorithm.name in ("maml", "fomaml"):
        assert alg["adapt_norm"] is False
    if cfg.algorithm.name != "anil":
        assert cfg.model.kwargs["bn_scale"] is False
    assert cfg.eval_queries == data.shots  # K test queries per class (update_batch_size*2)
    if data.name == "omniglot":
        assert data.resize == "binary" and data.distinct_characters is True


def test_other_paper_configs_set_the_reference_switches():
    for s in ("5w1s", "5w5s", "20w1s", "20w5s"):
        p = load_config(f"configs/omniglot/protonets_{s}.yaml")
        assert p.algorithm.kwargs["joint_batch"] is True and p.data.train_on_val is True
        assert p.algorithm.kwargs["running_stats"] is True  # model.eval() at test
        assert p.data.resize == "binary" and p.eval.episodes == 1000 and p.train.eval_every == 0
        r = load_config(f"configs/omniglot/reptile_{s}.yaml")
        assert r.data.shots + r.data.queries == 10  # --train-shots 10
        assert r.data.eval_rotations is False and r.data.train_on_val is True
        assert r.eval.episodes == 10000 and r.eval_queries == 1
        assert r.algorithm.kwargs["transductive"] is (s == "5w1s")
        m = load_config(f"configs/omniglot/mamlpp_{s}.yaml")
        assert m.data.eval_rotations is False and m.data.distinct_characters is True
        assert m.eval_queries == 1 and m.model.kwargs["activation"] == "leaky_relu"
    for name in ("nav2d", "nav2d_sparse"):
        assert (
            load_config(f"configs/rl/maml_trpo_{name}.yaml").algorithm.kwargs["estimator"]
            == "naive"
        )
    # The README's first command keeps jaxmeta's defaults (its figures were measured so).
    short = load_config("configs/omniglot/maml_5w1s.yaml")
    assert "inner_loss_reduction" not in short.algorithm.kwargs and short.eval_queries == 15


def test_train_on_val_trains_on_train_and_val_classes_and_eval_rotations_switch():
    from jaxmeta.data.image_tasks import ImageTasks

    class Tiny(ImageTasks):
        name = "tiny"
        splits = ("train", "val", "test")
        input_shape = (4, 4, 1)

        def class_counts(self):
            return {"train": 3, "val": 2, "test": 5}

        def load_split(self, split):
            first = {"train": 0, "val": 3, "test": 5}[split]
            n = self.class_counts()[split]
            ids = np.arange(first, first + n, dtype=np.uint8)[:, None, None, None]
            return np.broadcast_to(ids * 20, (n, 2, 4, 4)).copy()

    kw = dict(ways=2, shots=1, queries=1, rotations=True)
    data = np.asarray(Tiny(train_on_val=True, **kw).train_data())
    assert sorted(data[:, 0, 0, 0] // 20) == [0, 1, 2, 3, 4]
    assert len(Tiny(**kw).train_data()) == 3
    src = Tiny(eval_rotations=False, **kw)
    assert src.describe() == {"rotations": True, "eval_rotations": False}
    src._split_cache["test"] = np.random.default_rng(0).integers(0, 255, (5, 2, 4, 4), np.uint8)
    got = src.fixed_episodes("test", episodes=8, seed=0, ways=2, shots=1, queries=1)
    args = dict(episodes=8, ways=2, shots=1, queries=1, seed=0)
    want = eval_episodes(src._split_cache["test"], rotations=False, **args)
    rotated = eval_episodes(src._split_cache["test"], rotations=True, **args)
    np.testing.assert_array_equal(got.support_x, want.support_x)
    assert not np.array_equal(got.support_x, rotated.support_x)
