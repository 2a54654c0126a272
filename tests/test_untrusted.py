"""A run folder, checkpoint, archive or image folder from someone else is data (issue 28):
opening it runs no code, writes nothing through a link, and cannot exhaust memory.

One tiny trained run (the toy plug-in dataset of tests/toy_dataset.py, ProtoNets, 2 steps)
is shared by the module; each probe copies it when it changes it. Hostile archives and
images are crafted header-first, so nothing large is ever written or read.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

import jaxmeta
from jaxmeta.cli import main

TOY = Path(__file__).resolve().with_name("toy_dataset.py")
TINY = {
    "plugins": [str(TOY)],
    "name": "received",
    "data": {"name": "toy", "ways": 3, "shots": 1, "queries": 2, "channels": 1},
    "model": {"name": "conv4", "num_classes": None, "filters": 4, "head": "mean"},
    "algorithm": {"name": "protonets"},
    "train": {
        "steps": 2,
        "meta_batch_size": 2,
        "steps_per_call": 2,
        "log_every": 2,
        "eval_every": 2,
        "checkpoint_every": 2,
        "plot": False,
    },
    "eval": {"episodes": 2, "batch_size": 2},
}


# One worker runs this module: its module fixture (a trained run) is built once, not per worker.
pytestmark = [
    pytest.mark.xdist_group("test_untrusted"),
    pytest.mark.filterwarnings("ignore:.*pixels are ink:UserWarning"),  # random test images
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("JAXMETA_CACHE_DIR", "off")  # main() would enable one for the process


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny trained workdir (its own plug-in, toy_dataset.py, is imported by training)."""
    root = tmp_path_factory.mktemp("received")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    wd = root / "wd"
    assert main(["train", "-c", str(config), "-w", str(wd), "--no-progress"]) == 0
    return wd


def _copy(trained: Path, tmp_path: Path) -> Path:
    wd = tmp_path / "wd"
    shutil.copytree(trained, wd, symlinks=True)
    return wd


