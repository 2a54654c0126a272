"""Metric logging: a JSONL file always, TensorBoard when asked for, a PNG at the end.

Each line of ``metrics.jsonl`` is one JSON object with ``split`` (``train``, ``val``,
``test``) and ``step``; train rows hold the means over the last ``log_every`` steps
(``loss``, ``accuracy``, ``grad_norm``...), ``steps_per_sec``, ``wall_time`` (seconds of
training since the run began, summed over all its sessions: a resumed run continues from
the time logged at its checkpoint step, so compilation and the time lost to an interruption
are not counted) and ``session_time`` (seconds since this process started training);
validation rows hold ``accuracy``/``loss`` (or ``mse``) with ``ci95``.

On resume from step ``s`` the log is first cut back to the rows with ``step <= s``
(:func:`truncate_metrics`), so rows of steps that are re-run are not duplicated and
rows of steps that were checkpointed are not lost.

A ``warning`` row (``split: "warning"``, ``step``, ``warning``, ``message``) records a
problem the run noticed but survived, e.g. divergence (:class:`DivergenceMonitor`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from jaxmeta.train.workdir import WorkdirError, atomic_write, atomic_write_text

METRICS_FILE = "metrics.jsonl"

# Divergence warning (classification): the post-adaptation training loss above
# DIVERGENCE_FACTOR x the loss of chance, ln(N), for DIVERGENCE_STEPS consecutive
# meta-steps. A learning run starts near ln(N) and only goes down; 10 x ln(N) means logits
# of tens to billions (e.g. algorithm.inner_lr=1e6 gives ~4e9) that stay finite, so the NaN
# guard never fires and the run would end "successfully" at chance accuracy.
DIVERGENCE_FACTOR = 10.0
DIVERGENCE_STEPS = 100


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a ``metrics.jsonl`` (a torn last line, from a kill, is skipped)."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_metrics(path: str | Path, *, max_step: int) -> int:
    """Keep only the rows with ``step <= max_step`` (atomic rewrite); returns rows kept."""
    path = Path(path)
    if path.is_symlink():  # not the run's own log: never read or written through
        atomic_write_text(path, "")
        return 0
    if not path.exists():
        return 0
    rows = [
        r for r in read_metrics(path) if isinstance(r, dict) and int(r.get("step", 0)) <= max_step
    ]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def logged_wall_time(path: str | Path, *, max_step: int) -> float:
    """``wall_time`` of the last train row with ``step <= max_step`` (0.0 if none).

    A resumed run adds its own session's time to this, so ``wall_time`` keeps growing
    across resumes.
    """
    times = [
        r["wall_time"]
        for r in read_metrics(path)
        if r.get("split") == "train"
        and int(r.get("step", 0)) <= max_step
        and isinstance(r.get("wall_time"), int | float)
    ]
    return float(times[-1]) if times else 0.0


def flatten_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"steps": 5}}`` -> ``{"train.steps": 5}`` (tuples as lists, as YAML reads)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


CONFIG_HEADER = "# the resolved config of this run, written by jaxmeta train\n"


def _check_ours(config_path: Path, config_yaml: str) -> None:
    """Refuse to replace a ``config.yaml`` that jaxmeta did not write for this run."""
    import yaml

    if not config_path.exists() and not config_path.is_symlink():
        return
    try:
        text = config_path.read_text() if not config_path.is_symlink() else None
        same = text is not None and (
            text.startswith(CONFIG_HEADER) or yaml.safe_load(text) == yaml.safe_load(config_yaml)
        )
    except (OSError, ValueError, yaml.YAMLError):
        same = False
    if not same:
        raise WorkdirError(
            f"{config_path} exists and was not written by jaxmeta train (a fresh run never "
            "replaces it): move it elsewhere and pass it with --config, or choose another "
            "--workdir"
        )


def record_run_start(
    workdir: str | Path,
    *,
    config_yaml: str,
    env: dict[str, Any],
    resume_step: int | None,
) -> None:
    """Write ``config.yaml`` and ``environment.json`` at a run's start; keep them on resume.

    A fresh run writes both, but never replaces a ``config.yaml`` it did not write (one
    without :data:`CONFIG_HEADER` that differs from the run's: e.g. the user's own file with
    comments and a ``base:`` line): :class:`~jaxmeta.train.workdir.WorkdirError` instead.
    A resumed run leaves ``config.yaml`` as it is unless a key that may change on resume
    (e.g. ``train.steps``) changed, in which case the file is updated (the change is
    recorded); ``environment.json`` keeps the first session's environment at
    its top level and appends ``{"resumed_at_step": s, "config_changes": {...}, ...env}`` to
    its ``resumes`` list.
    """
    import yaml

    workdir = Path(workdir)
    config_path, env_path = workdir / "config.yaml", workdir / "environment.json"
    if resume_step is None:
        _check_ours(config_path, config_yaml)
    config_yaml = CONFIG_HEADER + config_yaml
    if resume_step is None or not config_path.exists() or not env_path.exists():
        atomic_write_text(config_path, config_yaml)
        atomic_write_text(env_path, json.dumps(env, indent=2) + "\n")
        return
    old = flatten_config(yaml.safe_load(config_path.read_text()) or {})
    new = flatten_config(yaml.safe_load(config_yaml) or {})
    changes = {
        k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
    }
    if changes:
        atomic_write_text(config_path, config_yaml)
    try:
        doc = json.loads(env_path.read_text())
    except (OSError, json.JSONDecodeError):
        doc = {}
    doc.setdefault("resumes", []).append(
        {"resumed_at_step": resume_step, "config_changes": changes, **env}
    )
    atomic_write_text(env_path, json.dumps(doc, indent=2) + "\n")


class MetricsWriter:
    """Append rows to ``<workdir>/metrics.jsonl`` and, optionally, TensorBoard.

    Args:
      workdir: the run's directory.
      tensorboard: also write TensorBoard event files to ``<workdir>/tensorboard``
        (needs ``tensorboardX``: ``pip install jaxmeta[tensorboard]``; without it a
        message says so and only the JSONL is written).
    """

    def __init__(self, workdir: str | Path, *, tensorboard: bool = False):
        self.path = Path(workdir) / METRICS_FILE
        # O_NOFOLLOW: rows are never appended through a link (ELOOP instead).
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        self._file = os.fdopen(fd, "a", buffering=1)  # line-buffered: tail -f works
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
            except ImportError:
                print(
                    "jaxmeta: train.tensorboard is true but tensorboardX is not installed "
                    "(pip install 'jaxmeta[tensorboard]'); writing metrics.jsonl only.",
                    file=sys.stderr,
                )

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (``split`` and ``step`` required)."""
        row = {k: _clean(v) for k, v in row.items()}
        self._file.write(json.dumps(row) + "\n")
        if self._tb is not None:
            split, step = row["split"], int(row["step"])
            for k, v in row.items():
                if k not in ("split", "step") and isinstance(v, int | float):
                    self._tb.add_scalar(f"{split}/{k}", v, step)

    def flush(self) -> None:
        """Make every written row durable (called before each checkpoint)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def plot_learning_curves(
    metrics_path: str | Path, png_path: str | Path, *, title: str = ""
) -> bool:
    """PNG of the train loss/accuracy (and validation) curves from a metrics JSONL.

    Returns:
      ``True`` if written; ``False`` (with a message) when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "jaxmeta: matplotlib is not installed (pip install matplotlib); no learning-curve PNG.",
            file=sys.stderr,
        )
        return False
    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val"]
    panels = [k for k in ("loss", "accuracy", "mse", "return") if any(k in r for r in train + val)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 3.6))
    axes = [axes] if not hasattr(axes, "__len__") else list(axes)
    for ax, key in zip(axes, panels, strict=False):
        for name, part in (("train", train), ("val", val)):
            pts = [(r["step"], r[key]) for r in part if isinstance(r.get(key), int | float)]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=name, marker="o" if name == "val" else None, ms=3)
        ax.set_xlabel("meta-step")
        ax.set_ylabel(key)
        values = [r.get(key) for r in train + val]
        if key == "loss" and not any(isinstance(v, int | float) and v <= 0 for v in values):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:  # a reader never sees half a PNG; nothing is written through a link
        atomic_write(png_path, lambda f: fig.savefig(f, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return True


class DivergenceMonitor:
    """Notices a classification run whose training loss stays far above chance.

    Args:
      ways: N of the training episodes (chance loss ``ln N``); ``None`` (regression)
        disables the monitor.
      factor, steps: the threshold, default :data:`DIVERGENCE_FACTOR` x chance for
        :data:`DIVERGENCE_STEPS` consecutive meta-steps.
    """

    def __init__(self, ways: int | None, *, factor: float | None = None, steps: int | None = None):
        self.factor = DIVERGENCE_FACTOR if factor is None else factor
        self.steps = DIVERGENCE_STEPS if steps is None else steps
        self.ways = ways
        self.limit = self.factor * math.log(ways) if ways and ways > 1 else None
        self._run = 0
        self._warned = False

    def update(self, losses, *, first_step: int) -> dict[str, Any] | None:
        """Feed the per-step losses of steps ``first_step, first_step + 1, ...``.

        Returns the ``warning`` metrics row the first time the threshold is crossed.
        """
        if self.limit is None or self._warned:
            return None
        for i, loss in enumerate(losses):
            self._run = self._run + 1 if float(loss) > self.limit else 0
            if self._run >= self.steps:
                self._warned = True
                step = first_step + i
                message = (
                    f"the training loss has stayed above {self.factor:g} x chance "
                    f"({self.factor:g} x ln {self.ways} = {self.limit:.3g}) for {self.steps} "
                    f"consecutive steps (step {step}: {float(loss):.3g}): the run is diverging. "
                    "Lower algorithm.inner_lr or optimizer.learning_rate, or set "
                    "optimizer.grad_clip_norm"
                )
                return {
                    "split": "warning",
                    "step": step,
                    "warning": "divergence",
                    "message": message,
                }
        return None
