"""The ``jaxmeta`` command: ``train``, ``evaluate``, ``predict``, ``plot`` and ``data``.

A thin layer: it reads a config (YAML + ``--set`` overrides), and calls the engine
(:func:`jaxmeta.train.train_and_evaluate`), :func:`jaxmeta.load`, the data module or
:mod:`jaxmeta.commands` with keyword arguments. Also runs as ``python -m jaxmeta``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import signal
import sys
import textwrap
import typing
from pathlib import Path

from jaxmeta.host_memory import reexec_with_huge_pages

# No JAX (nor any module that imports it) at import time: `jaxmeta --help` stays fast. The
# dataset registry is imported only for `jaxmeta data ...`, whose sub-commands it lists.

EPILOG_TRAIN = textwrap.dedent(
    """\
    config files (from the repository root; also found relative to the repository
    when run elsewhere):
      configs/omniglot/maml_5w1s.yaml        default run, shortened for a laptop CPU
      configs/omniglot/base_5w1s.yaml        the MAML protocol every Omniglot config
                                             extends (base: FILE, then what differs)
      configs/omniglot/maml_5w1s_paper.yaml  the same at paper length (60k steps)
      configs/omniglot/<algorithm>_{5w1s,5w5s,20w1s,20w5s}.yaml  each paper's protocol
    every shipped config (read from the configs folder):
    {configs}

    --set overrides (repeatable; value parsed as YAML; validated like the file):
      train.steps=60000        meta-iterations (the MAML paper's length)
      train.seed=1             seed of initialisation and task sampling
      train.seeds=5            5 runs (seeds seed..seed+4) in one program (= --seeds 5)
      sweep.algorithm.inner_lr=[0.2,0.4]  per-run values (population = product x seeds)
      train.steps_per_call=10  meta-steps fused into one jitted call
      train.eval_every=500     validation interval (0: never)
      eval.episodes=600        test episodes (95% CI = 1.96 std / sqrt(episodes))
      data.manual_dir=DIR      folder with the Omniglot zips (offline preparation)
      data.data_dir=DIR        TFDS data dir (default ~/tensorflow_datasets)
      algorithm.inner_lr=0.4   any algorithm keyword (checked against its signature)
      train.tensorboard=true   also TensorBoard event files in <workdir>/tensorboard
                               (pip install 'jaxmeta[tensorboard]')
    Every key is documented in jaxmeta/train/config.py.

    The workdir gets config.yaml, environment.json, metrics.jsonl, checkpoints/,
    best/, eval_test.json and learning_curves.png ('jaxmeta plot' redraws it). Running
    train again on a workdir with a checkpoint resumes it exactly (same final
    parameters as an uninterrupted run); --config may then be omitted (a run folder's
    plug-ins are then imported only with --plugin FILE or --trust-plugins: a run
    folder is data, a config is code; docs/security.md). On a finished run it only
    says so and where its results are (--set train.steps=N trains on). The progress
    bar's train_acc(q,N steps) is the accuracy on the training tasks' queries after N
    inner steps; validation accuracy is printed on its own lines.

    Compiled programs are cached in ~/.cache/jaxmeta/xla (JAXMETA_CACHE_DIR=DIR or
    off, or JAX_COMPILATION_CACHE_DIR), so a resumed run does not compile again.
    JAXMETA_HUGE_PAGES=1 (Linux, glibc 2.35+): malloc with transparent huge pages, measured
    3-21% faster for 1-query steps on the CPU, 9-13% slower for 15 queries (opt-in).

    Ctrl-C (SIGINT) or SIGTERM stops the run between steps (a checkpoint being
    written is completed first); run the same command to resume.

    exit status: 0 done, 1 training diverged (NaN/inf), 2 bad config, usage, workdir
    or file problem, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
    """
)

EPILOG_EVAL = textwrap.dedent(
    """\
    Prints accuracy ± 95% CI (1.96 std / sqrt(episodes)), or MSE for regression, and
    writes eval_<split>_<checkpoint>_<episodes>ep[_<N>steps][_<bn-mode>].json in the
    workdir (accuracy|mse, ci95, episodes, step, checkpoint, inner_steps = the inner
    steps actually used, bn_mode, ...); _<N>steps only with --inner-steps, _<bn-mode>
    only with a single --bn-mode. An existing file with another result is never
    replaced: the new one gets a -2, -3, ... suffix. (The training run's own final test
    is eval_test.json.) The episodes are fixed by eval.seed, so results are comparable
    between runs and algorithms.

    BatchNorm modes (Conv-4 models): "transductive" normalises each task's queries with
    their own batch statistics, the MAML paper's protocol and the published numbers
    (reported as accuracy/ci95); "inductive" normalises every query with the support
    set's statistics, so a query's prediction does not depend on the other queries, as
    jaxmeta.load() and 'jaxmeta predict' classify (accuracy_inductive/ci95_inductive).
    Both are computed by default.
    """
)

EPILOG_PREDICT = textwrap.dedent(
    """\
    The support folder holds one subfolder per class (its name is the class name) with
    that class's images; any size, dark strokes on light paper, as the Omniglot PNGs
    (they are inverted and resized exactly as the training data was). Models with an
    output layer (MAML, FOMAML, ANIL, Meta-SGD, Reptile, SNAIL) need exactly the N
    classes they were trained for; ProtoNets and Matching Nets take any number.

    Queries inside a subfolder named like a support class count as labelled and the
    accuracy is printed. To try it on characters no model trained on the default split
    has seen:
      jaxmeta data omniglot --export-test try --classes 5 --per-class 6
      jaxmeta predict --workdir runs/maml_5w1s --support try/support --query try/query
    """
)


def _config_listing(width: int = 84) -> str:
    """The shipped configs, one folder a paragraph, names sharing a prefix grouped
    (``maml_{5w1s,5w5s}``); read from the repository's (else the package's) configs folder."""
    pkg = Path(__file__).resolve().parent
    root = next((d for d in (pkg.parent / "configs", pkg / "configs") if d.is_dir()), None)
    if root is None:
        return "  (no configs folder found)"
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        groups: dict[str, list[str]] = {}
        for f in sorted(folder.glob("*.yaml")):
            head, _, tail = f.stem.rpartition("_")
            groups.setdefault(head or f.stem, []).append(tail if head else "")
        names = []
        for head, tails in groups.items():
            if tails == [""]:
                names.append(head)
            elif len(tails) == 1:
                names.append(f"{head}_{tails[0]}")
            else:
                names.append(f"{head}_{{{','.join(t for t in tails)}}}")
        text = f"configs/{folder.name}/: " + " ".join(names)
        out.append(textwrap.fill(text, width, initial_indent="  ", subsequent_indent="      "))
    return "\n".join(out)


def _parser(*, with_datasets: bool = True) -> argparse.ArgumentParser:
    """The parser; ``with_datasets=False`` leaves out the ``data NAME`` sub-commands (their
    options come from the dataset classes, which import JAX)."""
    from jaxmeta import __version__

    p = argparse.ArgumentParser(
        prog="jaxmeta",
        description="jaxmeta: fast functional meta-learning in JAX (MAML, FOMAML, ...). "
        "Train from a YAML config, evaluate a run with a 95% confidence interval, "
        "classify your own images with a trained run, prepare datasets.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'jaxmeta <command> --help' for the options of each command.\n"
        "Example: jaxmeta train --config configs/omniglot/maml_5w1s.yaml --workdir runs/5w1s\n"
        "Also runs as: python -m jaxmeta <command> ...",
    )
    p.add_argument("--version", action="version", version=f"jaxmeta {__version__}")
    sub = p.add_subparsers(
        dest="command", metavar="{train,evaluate,predict,plot,data,export-features}"
    )

    _add_train_command(sub)
    _add_evaluate_command(sub)
    _add_predict_command(sub)
    _add_plot_command(sub)
    _add_export_command(sub)
    _add_data_commands(sub, with_datasets=with_datasets)
    return p


def _add_train_command(sub) -> None:
    """Train: meta-train from a config, resume, then test."""
    t = sub.add_parser(
        "train",
        help="train (or resume) an experiment, then test its best checkpoint",
        description="Meta-train from a config with a live progress bar (steps/s, loss, "
        "accuracy, ETA), validate periodically, keep the latest and the best orbax "
        "checkpoints (best = highest validation accuracy, lowest validation MSE for "
        "regression, highest return for meta-RL), and finish with a test evaluation of "
        "the best checkpoint (the final one when the data has no validation split).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_TRAIN.replace("{configs}", _config_listing()),
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
    _add_trust_flags(t)
    t.add_argument(
        "--seeds",
        type=int,
        metavar="S",
        help="train S runs (seeds train.seed .. train.seed+S-1) vmapped in one program "
        "(train.seeds); with a sweep: section, S seeds per sweep point",
    )
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


def _add_evaluate_command(sub) -> None:
    """Evaluate: a run's checkpoint on fixed episodes."""
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
        default="best",
        metavar="{best,latest,STEP}",
        help="which checkpoint: best (default; latest when there is no best), latest, or a "
        "step number",
    )
    e.add_argument(
        "--run",
        type=int,
        default=None,
        metavar="I",
        help="a population's member I (train.seeds / sweep); default: every member, with "
        "the mean, std and 95%% interval across seeds",
    )
    e.add_argument(
        "--bn-mode",
        choices=("both", "transductive", "inductive", "running"),
        default="both",
        help="BatchNorm mode of the queries (Conv-4 models; see below): both (default), "
        "transductive (the published protocol), inductive, or running (ProtoNets with "
        "running_stats, whose protocol it is)",
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
    _add_trust_flags(e)


def _add_predict_command(sub) -> None:
    """Predict: classify your own images with a trained run."""
    pr = sub.add_parser(
        "predict",
        help="classify your own images with a trained run",
        description="Adapt a trained run to a folder of labelled example images (one "
        "subfolder per class) and print each query image's predicted class and probability.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_PREDICT,
    )
    pr.add_argument("--workdir", "-w", required=True, help="a directory written by 'jaxmeta train'")
    pr.add_argument(
        "--run",
        type=int,
        default=None,
        metavar="I",
        help="a population's member I (train.seeds / sweep; required there)",
    )
    pr.add_argument(
        "--support",
        required=True,
        metavar="DIR",
        help="folder with one subfolder of images per class",
    )
    pr.add_argument(
        "--query",
        required=True,
        nargs="+",
        metavar="DIR_OR_FILE",
        help="query images: files and/or folders (searched recursively)",
    )
    pr.add_argument(
        "--out",
        metavar="FILE",
        help="also write the predictions to FILE.csv or FILE.json",
    )
    pr.add_argument(
        "--checkpoint",
        default="best",
        metavar="{best,latest,STEP}",
        help="which checkpoint (default: best; latest when there is no best)",
    )
    pr.add_argument(
        "--bn-mode",
        choices=("inductive", "transductive", "running"),
        default=None,
        help="inductive (default): each query normalised with the support set's BatchNorm "
        "statistics, so a prediction does not depend on the other queries; transductive: "
        "the queries normalised together (the evaluation protocol); running: the running "
        "statistics of a run that keeps them (ProtoNets with running_stats: its default)",
    )
    pr.add_argument(
        "--inner-steps",
        type=int,
        default=None,
        help="adaptation steps of gradient-based learners (default: the algorithm's "
        "evaluation steps)",
    )
    _add_trust_flags(pr)


def _add_plot_command(sub) -> None:
    """Plot: draw a run's learning curves again."""
    pl = sub.add_parser(
        "plot",
        help="re-render learning_curves.png of a run (no training)",
        description="Draw learning_curves.png again from a workdir's metrics.jsonl, e.g. "
        "after installing matplotlib or while a run is training.",
    )
    pl.add_argument("--workdir", "-w", required=True, help="a directory written by 'jaxmeta train'")
    pl.add_argument(
        "--out", metavar="PNG", help="output file (default: <workdir>/learning_curves.png)"
    )


def _add_export_command(sub) -> None:
    """Export-features: a run's embeddings of every split."""
    x = sub.add_parser(
        "export-features",
        help="write a trained run's embeddings of every split (input of LEO)",
        description="Apply a run's model without its head to every image of every split of "
        "its dataset; write OUT/{train,val,test}_features.npz for data.name: features.",
    )
    x.add_argument("workdir", help="a directory written by 'jaxmeta train'")
    x.add_argument("out", help="output folder")
    x.add_argument("--checkpoint", default="best", help="'best', 'latest' or a step")
    x.add_argument("--batch-size", type=int, default=1000, help="images per forward pass")
    _add_trust_flags(x)


def _add_data_commands(sub, *, with_datasets: bool) -> None:
    """Data NAME: prepare a dataset (``with_datasets``: its sub-commands, which import JAX)."""
    d = sub.add_parser(
        "data",
        help="prepare a dataset and print its splits",
        description="Prepare a registered dataset (download or read local files, verify "
        "them, build the cache) and print the classes of every split. A dataset of your own: "
        "--plugin FILE_OR_MODULE registers it first.",
    )
    _add_plugin_flag(d)
    if with_datasets:
        from jaxmeta.data.registry import TASK_SOURCES

        names = sorted(TASK_SOURCES)
        dsub = d.add_subparsers(dest="dataset", metavar="{" + ",".join(names) + "}")
        for name in names:
            _add_data_command(dsub, name, TASK_SOURCES[name])


def _err(msg: str, code: int) -> int:
    print(f"jaxmeta: error: {msg}", file=sys.stderr)
    return code


def _train(args) -> int:
    from jaxmeta.train import (
        CheckpointWriteError,
        ConfigError,
        TrainingDiverged,
        TrainingInterrupted,
        load_config,
        train_and_evaluate,
    )
    from jaxmeta.train.workdir import describe_os_error

    config = args.config
    if config is None:
        if args.workdir and (Path(args.workdir) / "config.yaml").exists():
            config = str(Path(args.workdir) / "config.yaml")
        else:
            return _err("--config is required (unless --workdir holds a run to resume)", 2)
    flags = {
        "mesh.devices": args.devices,
        "train.seeds": args.seeds,
        "distributed.coordinator_address": args.coordinator_address,
        "distributed.num_processes": args.num_processes,
        "distributed.process_id": args.process_id,
    }
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    # A config named with -c is the user's script; a run folder's is data (docs/security.md).
    trust = args.config is not None or args.trust_plugins
    try:
        cfg = load_config(config, overrides, trust_plugins=trust)
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
    from jaxmeta.commands import eval_result_name, write_new_json
    from jaxmeta.train import CheckpointError, ConfigError, evaluate_run, format_result, restore_run
    from jaxmeta.train.workdir import describe_os_error

    workdir = Path(args.workdir)
    if not (workdir / "config.yaml").exists():
        return _err(f"{workdir} has no config.yaml: not a 'jaxmeta train' workdir", 2)
    if args.episodes is not None and args.episodes < 1:
        return _err(f"--episodes must be positive, got {args.episodes}", 2)
    if args.inner_steps is not None and args.inner_steps < 0:
        return _err(f"--inner-steps must be >= 0, got {args.inner_steps}", 2)
    from jaxmeta.train.population import is_population_workdir

    if args.run is None and is_population_workdir(workdir):
        return _evaluate_population(args, workdir)
    try:
        run = restore_run(
            workdir,
            args.checkpoint,
            overrides=args.overrides,
            episodes=args.episodes,
            run=args.run,
            trust_plugins=args.trust_plugins,
        )
    except ConfigError as err:
        return _err(str(err), 2)
    except CheckpointError as err:
        other = "latest" if args.checkpoint == "best" else "best"
        return _err(f"{err}; --checkpoint {other} evaluates the {other} one", 2)
    except (ValueError, FileNotFoundError) as err:
        return _err(str(err), 2)
    try:
        res = evaluate_run(
            run, split=args.split, inner_steps=args.inner_steps, bn_mode=args.bn_mode
        )
    except ValueError as err:
        return _err(str(err), 2)
    batch_stats = "bn_mode" in res
    label = run.checkpoint if str(args.checkpoint) in ("best", "latest") else f"step{run.step}"
    name = eval_result_name(
        run=args.run,
        split=args.split,
        checkpoint=label,
        episodes=run.config.eval.episodes,
        inner_steps=args.inner_steps,
        bn_mode=None if args.bn_mode == "both" or not batch_stats else args.bn_mode,
    )
    where = f"[checkpoint: {run.checkpoint}, step {run.step}]"
    if "accuracy_inductive" in res:
        print(f"{format_result(res)} {where} (transductive BatchNorm: the published protocol)")
        print(
            f"{args.split} accuracy: {100 * res['accuracy_inductive']:.2f}% ± "
            f"{100 * res['ci95_inductive']:.2f}% (inductive BatchNorm: queries normalised with "
            "the support set's statistics, as jaxmeta.load and 'jaxmeta predict')"
        )
    else:
        mode = f" ({res['bn_mode']} BatchNorm)" if batch_stats else ""
        print(f"{format_result(res)} {where}{mode}")
    # The result first: a workdir we cannot write to must not cost the computed accuracy.
    try:
        path, status = write_new_json(workdir / name, res)
    except OSError as err:
        print(f"jaxmeta: warning: result not saved: {describe_os_error(err)}", file=sys.stderr)
        return 0
    if status == "unchanged":
        print(f"same result as the existing {path}; nothing written", file=sys.stderr)
    elif status == "kept":
        print(f"{workdir / name} holds another result, kept; wrote {path}", file=sys.stderr)
    else:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _evaluate_population(args, workdir: Path) -> int:
    """``jaxmeta evaluate`` of every member of a population, with the across-seed summary."""
    from jaxmeta.commands import write_new_json
    from jaxmeta.train import CheckpointError, ConfigError
    from jaxmeta.train.population_results import evaluate_population, population_report

    try:
        res = evaluate_population(
            workdir,
            args.checkpoint,
            overrides=args.overrides,
            episodes=args.episodes,
            split=args.split,
            inner_steps=args.inner_steps,
            bn_mode=args.bn_mode,
            trust_plugins=args.trust_plugins,
        )
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as err:
        return _err(str(err), 2)
    lines, name = population_report(res, args.checkpoint, args.inner_steps, args.bn_mode)
    print("\n".join(lines))
    path, status = write_new_json(workdir / name, res)
    print(f"wrote {path}" if status != "unchanged" else f"same result as {path}", file=sys.stderr)
    return 0


def _predict(args) -> int:
    from jaxmeta.commands import format_predictions, predict_folders, write_predictions

    if args.out is not None and Path(args.out).suffix.lower() not in (".csv", ".json"):
        return _err(f"--out {args.out}: use a .csv or .json file name", 2)
    if args.inner_steps is not None and args.inner_steps < 0:
        return _err(f"--inner-steps must be >= 0, got {args.inner_steps}", 2)
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = predict_folders(
                workdir=args.workdir,
                support=args.support,
                query=args.query,
                checkpoint=args.checkpoint,
                bn_mode=args.bn_mode,
                inner_steps=args.inner_steps,
                run=args.run,
                trust_plugins=args.trust_plugins,
            )
    except (ValueError, FileNotFoundError) as err:
        return _err(str(err), 2)
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"jaxmeta: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    names = result["classes"]
    print(
        f"{result['algorithm']} (step {result['step']}, {result['checkpoint']} checkpoint"
        + (f", {result['bn_mode']} BatchNorm" if result["bn_mode"] else "")
        + f"); {len(names)} classes from {result['support_images']} support images: "
        + ", ".join(names),
        file=sys.stderr,
    )
    print(format_predictions(result))
    if args.out is not None:
        print(f"wrote {write_predictions(result, args.out)}", file=sys.stderr)
    return 0


def _export_features(args) -> int:
    from jaxmeta.feature_export import export_features

    ckpt = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
    try:
        lines = export_features(
            args.workdir,
            args.out,
            checkpoint=ckpt,
            batch_size=args.batch_size,
            trust_plugins=args.trust_plugins,
        )
    except (ValueError, FileNotFoundError) as err:
        return _err(str(err), 2)
    print("\n".join(lines))
    return 0


def _plot(args) -> int:
    from jaxmeta.commands import replot

    try:
        path = replot(args.workdir, args.out)
    except (FileNotFoundError, RuntimeError) as err:
        return _err(str(err), 2)
    print(f"wrote {path}")
    return 0


def _data(args) -> int:
    from jaxmeta.data.registry import TASK_SOURCES
    from jaxmeta.data.source import TaskSourceError

    if args.dataset is None:
        names = " | ".join(sorted(TASK_SOURCES))
        return _err(f"choose a dataset: jaxmeta data {{{names}}} [options]", 2)
    cls = TASK_SOURCES[args.dataset]
    options = {k: getattr(args, f"opt_{k}") for k in _prepare_options(cls)}
    try:
        lines = cls.prepare(**options)
    except TaskSourceError as err:
        return _err(f"--{err.option.replace('_', '-')}: {err}", 2)
    except (ValueError, FileNotFoundError) as err:
        return _err(str(err), 2)
    for line in lines:
        print(line)
    return 0


def _prepare_function(cls):
    """``cls.prepare``, or the constructor when ``prepare`` takes the constructor's options."""
    params = inspect.signature(cls.prepare).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return cls.__init__
    return cls.prepare


def _prepare_options(cls) -> dict[str, inspect.Parameter]:
    """The keyword options of ``jaxmeta data NAME`` (see :func:`_prepare_function`)."""
    params = inspect.signature(_prepare_function(cls)).parameters
    return {n: p for n, p in params.items() if p.kind is p.KEYWORD_ONLY}


def _arg_help(doc: str) -> dict[str, str]:
    """``{name: text}`` from a Google-style ``Args:`` section."""
    out: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    try:
        start = lines.index("Args:") + 1
    except ValueError:
        return out
    name = None
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        m = re.match(r"^ {2}(\w+)(?: \(.*?\))?: ?(.*)$", line)
        if m:
            name = m.group(1)
            out[name] = m.group(2).strip()
        elif name is not None and line.strip():
            out[name] += " " + line.strip()
    return out


def _first_sentence(text: str) -> str:
    """The first sentence of ``text``, without its period: the first ". " outside
    parentheses, brackets and backquotes ("(Vinyals et al. 2016)" stays whole)."""
    depth, quoted = 0, False
    for i, ch in enumerate(text):
        if ch == "`":
            quoted = not quoted
        elif not quoted and ch in "([{":
            depth += 1
        elif not quoted and ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == "." and not depth and not quoted and text[i + 1 : i + 2] in (" ", ""):
            return text[:i]
    return text.rstrip(".")


def _add_data_command(dsub, name: str, cls) -> None:
    """``jaxmeta data NAME``: one flag per keyword option of the source's ``prepare`` (or of
    its constructor), with the help of that function's (or the class's) ``Args:``."""
    fn = _prepare_function(cls)
    doc = (fn.__doc__ and inspect.cleandoc(fn.__doc__)) or inspect.getdoc(cls) or ""
    paragraphs = doc.split("Args:")[0].strip()
    first = paragraphs.split("\n\n")[0].replace("\n", " ")
    p = dsub.add_parser(
        name,
        help=_first_sentence(first),
        description=paragraphs,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_plugin_flag(p)
    helps = _arg_help(doc)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: options are read as text
        hints = {}
    for opt, param in _prepare_options(cls).items():
        flag = "--" + opt.replace("_", "-")
        text = helps.get(opt, "")
        if param.default is True:
            p.add_argument(
                "--no-" + opt.replace("_", "-"),
                dest=f"opt_{opt}",
                action="store_false",
                # the Args: text describes the option when on; this flag turns it off
                help=f"turn {opt} off (on by default: {text.rstrip('.')})" if text else None,
            )
        elif param.default is False:
            p.add_argument(flag, dest=f"opt_{opt}", action="store_true", help=text)
        else:
            hint = hints.get(opt, param.annotation)
            kind = next((t for t in (int, float) if hint is t or t in typing.get_args(hint)), str)
            required = param.default is param.empty
            p.add_argument(
                flag,
                dest=f"opt_{opt}",
                type=kind,
                default=None if required else param.default,
                required=required,
                metavar=opt.upper(),
                help=text,
            )


def _add_plugin_flag(parser) -> None:
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE_OR_MODULE",
        help="import a plug-in first (a .py file or a module name) that registers a dataset, "
        "algorithm or model (repeatable); configs name theirs with plugins:",
    )


def _add_trust_flags(parser) -> None:
    """``--plugin`` and ``--trust-plugins`` of the commands that open a run folder: its
    plug-ins are code and are imported only when allowed (docs/security.md)."""
    _add_plugin_flag(parser)
    parser.add_argument(
        "--trust-plugins",
        action="store_true",
        help="import every plug-in the run folder's config names (they run code: only for "
        "a run folder you trust); by default only jaxmeta's own and those given with "
        "--plugin are imported",
    )


def _plugins_in(argv: list[str]) -> list[str]:
    """The values of every --plugin option of ``argv`` (imported before the parser is made,
    so that the datasets they register get their own ``jaxmeta data NAME`` command)."""
    out = []
    for i, word in enumerate(argv):
        if word == "--plugin" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif word.startswith("--plugin="):
            out.append(word.split("=", 1)[1])
    return out


def _enable_compilation_cache() -> None:
    """Persist compiled XLA programs across runs (a resumed run skips recompiling).

    ``$JAX_COMPILATION_CACHE_DIR`` wins; else ``$JAXMETA_CACHE_DIR/xla``, else
    ``~/.cache/jaxmeta/xla``. ``JAXMETA_CACHE_DIR=off`` disables it.
    """
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return
    root = os.environ.get("JAXMETA_CACHE_DIR", "~/.cache/jaxmeta")
    if root.lower() == "off":
        return
    jax.config.update("jax_compilation_cache_dir", str(Path(root).expanduser() / "xla"))


# The commands that run compiled programs (the others only read files or print).
COMPUTE_COMMANDS = frozenset({"train", "evaluate", "predict", "export-features"})


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxmeta`` console script; returns the exit status."""
    process = argv is None  # the process itself, not a call from Python
    if process and COMPUTE_COMMANDS & set(sys.argv[1:]):
        # With JAXMETA_HUGE_PAGES=1, start again with huge pages for malloc before any thread
        # exists (host_memory.py).
        reexec_with_huge_pages()
    argv = sys.argv[1:] if argv is None else list(argv)
    plugins = _plugins_in(argv)
    if plugins:
        from jaxmeta.plugins import PluginError, load_plugins

        try:
            load_plugins([p if not p.endswith(".py") else str(Path(p).resolve()) for p in plugins])
        except PluginError as err:
            return _err(f"--plugin: {err}", 2)
    parser = _parser(with_datasets="data" in argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command in ("train", "evaluate", "predict"):
        _enable_compilation_cache()
    handlers = {"train": _train, "evaluate": _evaluate, "predict": _predict, "plot": _plot}
    handlers["export-features"] = _export_features
    try:
        # train handles SIGINT/SIGTERM itself, between steps
        code = handlers.get(args.command, _data)(args)
    except KeyboardInterrupt:
        print("jaxmeta: interrupted", file=sys.stderr)
        return 130
    if process and args.command == "train" and code in INTERRUPTED:
        _exit_without_waiting(code)
    return code


# Exit statuses of a training run stopped by SIGINT or SIGTERM: 128 + signum, as
# jaxmeta.train.interrupt.Interrupted.exit_code (not imported: it would import JAX).
INTERRUPTED = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def _exit_without_waiting(code: int) -> None:
    """End the process at once. An interrupted run has closed its files and finished its
    checkpoint, but the chunk of meta-steps that was running when the signal came is still
    computing on XLA's threads, and a normal exit waits for it to end (up to one
    ``train.steps_per_call`` chunk: minutes for a 20-way run on a CPU) only to discard it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
