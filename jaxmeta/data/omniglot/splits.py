"""Omniglot's characters and its standard class splits (pure metadata: no data is read).

Character order (index ``c`` of ``images[c]``): the 964 background characters, then the 659
evaluation characters; inside each set, alphabets in byte-wise sorted order, then
``characterNN``.

Splits (``scheme`` / ``split``), with their sources:
  * ``"lake"``: ``background`` (30 alphabets, 964 characters) / ``evaluation`` (20 alphabets,
    659 characters), the original split of Lake et al. 2015. ``train``/``test`` are accepted as
    aliases; there is no validation split in this protocol.
  * ``"maml"``: 1100 train / 100 val / 423 test characters. cbfinn/maml ``data_generator.py``
    lists every ``alphabet/character`` folder of all 50 alphabets, calls ``random.seed(1);
    random.shuffle(character_folders)`` and takes the first 1200 for meta-training, of which the
    last 100 are its validation set, and the remaining 423 for testing. MAML listed the folders
    with ``os.listdir``, whose order is file-system dependent, so its exact assignment cannot be
    reproduced. We list the 1623 ``alphabet/characterNN`` names in byte-wise sorted order
    (all 50 alphabets together) and shuffle them with ``random.Random(1).shuffle`` (a private
    generator, same algorithm as ``random.seed(1); random.shuffle``); ``[:1100]`` train,
    ``[1100:1200]`` val, ``[1200:]`` test.
  * ``"vinyals"``: 1028 train / 172 val / 423 test characters, the split of Vinyals et al. 2016
    as distributed by jakesnell/prototypical-networks ``data/omniglot/splits/vinyals``. It is the
    first 1200 characters in Lake's id order (background, then evaluation alphabets in sorted
    order) for train+val and the last 423 for test, so Gurmukhi is cut: characters 01-41 in
    train, 42-45 in test. Val is exactly the five alphabets of ProtoNets' ``val.txt`` (Hebrew,
    Mkhedruli_(Georgian), Armenian, Early_Aramaic, Bengali: 172 characters; read from the
    repository). ProtoNets' ``train.txt``/``test.txt`` were not available to us verbatim; test is
    reconstructed from the alphabet-level copy in jvlmdr/omniglot-eval ``splits/vinyals/test.txt``
    (which notes that it dropped Gurmukhi) and from a second public code base that lists
    ``Gurmukhi/character42..45`` plus the same 12 alphabets as the Vinyals test set. The counts
    1028/172/423 then follow exactly, which confirms the reconstruction.

  Rotations by 90/180/270 degrees make new classes (``rotations=True`` in the episode sampler):
  a split of ``C`` characters then has ``4 C`` classes.

References:
  Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic program
  induction", Science 2015. Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS
  2016. Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning", ICML 2017. Snell, Swersky & Zemel,
  "Prototypical Networks for Few-shot Learning", NeurIPS 2017.
"""

from __future__ import annotations

import functools
import random

import numpy as np

DRAWERS = 20

# (alphabet, number of characters), byte-wise sorted: the ground truth that content checks use.
BACKGROUND_ALPHABETS: tuple[tuple[str, int], ...] = (
    ("Alphabet_of_the_Magi", 20),
    ("Anglo-Saxon_Futhorc", 29),
    ("Arcadian", 26),
    ("Armenian", 41),
    ("Asomtavruli_(Georgian)", 40),
    ("Balinese", 24),
    ("Bengali", 46),
    ("Blackfoot_(Canadian_Aboriginal_Syllabics)", 14),
    ("Braille", 26),
    ("Burmese_(Myanmar)", 34),
    ("Cyrillic", 33),
    ("Early_Aramaic", 22),
    ("Futurama", 26),
    ("Grantha", 43),
    ("Greek", 24),
    ("Gujarati", 48),
    ("Hebrew", 22),
    ("Inuktitut_(Canadian_Aboriginal_Syllabics)", 16),
    ("Japanese_(hiragana)", 52),
    ("Japanese_(katakana)", 47),
    ("Korean", 40),
    ("Latin", 26),
    ("Malay_(Jawi_-_Arabic)", 40),
    ("Mkhedruli_(Georgian)", 41),
    ("N_Ko", 33),
    ("Ojibwe_(Canadian_Aboriginal_Syllabics)", 14),
    ("Sanskrit", 42),
    ("Syriac_(Estrangelo)", 23),
    ("Tagalog", 17),
    ("Tifinagh", 55),
)
EVALUATION_ALPHABETS: tuple[tuple[str, int], ...] = (
    ("Angelic", 20),
    ("Atemayar_Qelisayer", 26),
    ("Atlantean", 26),
    ("Aurek-Besh", 26),
    ("Avesta", 26),
    ("Ge_ez", 26),
    ("Glagolitic", 45),
    ("Gurmukhi", 45),
    ("Kannada", 41),
    ("Keble", 26),
    ("Malayalam", 47),
    ("Manipuri", 40),
    ("Mongolian", 30),
    ("Old_Church_Slavonic_(Cyrillic)", 45),
    ("Oriya", 46),
    ("Sylheti", 28),
    ("Syriac_(Serto)", 23),
    ("Tengwar", 25),
    ("Tibetan", 42),
    ("ULOG", 26),
)
ALPHABETS = {"background": BACKGROUND_ALPHABETS, "evaluation": EVALUATION_ALPHABETS}
ORIGINS = ("background", "evaluation")
NUM_CHARACTERS = sum(n for _, n in BACKGROUND_ALPHABETS + EVALUATION_ALPHABETS)  # 1623


