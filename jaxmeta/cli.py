"""The ``jaxmeta`` command: ``train``, ``evaluate`` and ``data``.

A thin layer: it reads a config (YAML + ``--set`` overrides), and calls the engine
(:func:`jaxmeta.train.train_and_evaluate`) or the data module with keyword arguments.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

EPILOG_TRAIN = textwrap.dedent(
    """\
    config files (from the repository root; also found relative to the repository
    when run elsewhere):
      configs/omniglot/<algorithm>_{5w1s,5w5s,20w1s,20w5s}.yaml  each paper's protocol;
        <algorithm>: maml fomaml reptile anil metasgd protonets matching snail
      configs/omniglot/maml_5w1s.yaml        default run, shortened for a laptop CPU
      configs/omniglot/maml_5w1s_paper.yaml  the same at paper length (60k steps)
      configs/sinusoid/maml_k{5,10,20}.yaml  MAML sinusoid regression
      configs/tests/tiny.yaml                tiny Conv-4, a few steps (tests)

    --set overrides (repeatable; value parsed as YAML; validated like the file):
      train.steps=60000        meta-iterations (the MAML paper's length)
      train.seed=1             seed of initialisation and task sampling
      train.steps_per_call=10  meta-steps fused into one jitted call
      train.eval_every=500     validation interval (0: never)
      eval.episodes=600        test episodes (95% CI = 1.96 std / sqrt(episodes))
      data.manual_dir=DIR      folder with the Omniglot zips (offline preparation)
      data.data_dir=DIR        TFDS data dir (default ~/tensorflow_datasets)
      algorithm.inner_lr=0.4   any algorithm keyword (checked against its signature)
    Every key is documented in jaxmeta/train/config.py.

    The workdir gets config.yaml, environment.json, metrics.jsonl, checkpoints/,
    best/, eval_test.json and learning_curves.png. Running train again on a workdir
    with a checkpoint resumes it exactly (same final parameters as an uninterrupted
    run); --config may then be omitted.

    Compiled programs are cached in ~/.cache/jaxmeta/xla (JAXMETA_CACHE_DIR=DIR or
    off, or JAX_COMPILATION_CACHE_DIR), so a resumed run does not compile again.

    Ctrl-C (SIGINT) or SIGTERM stops the run between steps (a checkpoint being
    written is completed first); run the same command to resume.

    exit status: 0 done, 1 training diverged (NaN/inf), 2 bad config, usage, workdir
    or file problem, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
    """
)

EPILOG_EVAL = textwrap.dedent(
    """\
    Prints accuracy ± 95% CI (1.96 std / sqrt(episodes)), or MSE for regression, and
    writes eval_<split>.json in the workdir (accuracy|mse, ci95, episodes, step,
    checkpoint, inner_steps, ...). The episodes are fixed by eval.seed, so results
    are comparable between runs and algorithms.
    """
)


def _parser() -> argparse.ArgumentParser:
    from jaxmeta import __version__

    p = argparse.ArgumentParser(
        prog="jaxmeta",
        description="jaxmeta: fast functional meta-learning in JAX (MAML, FOMAML, ...). "
        "Train from a YAML config, evaluate a run with a 95% confidence interval, "
        "prepare datasets.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'jaxmeta <command> --help' for the options of each command.\n"
        "Example: jaxmeta train --config configs/omniglot/maml_5w1s.yaml --workdir runs/5w1s",
    )
    p.add_argument("--version", action="version", version=f"jaxmeta {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{train,evaluate,data}")

    t = sub.add_parser(
        "train",
        help="train (or resume) an experiment, then test its best checkpoint",
        description="Meta-train from a config with a live progress bar (steps/s, loss, "
        "accuracy, ETA), validate periodically, keep the latest and the best orbax "
        "checkpoints (best = highest validation accuracy, or lowest validation MSE for "
        "regression), and finish with a test evaluation of the best checkpoint (the "
        "final one when the data has no validation split).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_TRAIN,
    )
    t.add_argument("--config", "-c", help="YAML config (optional when resuming a workdir)")
    t.add_argument(
        "--workdir",
        "-w",
        help="output directory (default: runs/<config name>); resumed if it has a checkpoint",
    )
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.steps=60000 (repeatable)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = t.add_argument_group(
        "devices and hosts",
        "split the meta-batch's tasks over devices (docs/scaling.md); the flags set the "
        "mesh.* and distributed.* config keys; unset distributed values fall back to "
        "$JAXMETA_COORDINATOR_ADDRESS, $JAXMETA_NUM_PROCESSES, $JAXMETA_PROCESS_ID",
    )
    g.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="devices of the task mesh (mesh.devices): N, or 0 for all; default 1 "
        "(all devices in a multi-process run); the meta-batch must divide by N",
    )
    g.add_argument(
        "--coordinator-address",
        metavar="HOST:PORT",
        help="process 0's address; starts jax.distributed (distributed.coordinator_address)",
    )
    g.add_argument(
        "--num-processes",
        type=int,
        metavar="P",
        help="number of processes (distributed.num_processes)",
    )
    g.add_argument(
        "--process-id",
        type=int,
        metavar="I",
        help="this process's index, 0..P-1 (distributed.process_id)",
    )

    e = sub.add_parser(
        "evaluate",
        help="evaluate a trained run on fixed episodes (accuracy ± 95%% CI)",
        description="Evaluate the best (default) or latest checkpoint of a workdir on the "
        "fixed evaluation episodes of a split.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_EVAL,
    )
    e.add_argument("--workdir", "-w", required=True, help="a directory written by 'jaxmeta train'")
    e.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="which split's classes (default: test)",
    )
    e.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="number of episodes (default: eval.episodes of the run, 600 in the paper)",
    )
    e.add_argument(
        "--inner-steps",
        type=int,
        default=None,
        help="inner adaptation steps at test time (default: the algorithm's "
        "evaluation steps, e.g. MAML eval_inner_steps=10); only for algorithms "
        "that adapt by gradient steps",
    )
    e.add_argument(
        "--checkpoint",
        choices=("best", "latest"),
        default="best",
        help="which checkpoint (default: best; latest when there is no best)",
    )
    e.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the run's config, e.g. data.manual_dir=DIR or "
        "eval.batch_size=20 (model/algorithm changes will not match the checkpoint)",
    )

    d = sub.add_parser(
        "data",
        help="prepare a dataset and print its splits",
        description="Prepare a dataset (download or read local files, build the TFDS "
        "dataset and the uint8 cache) and print the classes of every split.",
    )
    dsub = d.add_subparsers(dest="dataset", metavar="{omniglot}")
    o = dsub.add_parser(
        "omniglot",
        help="prepare Omniglot and print split/class counts per scheme",
        description="Prepare Omniglot (from the zips in --manual-dir, else downloaded) and "
        "print the classes of each split of the maml, vinyals and lake schemes, without "
        "and with rotations (x4).",
    )
    o.add_argument(
        "--manual-dir",
        help="folder with images_background.zip and "
        "images_evaluation.zip (default: <data-dir>/downloads/manual)",
    )
    o.add_argument(
        "--data-dir", help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    o.add_argument("--image-size", type=int, default=28, help="image side (default 28)")
    o.add_argument(
        "--no-download",
        action="store_true",
        help="never use the network; fail if the zips are not in the manual dir",
    )
    return p


def _err(msg: str, code: int) -> int:
    print(f"jaxmeta: error: {msg}", file=sys.stderr)
    return code


def _train(args) -> int:
    from jaxmeta.train.checkpoint import CheckpointWriteError
    from jaxmeta.train.config import ConfigError, load_config
    from jaxmeta.train.loop import TrainingDiverged, TrainingInterrupted, train_and_evaluate
    from jaxmeta.train.workdir import describe_os_error

    config = args.config
    if config is None:
        if args.workdir and (Path(args.workdir) / "config.yaml").exists():
            config = str(Path(args.workdir) / "config.yaml")
        else:
            return _err("--config is required (unless --workdir holds a run to resume)", 2)
    flags = {
        "mesh.devices": args.devices,
        "distributed.coordinator_address": args.coordinator_address,
        "distributed.num_processes": args.num_processes,
        "distributed.process_id": args.process_id,
    }
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    try:
        cfg = load_config(config, overrides)
    except (ConfigError, FileNotFoundError) as err:
        return _err(str(err), 2)
    from jaxmeta.sharding import initialize_distributed

    d = cfg.distributed
    try:  # before any JAX computation
        initialize_distributed(
            coordinator_address=d.coordinator_address,
            num_processes=d.num_processes,
            process_id=d.process_id,
            auto=d.auto,
        )
    except ValueError as err:
        return _err(str(err), 2)
    workdir = args.workdir or str(Path("runs") / cfg.name)
    print(f"jaxmeta train: {cfg.name} -> {workdir}", file=sys.stderr, flush=True)
    try:
        train_and_evaluate(cfg, workdir, progress=not args.no_progress)
    except TrainingDiverged as err:
        return _err(str(err), 1)
    except TrainingInterrupted as err:
        print(f"jaxmeta: {err}", file=sys.stderr)
        return err.exit_code
    # Incompatible or busy workdir, damaged checkpoints, missing data, a failed write.
    except (ValueError, FileNotFoundError, CheckpointWriteError) as err:
        return _err(str(err), 2)
    except OSError as err:  # disk full, read-only file system...
        return _err(describe_os_error(err), 2)
    return 0


def _evaluate(args) -> int:
    import jax

    from jaxmeta.train.checkpoint import CheckpointError, Checkpoints
    from jaxmeta.train.config import ConfigError, load_config, replace
    from jaxmeta.train.loop import (
        build_experiment,
        format_result,
        initial_state,
        run_evaluation,
        write_eval_json,
    )
    from jaxmeta.train.workdir import describe_os_error

    workdir = Path(args.workdir)
    if not (workdir / "config.yaml").exists():
        return _err(f"{workdir} has no config.yaml: not a 'jaxmeta train' workdir", 2)
    if args.episodes is not None and args.episodes < 1:
        return _err(f"--episodes must be positive, got {args.episodes}", 2)
    if args.inner_steps is not None and args.inner_steps < 0:
        return _err(f"--inner-steps must be >= 0, got {args.inner_steps}", 2)
    try:
        cfg = load_config(workdir / "config.yaml", args.overrides)
    except ConfigError as err:
        return _err(str(err), 2)
    if args.episodes is not None:
        cfg = replace(cfg, eval={"episodes": args.episodes})
    exp = build_experiment(cfg)
    if args.split not in exp.source.splits:
        return _err(
            f"split {args.split!r} does not exist for {cfg.data.name}"
            f"{'/' + cfg.data.scheme if cfg.classification else ''} "
            f"(available: {', '.join(exp.source.splits)})",
            2,
        )
    # Read only: no lock (a training run may be writing), nothing created or cleaned up.
    ckpt = Checkpoints(workdir, keep=cfg.train.keep_checkpoints, read_only=True)
    which = args.checkpoint
    if which == "best" and ckpt.best_step() is None:
        which = "latest"
    if ckpt.latest_step() is None and which == "latest":
        return _err(f"no checkpoint in {workdir}", 2)
    state = jax.eval_shape(lambda: initial_state(cfg, exp))
    try:
        state, _ = ckpt.restore(state, best=which == "best")
    except CheckpointError as err:
        other = "latest" if which == "best" else "best"
        return _err(f"{err}; --checkpoint {other} evaluates the {other} one", 2)
    finally:
        ckpt.close()
    inner = args.inner_steps if args.inner_steps is not None else cfg.eval.inner_steps
    try:
        res = run_evaluation(
            cfg, exp, state.params, split=args.split, episodes=cfg.eval.episodes, inner_steps=inner
        )
    except ValueError as err:
        return _err(str(err), 2)
    res.update(step=int(state.step), checkpoint=which)
    # The result first: a workdir we cannot write to must not cost the computed accuracy.
    print(f"{format_result(res)} [checkpoint: {which}, step {int(state.step)}]", flush=True)
    try:
        path = write_eval_json(workdir, res)
    except OSError as err:
        print(f"jaxmeta: warning: result not saved: {describe_os_error(err)}", file=sys.stderr)
    else:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _data(args) -> int:
    if args.dataset != "omniglot":
        return _err("choose a dataset: jaxmeta data omniglot [--manual-dir DIR]", 2)
    from jaxmeta.data.omniglot import (
        OmniglotCorruptError,
        OmniglotFilesMissingError,
        load_omniglot,
        split_counts,
    )

    try:
        om = load_omniglot(
            data_dir=args.data_dir,
            manual_dir=args.manual_dir,
            image_size=args.image_size,
            download=not args.no_download,
        )
    except (OmniglotFilesMissingError, OmniglotCorruptError, ValueError) as err:
        return _err(str(err), 2)
    print(
        f"Omniglot: {om.images.shape[0]} characters x {om.images.shape[1]} drawers, "
        f"{om.image_size}x{om.image_size} uint8"
    )
    if om.cache_path is not None:
        print(f"cache: {om.cache_path}")
    plain, rot = split_counts(rotations=False), split_counts(rotations=True)
    print(f"{'scheme':<9} {'split':<11} {'classes':>8} {'with rotations':>15}")
    for scheme, splits in plain.items():
        for split, n in splits.items():
            print(f"{scheme:<9} {split:<11} {n:>8} {rot[scheme][split]:>15}")
    return 0


def _enable_compilation_cache() -> None:
    """Persist compiled XLA programs across runs (a resumed run skips recompiling).

    ``$JAX_COMPILATION_CACHE_DIR`` wins; else ``$JAXMETA_CACHE_DIR/xla``, else
    ``~/.cache/jaxmeta/xla``. ``JAXMETA_CACHE_DIR=off`` disables it.
    """
    import os

    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return
    root = os.environ.get("JAXMETA_CACHE_DIR", "~/.cache/jaxmeta")
    if root.lower() == "off":
        return
    jax.config.update("jax_compilation_cache_dir", str(Path(root).expanduser() / "xla"))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxmeta`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command in ("train", "evaluate"):
        _enable_compilation_cache()
    try:
        if args.command == "train":
            return _train(args)  # handles SIGINT/SIGTERM itself, between steps
        if args.command == "evaluate":
            return _evaluate(args)
        return _data(args)
    except KeyboardInterrupt:
        print("jaxmeta: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
