"""Accuracy of every algorithm on Omniglot, next to its paper's number.

Trains each algorithm from its shipped config (``configs/omniglot/<algorithm>_<setting>.yaml``,
the paper's protocol) with ``jaxmeta train`` in a fresh subprocess, for a number of
meta-steps you choose (the papers' lengths, 20k-200k steps, take hours to days on a CPU),
then reads the test result of the best validation checkpoint (``eval_test.json``: accuracy
± 95% CI over the fixed test episodes). Reported per run: steps done and the config's
full length, test accuracy ± CI, episodes, split scheme, wall and CPU time, and the gap to
the published number (``PAPER``: each paper's Omniglot table).

    python benchmarks/accuracy.py --setting 5w1s --steps 2000              # every algorithm
    python benchmarks/accuracy.py \
        --algorithms protonets,matching --steps protonets=3000,matching=900
    python benchmarks/accuracy.py --parallel 2 --cores-per-run 1 ...        # two runs side by side
    python benchmarks/accuracy.py --table benchmarks/results/accuracy/accuracy.json
    python benchmarks/accuracy.py --report --out DIR       # every run in DIR, finished or not

Runs go to ``--out`` (default ``bench-out/accuracy``, git-ignored); the curated results the
READMEs quote are in ``benchmarks/results/accuracy``.
    python benchmarks/accuracy.py --tiny                                    # smoke test (seconds)
    python benchmarks/accuracy.py --paper-length --parallel 9 --steps-per-call 100  # on a GPU

``--paper-length`` takes ``<algorithm>_<setting>_paper.yaml`` where one exists (the shipped
``maml_5w1s.yaml`` is shortened for CPUs). ``--report`` tabulates the runs found in ``--out``
without training: finished runs with their test result, unfinished ones (e.g. cut by a
time limit) with their steps and best validation accuracy so far.

A run that exists in ``--out`` (its ``eval_test.json`` is there) is not retrained unless
``--force``; an interrupted one resumes exactly (the engine's checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    REPO,
    csv_list,
    default_manual_dir,
    machine,
    markdown_table,
    scratch,
    write_json,
)

ALGORITHMS = (
    "maml",
    "fomaml",
    "anil",
    "metasgd",
    "reptile",
    "protonets",
    "matching",
    "snail",
    "mamlpp",
    "imaml",  # iMAML-GD
    "imaml_hf",  # iMAML-HF: the imaml algorithm with solver hf (configs imaml_hf_*.yaml)
)
SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")

# Published Omniglot test accuracy (%) from each paper's results table (5w1s / 5w5s / 20w1s /
# 20w5s).
PAPER = {
    "maml": ("Finn et al. 2017", (98.7, 99.9, 95.8, 98.9)),
    "fomaml": ("Finn et al. 2017", (98.3, 99.2, 89.4, 97.9)),
    "reptile": ("Nichol et al. 2018 (transductive)", (97.68, 99.48, 89.43, 97.12)),
    "protonets": ("Snell et al. 2017", (98.8, 99.7, 96.0, 98.9)),
    "matching": ("Vinyals et al. 2016", (98.1, 98.9, 93.8, 98.5)),
    "snail": ("Mishra et al. 2018", (99.07, 99.78, 97.64, 99.36)),
    "metasgd": ("Li et al. 2017", (99.53, 99.93, 95.93, 98.97)),
    "anil": ("Raghu et al. 2020 (no Omniglot number published)", (None, None, None, None)),
    "mamlpp": ("Antoniou et al. 2019", (99.47, 99.93, 97.65, 99.33)),
    "imaml": ("Rajeswaran et al. 2019 (iMAML-GD)", (99.16, 99.67, 94.46, 98.69)),
    "imaml_hf": ("Rajeswaran et al. 2019 (iMAML-HF)", (99.50, 99.74, 96.18, 99.14)),
}

# --tiny: validation as many episodes as the test (--tiny's 8): one evaluation program for both.
TINY_SETS = [
    "model.filters=8",
    "train.meta_batch_size=2",
    "train.steps_per_call=2",
    "train.log_every=2",
    "eval.val_episodes=8",
    "eval.batch_size=4",
    "eval.queries=2",
    "train.plot=false",
]


def paper_number(algorithm: str, setting: str) -> float | None:
    return PAPER[algorithm][1][SETTINGS.index(setting)]


def config_path(algorithm: str, setting: str, *, paper_length: bool = False) -> Path:
    base = REPO / "configs" / "omniglot"
    paper = base / f"{algorithm}_{setting}_paper.yaml"
    if paper_length and paper.exists():
        return paper
    return base / f"{algorithm}_{setting}.yaml"


def parse_steps(text: str | None, algorithms: list[str]) -> dict[str, int | None]:
    """``"2000"`` (all) or ``"maml=3000,protonets=5000"``; ``None`` = the config's length."""
    out: dict[str, int | None] = dict.fromkeys(algorithms)
    if not text:
        return out
    for item in csv_list(text):
        if "=" in item:
            name, value = item.split("=", 1)
            if name not in out:
                raise SystemExit(f"--steps names {name!r}, which is not in --algorithms")
            out[name] = int(value)
        else:
            out = dict.fromkeys(algorithms, int(item))
    return out


