"""Keep what a training run needs to continue on another machine, inside the repository.

A long CPU run lives in a workdir outside the checkout; a new machine starts from the
repository alone. This copies the run's resumable core into ``DEST`` (under
``benchmarks/results/``): ``config.yaml``, ``environment.json``, ``metrics.jsonl``, the latest
complete checkpoint and ``best/`` (a Conv-4 run's state is a few MB), never the lock file or
older checkpoints. The copy is written next to ``DEST``, compared with the workdir file by file
(sha256) and renamed into place. It can run while the run trains: a checkpoint still being
written is not complete and is not copied (``metrics.jsonl`` may then hold rows past the kept
step; a resume drops them).

To continue on a new machine, copy it back to a workdir and run the same command::

    python benchmarks/keep_run.py /work/runs/study benchmarks/results/runs/study
    # ... new machine:
    cp -r benchmarks/results/runs/study /work/runs/study
    jaxmeta train --config CONFIG --workdir /work/runs/study   # resumes from the kept step
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

FILES = ("config.yaml", "environment.json", "metrics.jsonl")


def complete_steps(checkpoints: Path) -> list[int]:
    """Steps whose checkpoint directory was committed (orbax writes ``commit_success.txt``)."""
    if not checkpoints.is_dir():
        return []
    return sorted(
        int(d.name)
        for d in checkpoints.iterdir()
        if d.name.isdigit() and not d.is_symlink() and (d / "commit_success.txt").is_file()
    )


def keep(workdir: Path, dest: Path) -> int:
    """Copy ``workdir``'s resumable core to ``dest``; the step kept."""
    steps = complete_steps(workdir / "checkpoints")
    if not steps:
        raise ValueError(f"{workdir}: no complete checkpoint to keep")
    for name in FILES:
        if not (workdir / name).is_file():
            raise ValueError(f"{workdir}: {name} is missing (not a jaxmeta workdir?)")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "checkpoints").mkdir(parents=True)
    step = steps[-1]
    shutil.copytree(
        workdir / "checkpoints" / str(step), tmp / "checkpoints" / str(step), symlinks=True
    )
    if (workdir / "best").is_dir():
        shutil.copytree(workdir / "best", tmp / "best", symlinks=True)
    for name in FILES:
        shutil.copy2(workdir / name, tmp / name)
    check(workdir, tmp)
    old = dest.with_name(dest.name + ".old")
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return step


def check(source: Path, copy: Path) -> None:
    """Every file of ``copy`` has the bytes of the same file in ``source`` (sha256). The
    checkpoint's own checksum is verified when the run resumes from it (a damaged newest
    step is skipped for the one before, so keep at least one intact copy)."""
    for path in sorted(p for p in copy.rglob("*") if p.is_file()):
        rel = path.relative_to(copy)
        if _sha256(path) != _sha256(source / rel):
            raise ValueError(f"{rel} changed while it was copied; run keep_run again")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path, help="the run's workdir (outside the checkout)")
    ap.add_argument("dest", type=Path, help="where to keep it (e.g. benchmarks/results/runs/NAME)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        step = keep(args.workdir, args.dest)
    except (ValueError, OSError) as err:
        print(f"keep_run: {err}", file=sys.stderr)
        return 2
    print(f"kept step {step} of {args.workdir} in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