def _with_plugin(trained: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A received workdir whose config.yaml adds ``helper.py`` (beside it), which writes a
    marker file when imported: ``(workdir, helper, marker)``."""
    wd = _copy(trained, tmp_path)
    marker = tmp_path / "marker"
    helper = wd / "helper.py"
    helper.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    raw = yaml.safe_load((wd / "config.yaml").read_text())
    raw["plugins"] = [str(TOY), str(helper)]
    (wd / "config.yaml").write_text(yaml.safe_dump(raw))
    return wd, helper, marker


# ---------------------------------------------------------------- 1. code runs only if asked

OPENERS = {
    "evaluate": lambda wd, out: ["evaluate", "-w", str(wd), "--episodes", "2"],
    "predict": lambda wd, out: ["predict", "-w", str(wd), "--support", out, "--query", out],
    "export-features": lambda wd, out: ["export-features", str(wd), out],
    "train-resume": lambda wd, out: ["train", "-w", str(wd), "--no-progress"],
}


@pytest.mark.parametrize("command", sorted(OPENERS))
def test_a_received_workdirs_plugin_is_not_imported(trained, tmp_path, capsys, command):
    wd, helper, marker = _with_plugin(trained, tmp_path)
    capsys.readouterr()
    assert main(OPENERS[command](wd, str(tmp_path / "out"))) == 2
    err = capsys.readouterr().err
    assert not marker.exists(), "the run folder's plug-in ran"
    assert err.count("\n") == 1 and "jaxmeta: error:" in err
    assert str(helper) in err and "--plugin" in err and "--trust-plugins" in err


def test_jaxmeta_load_does_not_import_a_received_plugin(trained, tmp_path):
    wd, helper, marker = _with_plugin(trained, tmp_path)
    with pytest.raises(ValueError, match="trust_plugins=True"):
        jaxmeta.load(wd)
    assert not marker.exists()
    assert jaxmeta.load(wd, trust_plugins=[str(helper)]).ways is None  # allowed: imported
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("how", ["--plugin", "--trust-plugins"])
def test_the_user_may_allow_a_workdirs_plugin(trained, tmp_path, capsys, how):
    wd, helper, marker = _with_plugin(trained, tmp_path)
    flag = ["--plugin", str(helper)] if how == "--plugin" else ["--trust-plugins"]
    assert main(["evaluate", "-w", str(wd), "--episodes", "2", *flag]) == 0
    assert marker.read_text() == "ran"


def test_builtin_plugins_need_no_permission():
    from jaxmeta.plugins import UntrustedPluginError, load_plugins

    load_plugins(["jaxmeta.rl"], allow=())  # shipped inside jaxmeta
    with pytest.raises(UntrustedPluginError, match="'some_module_xyz' not imported"):
        load_plugins(["some_module_xyz"], allow=())


def test_checkpoint_meta_never_imports_a_plugin(trained, tmp_path):
    """The resume check compares with the config saved in the checkpoint's JSON meta, which
    lies outside the state checksum: a plug-in added there is never imported."""
    from jaxmeta.train import Checkpoints, load_config
    from jaxmeta.train.run import check_resumable

    wd, helper, marker = _with_plugin(trained, tmp_path)
    cfg = load_config(trained / "config.yaml")  # the user's own, trusted config
    ckpt = Checkpoints(trained, read_only=True)
    try:
        meta = ckpt.saved_meta()
    finally:
        ckpt.close()
    meta["config"]["plugins"] = [str(TOY), str(helper)]
    check_resumable(wd, cfg, meta)  # plugins may change on resume: no error
    assert not marker.exists()


# ---------------------------------------------------------------- 2. nothing through a link


def test_a_linked_lock_file_is_refused(tmp_path):
    from jaxmeta.train.workdir import WorkdirError, WorkdirLock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name, make in (("sym", os.symlink), ("hard", os.link)):
        wd = tmp_path / name
        wd.mkdir()
        make(victim, wd / ".lock")
        with pytest.raises(WorkdirError, match=r"\.lock is"):
            WorkdirLock(wd).acquire()
        assert victim.read_text() == "precious\n"


def test_the_metrics_rewrite_writes_through_no_link(trained, tmp_path):
    from jaxmeta.train.metrics import MetricsWriter, truncate_metrics

    wd = _copy(trained, tmp_path)
    victim = tmp_path / "bashrc"
    victim.write_text("# rc\n")
    os.symlink(victim, wd / "metrics.jsonl.tmp")  # the old fixed temporary name
    assert truncate_metrics(wd / "metrics.jsonl", max_step=2) > 0
    assert victim.read_text() == "# rc\n"
    assert not (wd / "metrics.jsonl").is_symlink()
    (wd / "metrics.jsonl").unlink()
    os.symlink(victim, wd / "metrics.jsonl")
    assert truncate_metrics(wd / "metrics.jsonl", max_step=2) == 0  # not read through
    (wd / "metrics.jsonl").unlink()
    os.symlink(victim, wd / "metrics.jsonl")
    with pytest.raises(OSError):  # rows are never appended through a link
        MetricsWriter(wd)
    assert victim.read_text() == "# rc\n"


def test_export_features_writes_through_no_link(trained, tmp_path):
    from jaxmeta.feature_export import export_features

    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for name in ("train_features.npz", "export.json"):
        os.symlink(victim, out / name)
    export_features(trained, out)
    assert victim.read_text() == "precious"
    assert not (out / "train_features.npz").is_symlink()
    assert np.load(out / "train_features.npz")["features"].ndim == 2


def _png(path: Path, w: int, h: int, rows: bytes | None = None) -> Path:
    """A 1-bit PNG of w x h white pixels (``rows``: its raw scanlines; default all white,
    zlib-compressed to a few KB however large), or a header-only one (``rows=b""``)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    if rows is None:
        line = b"\x00" + b"\xff" * ((w + 7) // 8)
        z = zlib.compressobj(1)
        body = b"".join(z.compress(line) for _ in range(h)) + z.flush()
    else:
        body = zlib.compress(rows)
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def test_predictions_csv_is_quoted_and_written_through_no_link(trained, tmp_path, capsys):
    support = tmp_path / "support"
    names = ['=HYPERLINK("x")', "+b", "-c", "@d"]
    rng = np.random.default_rng(0)
    from PIL import Image

    for name in names:
        for j in range(2):
            img = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            (support / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(support / name / f"{j}.png")
    out = tmp_path / "pred.csv"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, out)
    args = ["predict", "-w", str(trained), "--support", str(support), "--query", str(support)]
    assert main([*args, "--out", str(out)]) == 0, capsys.readouterr().err
    assert victim.read_text() == "precious" and not out.is_symlink()
    import csv

    cells = [c for row in csv.reader(out.open()) for c in row]
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)
    assert '\'=HYPERLINK("x")' in cells


def test_a_fresh_run_keeps_a_config_yaml_it_did_not_write(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    wd = tmp_path / "wd"
    wd.mkdir()
    mine = "# my experiment\nbase: tiny.yaml\ntrain: {steps: 4}\n"
    (wd / "config.yaml").write_text(mine)
    assert main(["train", "-c", str(config), "-w", str(wd), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "was not written by jaxmeta train" in err and err.count("\n") == 2  # + the banner
    assert (wd / "config.yaml").read_text() == mine


def test_a_linked_checkpoint_folder_is_refused(tmp_path):
    from jaxmeta.train import Checkpoints
    from jaxmeta.train.checkpoint import CheckpointWriteError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    wd = tmp_path / "wd"
    wd.mkdir()
    os.symlink(elsewhere, wd / "checkpoints")
    with pytest.raises(CheckpointWriteError, match="symbolic link") as info:
        Checkpoints(wd)
    assert "disk space" not in str(info.value)


# ---------------------------------------------------------------- 3. memory bounded


def _patch_size(data: bytes, size: int) -> bytes:
    """A zip with its (only) member's declared uncompressed size set to ``size``."""
    buf = bytearray(data)
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = buf.index(sig)
        buf[at + offset : at + offset + 4] = struct.pack("<I", size)
    return bytes(buf)


def test_an_omniglot_zip_member_declaring_3_gib_is_not_read(tmp_path, monkeypatch):
    from jaxmeta.data.omniglot import OmniglotCorruptError, read_verified_zip

    mem = io.BytesIO()
    with zipfile.ZipFile(mem, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images_background/Latin/character01/0001_01.png", b"\0" * 100)
    path = tmp_path / "images_background.zip"
    path.write_bytes(_patch_size(mem.getvalue(), 3 * 2**30))
    read = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: read.append(a))
    with pytest.raises(OmniglotCorruptError, match="declares 3,221,225,472 bytes"):
        read_verified_zip(path, "background")
    assert read == []  # refused from the central directory, nothing decompressed


def test_a_cifar_archive_member_declaring_3_gib_is_not_read(tmp_path):
    """The member's header declares 3 GiB; its data is not even there."""
    from jaxmeta.data.archives import CorruptFileError
    from jaxmeta.data.cifar_fs import read_cifar100

    info = tarfile.TarInfo("cifar-100-python/train")
    info.size = 3 * 2**30
    path = tmp_path / "cifar-100-python.tar.gz"
    path.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096))
    with pytest.raises(CorruptFileError, match="declares 3,221,225,472 bytes"):
        read_cifar100(path)


def test_a_huge_pickle_request_is_a_one_line_error():
    from jaxmeta.data.archives import CorruptFileError, load_pickle

    bomb = b"cbuiltins\nbytearray\n(I10000000000000\ntR."  # bytearray(10**13)
    with pytest.raises(CorruptFileError, match="more memory"):
        load_pickle(bomb, what="a pickle", get_from="nowhere")


def test_oversized_query_images_are_refused_before_decoding(tmp_path):
    from jaxmeta.data.images import ImageFolderError, read_image

    # 13000 x 13000 (169 M pixels: under Pillow's refusal, ~170 MB decoded), a few KB here.
    big = _png(tmp_path / "big.png", 13000, 13000)
    assert big.stat().st_size < 2**20
    with pytest.raises(ImageFolderError, match="13000x13000"):
        read_image(big)
    # Over Pillow's own limit: one line, not a DecompressionBombError traceback.
    bomb = _png(tmp_path / "bomb.png", 20000, 20000, rows=b"")
    with pytest.raises(ImageFolderError, match="bomb.png"):
        read_image(bomb)


def test_predict_evaluates_queries_in_batches(trained, tmp_path, monkeypatch):
    from jaxmeta import commands
    from jaxmeta.data.images import read_support_folder
    from jaxmeta.inference import FewShotClassifier

    seen = []
    original = FewShotClassifier._images

    def spy(self, x, name):
        if name == "query_x":
            seen.append(len(x))
        return original(self, x, name)

    monkeypatch.setattr(FewShotClassifier, "_images", spy)
    monkeypatch.setattr(commands, "PREDICT_BATCH", 4)
    support = tmp_path / "support"
    rng = np.random.default_rng(1)
    from PIL import Image

    for name in ("a", "b"):
        (support / name).mkdir(parents=True)
        for j in range(5):
            img = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(img).save(support / name / f"{j}.png")
    res = commands.predict_folders(workdir=trained, support=support, query=[support])
    assert len(res["predictions"]) == 10 and max(seen) <= 4
    clf = jaxmeta.load(trained)
    names, sx, sy = read_support_folder(support, image_size=8)
    whole = np.asarray(clf.probabilities(sx, sy, sx))  # one call: the same numbers
    got = np.array([[r["probabilities"][n] for n in names] for r in res["predictions"]])
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "train.meta_batch_size=1000000000"],
        ["--set", "eval.episodes=1000000000"],
    ],
)
def test_absurd_sizes_fail_before_compiling(tmp_path, capsys, args):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    wd = tmp_path / "wd"
    assert main(["train", "-c", str(config), "-w", str(wd), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "need at least" in err and "GiB" in err and "lower it" in err
    assert not (wd / "config.yaml").exists()  # before anything is written


def test_absurd_evaluation_episodes_fail_up_front(trained, capsys):
    assert main(["evaluate", "-w", str(trained), "--episodes", "1000000000"]) == 2
    assert "need at least" in capsys.readouterr().err


# ---------------------------------------------------------------- what already held


def test_what_held_still_holds(tmp_path):
    """Pickles refuse code; no pickle is loaded by np.load, no YAML by an unsafe loader."""
    from jaxmeta.data.archives import CorruptFileError, load_pickle

    evil = b"cos\nsystem\n(S'echo hi'\ntR."
    with pytest.raises(CorruptFileError, match="refusing to load os.system"):
        load_pickle(evil, what="a pickle", get_from="nowhere")
    src = Path(jaxmeta.__file__).parent
    for py in src.rglob("*.py"):
        text = py.read_text()
        assert "allow_pickle=True" not in text and "yaml.load(" not in text, py