@functools.cache
def character_table() -> tuple[tuple[str, str, str], ...]:
    """(origin, alphabet, characterNN) for the 1623 characters, in cache order."""
    rows = []
    for origin in ORIGINS:
        for alphabet, n in ALPHABETS[origin]:
            rows.extend((origin, alphabet, f"character{i:02d}") for i in range(1, n + 1))
    return tuple(rows)


def character_names() -> tuple[str, ...]:
    """``"Alphabet/characterNN"`` for each of the 1623 characters, in cache order (index = row)."""
    return tuple(f"{a}/{c}" for _, a, c in character_table())


_VINYALS_VAL_ALPHABETS = ("Hebrew", "Mkhedruli_(Georgian)", "Armenian", "Early_Aramaic", "Bengali")
_VINYALS_TEST_ALPHABETS = (
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)",
    "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
)  # fmt: skip
_VINYALS_TEST_CHARACTERS = tuple(f"Gurmukhi/character{i}" for i in (42, 43, 44, 45))

SCHEMES: dict[str, tuple[str, ...]] = {
    "lake": ("background", "evaluation"),
    "maml": ("train", "val", "test"),
    "vinyals": ("train", "val", "test"),
}
_LAKE_ALIASES = {"train": "background", "test": "evaluation"}


@functools.cache
def _split_table() -> dict[str, dict[str, np.ndarray]]:
    rows = character_table()
    names = character_names()
    index = {name: i for i, name in enumerate(names)}
    origin = np.array([o for o, _, _ in rows])
    lake = {s: np.flatnonzero(origin == s) for s in ORIGINS}

    shuffled = sorted(names)  # MAML lists all 50 alphabets together
    random.Random(1).shuffle(shuffled)
    maml = {
        "train": shuffled[:1100],
        "val": shuffled[1100:1200],
        "test": shuffled[1200:],
    }
    maml = {s: np.sort([index[n] for n in v]) for s, v in maml.items()}

    alphabet = [a for _, a, _ in rows]
    vin = np.array(
        [
            "test"
            if (a in _VINYALS_TEST_ALPHABETS or n in _VINYALS_TEST_CHARACTERS)
            else "val"
            if a in _VINYALS_VAL_ALPHABETS
            else "train"
            for a, n in zip(alphabet, names, strict=True)
        ]
    )
    vinyals = {s: np.flatnonzero(vin == s) for s in SCHEMES["vinyals"]}
    out = {"lake": lake, "maml": maml, "vinyals": vinyals}
    for splits in out.values():
        for v in splits.values():
            v.setflags(write=False)
    return out


def _resolve_split(scheme: str, split: str) -> tuple[str, str]:
    if scheme not in SCHEMES:
        raise ValueError(
            f"unknown Omniglot split scheme {scheme!r}; choose one of {sorted(SCHEMES)}"
        )
    if scheme == "lake":
        split = _LAKE_ALIASES.get(split, split)
        if split == "val":
            raise ValueError(
                "scheme 'lake' has no validation split (Lake et al.: background/evaluation only); "
                "use scheme 'maml' or 'vinyals' for train/val/test"
            )
    if split not in SCHEMES[scheme]:
        raise ValueError(
            f"unknown split {split!r} for scheme {scheme!r}; choose one of {SCHEMES[scheme]}"
            + (" (or the aliases 'train'/'test')" if scheme == "lake" else "")
        )
    return scheme, split


def split_indices(scheme: str, split: str) -> np.ndarray:
    """Character indices (rows of :attr:`Omniglot.images`) of one split, sorted ascending.

    Args:
      scheme: ``"lake"``, ``"maml"`` or ``"vinyals"`` (see the module docstring for sources).
      split: ``"background"``/``"evaluation"`` for lake (aliases ``"train"``/``"test"``),
        ``"train"``/``"val"``/``"test"`` for maml and vinyals.

    Returns:
      Read-only int64 array ``[C]`` of character indices in ``[0, 1623)``.

    Raises:
      ValueError: unknown scheme or split, or ``"val"`` for lake.
    """
    scheme, split = _resolve_split(scheme, split)
    return _split_table()[scheme][split]


def split_counts(*, rotations: bool = False) -> dict[str, dict[str, int]]:
    """Number of classes of every split of every scheme, e.g. for the CLI to print.

    Args:
      rotations: count each character's 90/180/270 degree rotations as new classes (x4).

    Returns:
      ``{scheme: {split: classes}}``, e.g. ``{"lake": {"background": 964, "evaluation": 659},
      "maml": {"train": 1100, "val": 100, "test": 423}, "vinyals": {"train": 1028, "val": 172,
      "test": 423}}`` without rotations.
    """
    factor = 4 if rotations else 1
    return {
        scheme: {split: factor * len(idx) for split, idx in splits.items()}
        for scheme, splits in _split_table().items()
    }
