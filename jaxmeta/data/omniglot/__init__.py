"""Omniglot: acquisition through TensorFlow Datasets, a compact uint8 cache, the standard splits.

Data flows one way: the official zips -> a TFDS dataset prepared once (array_record) ->
decoded and resized once into a ``uint8`` array ``[1623 characters, 20 drawers, S, S]`` cached
as an ``.npz`` next to the TFDS data -> one split's characters on the device ->
:mod:`jaxmeta.data.episodes`. The modules, in that order:

* :mod:`~jaxmeta.data.omniglot.acquire`: the zips, where they are looked for, content
  verification (on :mod:`jaxmeta.data.archives`, shared with other datasets);
* :mod:`~jaxmeta.data.omniglot.tfds_builder`: the ``jaxmeta_omniglot`` TFDS builder, which
  needs no TensorFlow, and reading its prepared data back;
* :mod:`~jaxmeta.data.omniglot.decode`: PNG decoding, inversion and LANCZOS resizing;
* :mod:`~jaxmeta.data.omniglot.dataset`: :func:`load_omniglot` and the ``.npz`` cache (on
  :mod:`jaxmeta.data.cache`), :func:`split_images`;
* :mod:`~jaxmeta.data.omniglot.splits`: the character table and the lake / maml / vinyals
  class splits (metadata only);
* :mod:`~jaxmeta.data.omniglot.source`: :class:`OmniglotTasks`, the task source of configs
  (``data.name: omniglot``) and of ``jaxmeta data omniglot``.

References:
  Lake, Salakhutdinov & Tenenbaum, Science 2015 (data); Vinyals et al., NeurIPS 2016 and Finn,
  Abbeel & Levine, ICML 2017 (28x28 LANCZOS, rotations, splits); Snell et al., NeurIPS 2017.
"""

from jaxmeta.data.images import preprocess
from jaxmeta.data.omniglot.acquire import (
    OmniglotCorruptError,
    OmniglotFilesMissingError,
    default_data_dir,
    read_verified_zip,
)
from jaxmeta.data.omniglot.dataset import Omniglot, load_omniglot, split_images
from jaxmeta.data.omniglot.decode import PNG_SIZE, decode_and_resize, decode_png
from jaxmeta.data.omniglot.source import OmniglotTasks
from jaxmeta.data.omniglot.splits import (
    BACKGROUND_ALPHABETS,
    DRAWERS,
    EVALUATION_ALPHABETS,
    NUM_CHARACTERS,
    ORIGINS,
    SCHEMES,
    character_names,
    split_counts,
    split_indices,
)
from jaxmeta.data.omniglot.tfds_builder import DATASET_NAME, DATASET_VERSION, builder_class

__all__ = [
    "BACKGROUND_ALPHABETS",
    "DATASET_NAME",
    "DATASET_VERSION",
    "DRAWERS",
    "EVALUATION_ALPHABETS",
    "NUM_CHARACTERS",
    "ORIGINS",
    "PNG_SIZE",
    "SCHEMES",
    "Omniglot",
    "OmniglotCorruptError",
    "OmniglotFilesMissingError",
    "OmniglotTasks",
    "builder_class",
    "character_names",
    "decode_and_resize",
    "decode_png",
    "default_data_dir",
    "load_omniglot",
    "preprocess",
    "read_verified_zip",
    "split_counts",
    "split_images",
    "split_indices",
]
