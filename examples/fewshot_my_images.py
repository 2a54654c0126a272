"""Classify your own images with a trained run: 5 labelled examples, then predictions.

    jaxmeta train --config configs/omniglot/maml_5w1s.yaml --workdir runs/maml_5w1s
    python examples/fewshot_my_images.py --workdir runs/maml_5w1s --support my/support \\
        --query my/query/*.png

``--support`` is a folder with one subfolder per class (its name is the class name) holding
that class's image files: any size, dark strokes on light paper, like the Omniglot PNGs.
Without ``--support``/``--query`` the script makes such folders from 5 Omniglot characters
of the MAML split's test set (never seen in training): 1 drawing per class as support and 3
more per class as queries, written as PNG files and read back like your own files would be.

What happens: the files are decoded (:func:`jaxmeta.data.images.read_image`), inverted and
resized exactly as the training data was (:func:`jaxmeta.data.omniglot.preprocess`), the run
is loaded with :func:`jaxmeta.load` (best checkpoint, inductive BatchNorm: each query is
normalised with the support set's statistics, so predicting one image at a time gives the
same answer as a batch), adapted to the 5 support images, and asked about each query.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import jaxmeta
from jaxmeta.data.images import read_image, read_support_folder
from jaxmeta.data.omniglot import preprocess


def export_examples(folder: Path, data_dir: str | None) -> tuple[Path, list[Path]]:
    """Write 5 unseen Omniglot characters as PNGs: support/<class>/ and query/<class>/."""
    from jaxmeta.commands import export_test_images
    from jaxmeta.data.omniglot import load_omniglot

    omniglot = load_omniglot(data_dir=data_dir, download=False)
    info = export_test_images(omniglot, folder, classes=5, per_class=4, shots=1, seed=1)
    return Path(info["support"]), sorted(Path(info["query"]).rglob("*.png"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a run written by 'jaxmeta train'")
    p.add_argument("--support", help="folder with one subfolder of images per class")
    p.add_argument("--query", nargs="+", help="query image files")
    p.add_argument("--data-dir", default=None, help="TFDS data dir (for the Omniglot examples)")
    args = p.parse_args()

    if args.support:
        support, queries = Path(args.support), [Path(q) for q in args.query or []]
    else:
        support, queries = export_examples(Path(tempfile.mkdtemp(prefix="fewshot_")), args.data_dir)
        print(f"no --support given: wrote 5 unseen Omniglot characters to {support.parent}")

    clf = jaxmeta.load(args.workdir)  # best checkpoint, bn_mode="inductive"
    print(clf)
    names, support_x, support_y = read_support_folder(support)  # uint8 [5, 28, 28]
    adapted = clf.adapt(support_x, support_y)  # binds the 5 examples
    correct = []
    for path in queries:
        image = preprocess(read_image(path))  # uint8 [1, 28, 28], as in training
        probs = np.asarray(adapted.probabilities(image))[0]
        best = int(np.argmax(probs))
        line = f"{path.name:45s} -> {names[best]} ({100 * probs[best]:.0f}%)"
        if path.parent.name in names:  # the exported examples know their class
            correct.append(path.parent.name == names[best])
            line += "" if correct[-1] else f"   (true: {path.parent.name})"
        print(line)
    if correct:
        print(f"{sum(correct)} of {len(correct)} right (chance: 1 in {len(names)})")


if __name__ == "__main__":
    main()
