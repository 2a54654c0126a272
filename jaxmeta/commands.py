"""The work behind ``jaxmeta predict``, ``jaxmeta plot`` and the naming of ``jaxmeta
evaluate``'s result files (``jaxmeta data omniglot --export-test`` is
:func:`jaxmeta.data.omniglot.export.export_test_images`, kept importable from here).

:mod:`jaxmeta.cli` parses arguments and turns exceptions into one-line errors; the functions
here take keyword arguments and raise ``ValueError`` / ``FileNotFoundError`` for bad input.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

import jaxmeta
from jaxmeta.data.images import ImageFolderError, read_query, read_support_folder
from jaxmeta.data.omniglot.export import export_test_images  # noqa: F401 -- its former home
from jaxmeta.train.metrics import METRICS_FILE, plot_learning_curves, read_metrics
from jaxmeta.train.population_results import plot_population_curves
from jaxmeta.train.workdir import (  # noqa: F401 -- eval_result_name, write_new_json: former home
    atomic_write_text,
    eval_result_name,
    write_new_json,
)

# --------------------------------------------------------------------------------------------
# predict


def predict_folders(
    *,
    workdir: str | Path,
    support: str | Path,
    query: list[str | Path],
    checkpoint: str | int = "best",
    bn_mode: str | None = None,
    inner_steps: int | None = None,
    run: int | None = None,
    trust_plugins: bool | tuple[str, ...] | list[str] = False,
) -> dict[str, Any]:
    """Classify query images with a trained run adapted to a folder of labelled examples.

    Args:
      workdir: a ``jaxmeta train`` workdir.
      support: folder with one subfolder per class, holding that class's images.
      query: image files and/or folders (searched recursively; a query inside a subfolder
        named like a support class counts as labelled, and accuracy is reported).
      checkpoint, bn_mode, inner_steps, run, trust_plugins: as :func:`jaxmeta.load`
        (``run``: a population's member).

    Returns:
      ``{"workdir", "checkpoint", "step", "algorithm", "bn_mode", "classes", "predictions":
      [{"file", "predicted", "probability", "probabilities": {class: p}, ["true"]}],
      ["accuracy"]}``.

    Raises:
      ValueError: unusable folders or files (:class:`jaxmeta.data.images.ImageFolderError`),
        a class count the model cannot take.
      FileNotFoundError: not a workdir, or no such checkpoint.
    """
    clf = jaxmeta.load(
        workdir,
        checkpoint,
        bn_mode=bn_mode,
        inner_steps=inner_steps,
        run=run,
        trust_plugins=trust_plugins,
    )
    if not clf.classification:
        raise ValueError(f"{workdir} is a {clf.config.data.name} regression run, not a classifier")
    size = clf.input_shape[0]
    # The preprocessing the model was trained on (Omniglot's data.resize; absent: LANCZOS).
    resize = getattr(clf.config.data, "resize", "lanczos")
    if resize not in ("lanczos", "binary"):
        resize = "lanczos"
    names, sx, sy = read_support_folder(support, image_size=size, resize=resize)
    if clf.ways is not None and len(names) != clf.ways:
        raise ImageFolderError(
            f"{support} has {len(names)} class folders ({', '.join(names)}) but this "
            f"{clf.learner.name} model was trained {clf.ways}-way and its output layer has "
            f"{clf.ways} classes: give exactly {clf.ways} class folders"
        )
    if len(names) < 2:
        raise ImageFolderError(f"{support} has one class folder ({names[0]}): give at least 2")
    files, qx = read_query(query, image_size=size, resize=resize)
    probs = _probabilities(clf, sx, sy, qx)
    rows = []
    for f, p in zip(files, probs, strict=True):
        i = int(np.argmax(p))
        row = {
            "file": str(f),
            "predicted": names[i],
            "probability": float(p[i]),
            "probabilities": {n: float(v) for n, v in zip(names, p, strict=True)},
        }
        if f.parent.name in names and not any(Path(q) == f for q in query):
            row["true"] = f.parent.name
        rows.append(row)
    out = {
        "workdir": str(workdir),
        "checkpoint": clf.checkpoint,
        "step": clf.step,
        "algorithm": clf.learner.name,
        "bn_mode": clf.bn_mode if clf.uses_batch_statistics else None,
        "inner_steps": clf.inner_steps,
        "classes": names,
        "support_images": int(sx.shape[0]),
        "predictions": rows,
    }
    if rows and all("true" in r for r in rows):
        out["accuracy"] = float(np.mean([r["true"] == r["predicted"] for r in rows]))
    return out


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cells(values: list[str]) -> list[str]:
    """Text cells safe to open in a spreadsheet: one starting like a formula (``= + - @``,
    tab, CR; a class folder named ``=HYPERLINK(...)``) gets a leading ``'`` (OWASP's CSV
    injection advice), so it is shown as text, never evaluated."""
    return [f"'{v}" if str(v).startswith(_FORMULA_STARTS) else str(v) for v in values]


PREDICT_BATCH = 256


def _probabilities(clf, sx, sy, qx) -> np.ndarray:
    """float64 ``[n_q, N]``. Inductive queries are independent: they go in batches of
    :data:`PREDICT_BATCH` (the last padded, so one program serves all), so memory does not
    grow with the number of files; transductive ones are normalised together, in one call."""
    if clf.uses_batch_statistics and clf.bn_mode == "transductive":
        return np.asarray(clf.probabilities(sx, sy, qx), np.float64)
    adapted = clf.adapt(sx, sy)
    out = []
    for start in range(0, len(qx), PREDICT_BATCH):
        batch = qx[start : start + PREDICT_BATCH]
        n = len(batch)
        if n < PREDICT_BATCH and len(qx) > PREDICT_BATCH:
            batch = np.concatenate([batch, np.zeros_like(qx[: PREDICT_BATCH - n])])
        out.append(np.asarray(adapted.probabilities(batch), np.float64)[:n])
    return np.concatenate(out)


def write_predictions(result: dict[str, Any], path: str | Path) -> Path:
    """``.json``: the whole result; ``.csv``: one row per query (file, predicted,
    probability, true if known, then one probability column per class)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    elif path.suffix.lower() == ".csv":
        names = result["classes"]
        labelled = any("true" in r for r in result["predictions"])
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(
            _cells(["file", "predicted", "probability", *(["true"] if labelled else []), *names])
        )
        for r in result["predictions"]:
            w.writerow(
                _cells([r["file"], r["predicted"]])
                + [f"{r['probability']:.6f}"]
                + (_cells([r.get("true", "")]) if labelled else [])
                + [f"{r['probabilities'][n]:.6f}" for n in names]
            )
        atomic_write_text(path, buf.getvalue())
    else:
        raise ValueError(f"--out {path}: use a .csv or .json file name")
    return path


