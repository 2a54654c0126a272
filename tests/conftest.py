"""Test-wide settings: strict rank promotion (no silent broadcasting between ranks, the
project's convention, docs/architecture.md) and shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

REPO = Path(__file__).resolve().parents[1]


def shipped_algorithms() -> set[str]:
    """The algorithms the package itself registers (``jaxmeta/algorithms``): the set every
    "each algorithm is covered" test compares with. Plug-ins registered while the suite runs
    (``jaxmeta.rl``'s ``maml_trpo``/``maml_rl`` once an RL test imported it, test plug-ins)
    are not included, so those tests do not depend on test order."""
    from jaxmeta.algorithms import ALGORITHMS

    def module(factory) -> str:  # functools.partial (fomaml) keeps its function in .func
        return getattr(getattr(factory, "func", factory), "__module__", "")

    return {n for n, f in ALGORITHMS.items() if module(f).startswith("jaxmeta.algorithms.")}


@pytest.fixture(scope="session")
def omniglot_zip_dir() -> Path:
    """Folder with the genuine Omniglot zips (../shared/data/omniglot or $JAXMETA_OMNIGLOT_DIR)."""
    path = Path(
        os.environ.get("JAXMETA_OMNIGLOT_DIR", REPO.parent / "shared" / "data" / "omniglot")
    )
    if not (path / "images_background.zip").exists():
        pytest.fail(f"Omniglot zips not found in {path}; set JAXMETA_OMNIGLOT_DIR")
    return path


@pytest.fixture(scope="session")
def omniglot_data_dir(tmp_path_factory) -> Path:
    """A fresh TFDS data dir for this session (the prepared Omniglot lives here)."""
    return tmp_path_factory.mktemp("tfds_data")


@pytest.fixture(scope="session")
def omniglot(omniglot_zip_dir, omniglot_data_dir):
    """The genuine Omniglot (28x28), prepared once per session from ``omniglot_zip_dir``."""
    from jaxmeta.data import load_omniglot

    return load_omniglot(data_dir=omniglot_data_dir, manual_dir=omniglot_zip_dir, download=False)
