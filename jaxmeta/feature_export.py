"""``jaxmeta export-features WORKDIR OUT``: a trained run's embeddings of every split, for LEO.

The run is loaded with :func:`jaxmeta.load`; its model is applied without its linear head
(the penultimate features: ``num_classes=None``, e.g. the 64-d flattened Conv-4 of
ProtoNets, or the pre-head features of a MAML Conv-4) to every image of every split of the
run's dataset. With ``rotations`` the rotated copies are new classes, as in training (class
``r * C + c`` is class ``c`` rotated ``r * 90`` degrees). Models with batch statistics
normalise each chunk of ``batch_size`` images with its own statistics (chunks span many
classes, so these approximate the statistics of the split).

Writes ``OUT/{split}_features.npz`` (``features`` float32 ``[n, d]``, ``labels`` int32
``[n]``) and ``OUT/export.json`` (where they came from), the input of the ``features`` task
source (:class:`jaxmeta.data.features.ExportedFeatures`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta.data.episodes import ROTATIONS, to_float
from jaxmeta.data.image_tasks import ImageTasks
from jaxmeta.inference import load
from jaxmeta.train.build import make_source
from jaxmeta.train.workdir import atomic_write, atomic_write_text

__all__ = ["export_features", "feature_model"]


def feature_model(model, meta_params) -> tuple[Any, Any]:
    """``(module, params)`` giving the penultimate features of a run's model.

    The module is ``model`` without its head (``num_classes=None`` where it has that field);
    ``params`` are the model's parameters inside the learner's meta-parameters (the
    meta-parameters themselves, or their ``params`` / ``embedding`` / ``model`` entry).

    Raises:
      ValueError: no entry of the meta-parameters fits the model.
    """
    fields = {f.name for f in dataclasses.fields(model)}
    if "num_classes" in fields and model.num_classes is not None:
        model = model.clone(num_classes=None)
    candidates = [meta_params]
    if isinstance(meta_params, dict):
        candidates += [meta_params[k] for k in ("params", "embedding", "model") if k in meta_params]
    return model, candidates


def export_features(
    workdir: str | Path,
    out: str | Path,
    *,
    checkpoint: str | int = "best",
    batch_size: int = 1000,
    trust_plugins: bool | tuple[str, ...] | list[str] = False,
) -> list[str]:
    """Write the features of every split of a run's dataset; the lines to print.

    ``trust_plugins``: as :func:`jaxmeta.load`. Each file is written to a fresh temporary
    name and renamed into place, so nothing is written through a link in ``out``.

    Raises:
      FileNotFoundError: not a workdir / no such checkpoint.
      ValueError: the run's dataset is not an image dataset, or its model has no
        parameters the exporter can find.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    clf = load(workdir, checkpoint, trust_plugins=trust_plugins)
    source = make_source(clf.config)
    if not isinstance(source, ImageTasks):
        raise ValueError(
            f"export-features needs a run on an image dataset; {clf.config.data.name!r} is not"
        )
    model, candidates = feature_model(clf.model, clf.params)
    probe = jnp.zeros((2, *source.input_shape), jnp.float32)
    params = None
    for cand in candidates:
        try:
            shape = jax.eval_shape(model.apply, cand, probe).shape
        except Exception:  # not the model's parameters: try the next entry
            continue
        params = cand
        break
    if params is None or len(shape) != 2:
        raise ValueError(f"cannot find {clf.config.model.name!r} parameters in the run's state")
    apply = jax.jit(model.apply)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for split in source.splits:
        images = source.split_images(split, ways=2)  # uint8 [C, E, H, W(, ch)]
        if source.rotations:
            images = np.concatenate(
                [np.rot90(images, r, axes=(2, 3)) for r in range(ROTATIONS)], axis=0
            )
        n_cls, n_ex = images.shape[:2]
        flat = images.reshape(n_cls * n_ex, *images.shape[2:])
        feats = []
        for start in range(0, len(flat), batch_size):
            x = to_float(flat[start : start + batch_size])
            if x.ndim == 3:
                x = x[..., None]
            feats.append(np.asarray(apply(params, x), np.float32))
        features = np.concatenate(feats)
        labels = np.repeat(np.arange(n_cls, dtype=np.int32), n_ex)
        atomic_write(
            out / f"{split}_features.npz",
            lambda f, x=features, y=labels: np.savez(f, features=x, labels=y),
        )
        lines.append(f"{split:<6} {n_cls:>5} classes x {n_ex} examples -> {features.shape[1]}-d")
    record = {
        "workdir": str(Path(workdir).resolve()),
        "step": clf.step,
        "checkpoint": clf.checkpoint,
        "model": clf.config.model.name,
        "algorithm": clf.config.algorithm.name,
        "data": clf.config.data.name,
        "rotations": bool(source.rotations),
        "features": int(features.shape[1]),
        "batch_size": batch_size,
    }
    atomic_write_text(out / "export.json", json.dumps(record, indent=2) + "\n")
    lines.append(f"wrote {out}/{{{','.join(source.splits)}}}_features.npz and export.json")
    return lines
