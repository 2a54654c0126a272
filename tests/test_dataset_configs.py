"""The shipped configs of the datasets beyond Omniglot: each loads, builds (source, model,
learner, optimizer; the initial state abstractly) and holds its paper's hyperparameters."""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

from jaxmeta.train import load_config
from jaxmeta.train.build import build_experiment, build_optimizer, initial_state

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("miniimagenet", "tieredimagenet", "cifar_fs", "fc100")
CONFIGS = sorted(p for d in DATASETS for p in (REPO / "configs" / d).glob("*.yaml"))

# file: (dataset, algorithm, model, filters/channels, train ways, shots, eval shots,
#        inner lr, inner steps, meta-batch)
PAPER = {
    "miniimagenet/maml_5w1s": ("miniimagenet", "maml", "conv4", 32, 5, 1, 1, 0.01, 5, 4),
    "miniimagenet/maml_5w5s": ("miniimagenet", "maml", "conv4", 32, 5, 5, 5, 0.01, 5, 2),
    "miniimagenet/fomaml_5w1s": ("miniimagenet", "fomaml", "conv4", 32, 5, 1, 1, 0.01, 5, 4),
    "miniimagenet/fomaml_5w5s": ("miniimagenet", "fomaml", "conv4", 32, 5, 5, 5, 0.01, 5, 2),
    "miniimagenet/protonets_5w1s": (
        "miniimagenet",
        "protonets",
        "conv4",
        64,
        30,
        1,
        1,
        None,
        None,
        1,
    ),
    "miniimagenet/protonets_5w5s": (
        "miniimagenet",
        "protonets",
        "conv4",
        64,
        20,
        5,
        5,
        None,
        None,
        1,
    ),
    "cifar_fs/protonets_5w1s": ("cifar_fs", "protonets", "resnet12", 640, 5, 5, 1, None, None, 8),
    "cifar_fs/protonets_5w5s": ("cifar_fs", "protonets", "resnet12", 640, 5, 5, 5, None, None, 8),
    "fc100/protonets_5w1s": ("fc100", "protonets", "resnet12", 640, 5, 5, 1, None, None, 8),
    "fc100/protonets_5w5s": ("fc100", "protonets", "resnet12", 640, 5, 5, 5, None, None, 8),
    "tieredimagenet/maml_5w1s": ("tieredimagenet", "maml", "conv4", 32, 5, 1, 1, 0.01, 5, 4),
    "tieredimagenet/maml_5w5s": ("tieredimagenet", "maml", "conv4", 32, 5, 5, 5, 0.01, 5, 2),
}


def test_every_paper_setting_ships():
    names = {str(p.relative_to(REPO / "configs"))[: -len(".yaml")] for p in CONFIGS}
    assert set(PAPER) <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_builds_without_the_data(path):
    cfg = load_config(path)  # validates against the registries (no file is read)
    exp = build_experiment(cfg)
    state = jax.eval_shape(lambda: initial_state(cfg, exp))
    assert state.params is not None
    build_optimizer(cfg)
    name = str(path.relative_to(REPO / "configs"))[: -len(".yaml")]
    if name not in PAPER:
        return
    data, algo, model, width, ways, shots, eval_shots, lr, steps, batch = PAPER[name]
    assert (cfg.data.name, cfg.algorithm.name, cfg.model.name) == (data, algo, model)
    opts = dict(cfg.data.kwargs)
    assert (opts["ways"], opts["shots"], cfg.eval_shots, cfg.eval_ways) == (
        ways,
        shots,
        eval_shots,
        5,
    )
    m = dict(cfg.model.options)
    assert (m.get("filters") or m["channels"][-1]) == width
    a = dict(cfg.algorithm.kwargs)
    assert (a.get("inner_lr"), a.get("inner_steps"), cfg.train.meta_batch_size) == (
        lr,
        steps,
        batch,
    )
    assert exp.source.input_shape == ((84, 84, 3) if "imagenet" in data else (32, 32, 3))