def run_settings(steps: int, log_every: int, evals: int) -> list[str]:
    """Validation/checkpoint cadence for a run of ``steps``: ``evals`` points, whole log windows."""
    every = max(log_every, (steps // max(evals, 1)) // log_every * log_every)
    return [f"train.steps={steps}", f"train.eval_every={every}", f"train.checkpoint_every={every}"]


def chunk_settings(steps_per_call: int | None) -> list[str]:
    """``--steps-per-call N``: N fused meta-steps per host call, one metrics row per call."""
    if not steps_per_call:
        return []
    return [f"train.steps_per_call={steps_per_call}", f"train.log_every={steps_per_call}"]


def launch(job: dict[str, Any], args) -> subprocess.Popen:
    from jaxmeta.train.config import load_config

    cfg = load_config(job["config"])
    sets = [f"data.manual_dir={args.manual_dir}", "data.download=false"]
    if args.data_dir:
        sets.append(f"data.data_dir={args.data_dir}")
    if args.tiny:
        sets += TINY_SETS
    sets += chunk_settings(args.steps_per_call)
    log_every = 2 if args.tiny else (args.steps_per_call or cfg.train.log_every)
    steps = job["steps"] or cfg.train.steps
    sets += run_settings(steps, log_every, args.evals)
    sets += [f"eval.episodes={args.eval_episodes}", *args.set]
    cmd = [sys.executable, "-m", "jaxmeta.cli", "train", "--config", str(job["config"])]
    cmd += ["--workdir", str(job["workdir"]), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    if job.get("cores") is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", job["cores"], *cmd]
    job.update(command=cmd, steps=steps, full_steps=cfg.train.steps, start=time.time())
    job["workdir"].mkdir(parents=True, exist_ok=True)
    log = open(job["workdir"] / "train.log", "a")  # noqa: SIM115 (closed in finish)
    job["log"] = log
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def finish(job: dict[str, Any], rusage, status: int) -> dict[str, Any]:
    job["log"].close()
    wd: Path = job["workdir"]
    rec: dict[str, Any] = {
        "algorithm": job["algorithm"],
        "setting": job["setting"],
        "config": str(Path(job["config"]).relative_to(REPO)),
        "steps": job["steps"],
        "full_steps": job["full_steps"],
        "wall_min": (time.time() - job["start"]) / 60,
        "cpu_min": (rusage.ru_utime + rusage.ru_stime) / 60,
        "cores": job.get("cores"),
        "workdir": str(wd),
    }
    (wd / "run_times.json").write_text(
        json.dumps({k: rec[k] for k in ("wall_min", "cpu_min", "cores")}) + "\n"
    )
    res_path = wd / "eval_test.json"
    if status != 0 or not res_path.exists():
        tail = (wd / "train.log").read_text().strip().splitlines()[-5:]
        rec["error"] = f"exit status {status}: " + " | ".join(tail)[-800:]
        return rec
    return {**rec, **summarize_workdir(wd, job["algorithm"], job["setting"])}


def summarize_workdir(wd: Path, algorithm: str, setting: str) -> dict[str, Any]:
    """Test result, training time and split of one finished run directory."""
    import yaml

    res = json.loads((wd / "eval_test.json").read_text())
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    train = [r for r in _train_rows(wd) if r.get("split") == "train"]
    acc = 100 * res["accuracy"]
    paper = paper_number(algorithm, setting)
    return {
        "accuracy": acc,
        "ci95": 100 * res["ci95"],
        "episodes": res["episodes"],
        "checkpoint_step": res.get("step"),
        "eval_inner_steps": res.get("inner_steps"),
        "scheme": cfg["data"]["scheme"],
        "train_ways": cfg["data"]["ways"],
        "test_ways": res.get("ways"),
        "test_shots": res.get("shots"),
        "test_queries": res.get("queries"),
        "train_min": (train[-1]["wall_time"] / 60) if train and "wall_time" in train[-1] else None,
        "final_train_accuracy": 100 * train[-1]["accuracy"]
        if train and "accuracy" in train[-1]
        else None,
        "paper": paper,
        "paper_source": PAPER[algorithm][0],
        "gap": None if paper is None else acc - paper,
    }


def record_from_workdir(
    wd: Path, algorithm: str, setting: str, *, paper_length: bool = False
) -> dict[str, Any]:
    """The record of a finished run found on disk (e.g. trained by an earlier invocation)."""
    import yaml

    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    path = config_path(algorithm, setting, paper_length=paper_length)
    full = yaml.safe_load(path.read_text())["train"]["steps"]
    times_path = wd / "run_times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    rec = {
        "algorithm": algorithm,
        "setting": setting,
        "config": str(path.relative_to(REPO)),
        "steps": cfg["train"]["steps"],
        "full_steps": full,
        "wall_min": times.get("wall_min"),
        "cpu_min": times.get("cpu_min"),
        "cores": times.get("cores"),
        "workdir": str(wd),
    }
    return {**rec, **summarize_workdir(wd, algorithm, setting)}


def _train_rows(wd: Path) -> list[dict[str, Any]]:
    path = wd / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(ln) for ln in text.splitlines() if ln]


def partial_record(wd: Path, algorithm: str, setting: str) -> dict[str, Any]:
    """An unfinished run (e.g. cut by a time limit): steps done, best validation accuracy
    so far, and the test result of its best checkpoint when one was evaluated
    (``jaxmeta evaluate``)."""
    import yaml

    rec: dict[str, Any] = {
        "algorithm": algorithm,
        "setting": setting,
        "workdir": str(wd),
        "unfinished": True,
    }
    cfg_path = wd / "config.yaml"
    if cfg_path.exists():
        cfg = yaml.safe_load(cfg_path.read_text())
        rec.update(full_steps=cfg["train"]["steps"], scheme=cfg["data"].get("scheme"))
    rows = _train_rows(wd)
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val" and "accuracy" in r]
    rec["steps"] = train[-1]["step"] if train else 0
    rec["train_min"] = train[-1].get("wall_time", 0) / 60 if train else None
    note = f"unfinished at step {rec['steps']} of {rec.get('full_steps')}"
    if val:
        best = max(val, key=lambda r: r["accuracy"])
        rec.update(best_val=100 * best["accuracy"], best_val_step=best["step"])
        note += f"; best val {rec['best_val']:.2f}% at step {rec['best_val_step']}"
    test = wd / "eval_test.json"
    if test.exists():
        res = json.loads(test.read_text())
        paper = paper_number(algorithm, setting)
        rec.update(
            accuracy=100 * res["accuracy"],
            ci95=100 * res["ci95"],
            episodes=res["episodes"],
            checkpoint_step=res.get("step"),
            paper=paper,
            gap=None if paper is None else 100 * res["accuracy"] - paper,
        )
        note += f"; test of the step-{res.get('step')} checkpoint"
    rec["note"] = note
    return rec


def is_finished(wd: Path) -> bool:
    """The run reached its configured steps and was tested."""
    import yaml

    if not (wd / "eval_test.json").exists() or not (wd / "config.yaml").exists():
        return False
    steps = yaml.safe_load((wd / "config.yaml").read_text())["train"]["steps"]
    train = [r for r in _train_rows(wd) if r.get("split") == "train"]
    return bool(train) and train[-1]["step"] >= steps


def report(out: Path, setting: str, paper_length: bool) -> list[dict[str, Any]]:
    """Records of every run directory under ``out/runs`` (finished or not)."""
    records = []
    for wd in sorted((out / "runs").glob(f"*_{setting}")):
        algo = wd.name[: -len(setting) - 1]
        if algo not in ALGORITHMS:
            continue
        if is_finished(wd):
            records.append(record_from_workdir(wd, algo, setting, paper_length=paper_length))
        else:
            records.append(partial_record(wd, algo, setting))
    return records


def run_all(jobs: list[dict[str, Any]], args) -> list[dict[str, Any]]:
    """Run ``jobs`` with at most ``--parallel`` at once (each pinned to its own cores)."""
    pending, running, done = list(jobs), {}, []
    free = list(core_groups(args))
    while pending or running:
        while pending and len(running) < args.parallel:
            job = pending.pop(0)
            job["cores"] = free.pop(0) if free else None
            proc = launch(job, args)
            running[proc.pid] = (job, proc)
            print(
                f"[{time.strftime('%H:%M:%S')}] start {job['name']} ({job['steps']} steps"
                f"{', cores ' + job['cores'] if job['cores'] else ''})",
                flush=True,
            )
        pid, status, rusage = os.wait4(-1, 0)
        if pid not in running:
            continue
        job, _ = running.pop(pid)
        if job.get("cores") is not None:
            free.append(job["cores"])
        rec = finish(job, rusage, os.waitstatus_to_exitcode(status))
        done.append(rec)
        msg = rec.get("error") or f"{rec['accuracy']:.2f} ± {rec['ci95']:.2f}%"
        print(
            f"[{time.strftime('%H:%M:%S')}] done {job['name']}: {msg} "
            f"({rec['wall_min']:.1f} min wall, {rec['cpu_min']:.1f} min CPU)",
            flush=True,
        )
    return done


def core_groups(args) -> list[str]:
    if not args.cores_per_run:
        return []
    n = os.cpu_count() or 1
    k = args.cores_per_run
    return [f"{i}-{i + k - 1}" if k > 1 else str(i) for i in range(0, n - k + 1, k)]


COLUMNS = [
    ("algorithm", "algorithm"),
    ("setting", "setting"),
    ("scheme", "split"),
    ("steps_text", "meta-steps (config's full length)"),
    ("acc_text", "test accuracy ± 95% CI"),
    ("episodes", "test episodes"),
    ("wall_min", "wall min"),
    ("cpu_min", "CPU min"),
    ("paper_text", "paper"),
    ("gap", "gap (points)"),
    ("note", "note"),
]


def table(records: list[dict[str, Any]]) -> str:
    rows = []
    for r in records:
        row = dict(r)
        row["steps_text"] = f"{r.get('steps')} ({r.get('full_steps')})"
        if "error" in r:
            row["acc_text"] = "failed: " + r["error"][:60]
        elif "accuracy" in r:
            row["acc_text"] = f"{r['accuracy']:.2f} ± {r['ci95']:.2f}%"
        else:
            row["acc_text"] = "-"
        row["paper_text"] = "-" if r.get("paper") is None else f"{r['paper']}%"
        rows.append(row)
    return markdown_table(rows, COLUMNS)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--algorithms",
        type=csv_list,
        default=list(ALGORITHMS),
        help=f"comma-separated (default: all: {','.join(ALGORITHMS)})",
    )
    p.add_argument(
        "--setting",
        choices=SETTINGS,
        default="5w1s",
        help="N-way K-shot setting: configs/omniglot/<algorithm>_<setting>.yaml (default 5w1s)",
    )
    p.add_argument("--steps", help="meta-steps: N for all, or algo=N,...; default: the config's")
    p.add_argument("--evals", type=int, default=4, help="validation points per run (best kept)")
    p.add_argument(
        "--eval-episodes", type=int, default=600, help="test (and validation) episodes (600)"
    )
    p.add_argument("--parallel", type=int, default=1, help="runs at once")
    p.add_argument("--cores-per-run", type=int, default=0, help="pin each run (taskset); 0: no")
    p.add_argument("--set", action="append", default=[], help="extra config override")
    p.add_argument(
        "--manual-dir", default=str(default_manual_dir()), help="folder with the Omniglot zips"
    )
    p.add_argument("--data-dir", default=None, help="TFDS data dir (prepared Omniglot)")
    p.add_argument(
        "--out",
        type=Path,
        default=scratch("accuracy"),
        help="folder of the runs and accuracy.json (default bench-out/accuracy, git-ignored)",
    )
    p.add_argument("--force", action="store_true", help="retrain runs that already finished")
    p.add_argument("--table", type=Path, help="print the table of a results JSON and exit")
    p.add_argument("--tiny", action="store_true", help="smoke test: 8 filters, few steps")
    p.add_argument(
        "--paper-length",
        action="store_true",
        help="use <algorithm>_<setting>_paper.yaml where it exists (maml_5w1s.yaml is shortened)",
    )
    p.add_argument(
        "--steps-per-call",
        type=int,
        default=None,
        help="fused meta-steps per host call and per metrics row (e.g. 100 on a GPU)",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="tabulate the runs in --out/runs (finished or not) without training",
    )
    args = p.parse_args(argv)
    unknown = [a for a in args.algorithms if a not in ALGORITHMS]
    if unknown:
        p.error(f"unknown algorithms {unknown}; available: {', '.join(ALGORITHMS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())["runs"]))
        return 0
    if args.report:
        records = report(args.out, args.setting, args.paper_length)
        doc = {"benchmark": "accuracy", "machine": machine(), "runs": records}
        write_json(args.out / f"report_{args.setting}.json", doc)
        print(table(records))
        return 0
    if args.tiny:
        args.steps = args.steps or "4"
        args.eval_episodes = min(args.eval_episodes, 8)
        args.evals = 1
    steps = parse_steps(args.steps, args.algorithms)
    out: Path = args.out
    json_path = out / "accuracy.json"
    previous = json.loads(json_path.read_text())["runs"] if json_path.exists() else []
    jobs, kept = [], []
    for algo in args.algorithms:
        name = f"{algo}_{args.setting}"
        wd = out / "runs" / name
        if not args.force and (wd / "eval_test.json").exists():
            old = [r for r in previous if r.get("workdir") == str(wd) and "error" not in r]
            kept.append(
                old[-1]
                if old
                else record_from_workdir(wd, algo, args.setting, paper_length=args.paper_length)
            )
            print(f"{name}: finished before, kept (--force retrains)")
            continue
        if args.force and wd.exists():
            shutil.rmtree(wd)
        jobs.append(
            {
                "name": name,
                "algorithm": algo,
                "setting": args.setting,
                "config": config_path(algo, args.setting, paper_length=args.paper_length),
                "workdir": wd,
                "steps": steps[algo],
            }
        )
    records = run_all(jobs, args)
    new = {r["workdir"] for r in records}
    runs = [r for r in previous if r.get("workdir") not in new] + records
    runs += [r for r in kept if r not in runs]
    doc = {"benchmark": "accuracy", "machine": machine(), "runs": runs}
    write_json(json_path, doc)
    print(table([*kept, *records]))
    print(f"\nwrote {json_path}")
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
