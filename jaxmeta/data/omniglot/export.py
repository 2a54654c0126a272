"""``jaxmeta data omniglot --export-test``: unseen test characters as PNG folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxmeta.data.omniglot.splits import DRAWERS, split_indices

__all__ = ["export_test_images"]


def export_test_images(
    omniglot,
    out: str | Path,
    *,
    scheme: str = "maml",
    classes: int = 5,
    per_class: int = 6,
    shots: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Write drawings of test-split characters as PNG files, laid out for ``jaxmeta predict``.

    ``classes`` characters are drawn (seeded) from the test split of ``scheme``: characters
    that a run trained with that scheme never saw (not in training, nor validation). For each,
    ``per_class`` drawers: the first ``shots`` go to ``<out>/support/<class>/``, the rest to
    ``<out>/query/<class>/`` (so ``predict`` can report accuracy). Images are the cache's,
    inverted back to dark strokes on white paper as in the original PNGs (``preprocess`` maps
    them back exactly). ``<out>/README.txt`` lists the characters and says where they come
    from.

    Returns:
      ``{"scheme", "split", "characters": [...], "support", "query"}`` (paths as strings).

    Raises:
      ValueError: numbers out of range, or ``out`` already holds an export.
    """
    from PIL import Image

    if not 1 <= shots < per_class <= DRAWERS:
        raise ValueError(
            f"need 1 <= shots < per-class <= {DRAWERS} (support and query drawings per "
            f"character), got shots={shots}, per-class={per_class}"
        )
    split = "evaluation" if scheme == "lake" else "test"
    idx = split_indices(scheme, split)
    if not 2 <= classes <= len(idx):
        raise ValueError(f"--classes must be in [2, {len(idx)}], got {classes}")
    out = Path(out)
    if (out / "support").exists() or (out / "query").exists():
        raise ValueError(f"{out} already holds an export (support/, query/): choose a new folder")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(idx, size=classes, replace=False))
    names = []
    for c in chosen:
        name = omniglot.characters[c].replace("/", "_")
        names.append(omniglot.characters[c])
        drawers = np.sort(rng.choice(DRAWERS, size=per_class, replace=False))
        for j, d in enumerate(drawers):
            where = out / ("support" if j < shots else "query") / name
            where.mkdir(parents=True, exist_ok=True)
            png = 255 - omniglot.images[c, d]  # dark strokes on white, as the original PNGs
            Image.fromarray(png).save(where / f"{name}_drawer{d + 1:02d}.png")
    readme = [
        f"Omniglot drawings exported by `jaxmeta data omniglot --export-test` (seed {seed}).",
        f"Characters of the {scheme!r} scheme's {split} split: a model trained with",
        f"data.scheme={scheme} never saw them (nor any of their rotations) during training or",
        "validation. Images: the 28x28 training form, inverted back to dark strokes on white.",
        "",
        f"support/<class>/: {shots} drawing(s) per class; query/<class>/: {per_class - shots}.",
        "Try:  jaxmeta predict --workdir RUN --support support --query query",
        "",
        "characters:",
        *(f"  {n}" for n in names),
    ]
    (out / "README.txt").write_text("\n".join(readme) + "\n")
    return {
        "scheme": scheme,
        "split": split,
        "characters": names,
        "support": str(out / "support"),
        "query": str(out / "query"),
    }