def format_predictions(result: dict[str, Any]) -> str:
    """The table ``jaxmeta predict`` prints: one line per query."""
    rows = result["predictions"]
    width = max(len(Path(r["file"]).name) for r in rows)
    pwidth = max(len(r["predicted"]) for r in rows)
    lines = []
    for r in rows:
        line = (
            f"{Path(r['file']).name:<{width}}  {r['predicted']:<{pwidth}}  "
            f"{100 * r['probability']:5.1f}%"
        )
        if "true" in r:
            line += "  ok" if r["true"] == r["predicted"] else f"  wrong (true: {r['true']})"
        lines.append(line)
    if "accuracy" in result:
        lines.append(f"accuracy: {100 * result['accuracy']:.1f}% of {len(rows)} labelled queries")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# plot


def replot(workdir: str | Path, out: str | Path | None = None) -> Path:
    """Re-render ``learning_curves.png`` from a workdir's ``metrics.jsonl``.

    Raises:
      FileNotFoundError: no ``metrics.jsonl`` there.
      RuntimeError: matplotlib could not draw it.
    """
    workdir = Path(workdir)
    metrics = workdir / METRICS_FILE
    if not metrics.is_file():
        raise FileNotFoundError(f"{workdir} has no {METRICS_FILE}: not a 'jaxmeta train' workdir")
    title = workdir.name
    config = workdir / "config.yaml"
    if config.is_file():
        import yaml

        title = (yaml.safe_load(config.read_text()) or {}).get("name") or title
    png = Path(out) if out is not None else workdir / "learning_curves.png"
    plot = plot_learning_curves
    if any("run" in row for row in read_metrics(metrics)[:50]):  # a population's log
        plot = plot_population_curves
    if not plot(metrics, png, title=title):
        raise RuntimeError("matplotlib is not available: no plot")
    return png
