"""Smoke tests of the benchmark scripts: each runs in its quickest mode in a subprocess and
writes JSON with the documented keys and sane values. No timing thresholds: benchmarks
are measured, not tested."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RUN_ONCE_ENV, run_once_compiles

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def smoke_env(**extra: str) -> dict[str, str]:
    """The environment of a smoke run: its programs compiled with XLA's backend optimisations
    off (``conftest.RUN_ONCE_ENV``). The smoke runs prove the wiring on tiny shapes (their
    numbers mean nothing), and each compiles several programs it runs a few times."""
    import os

    return {**os.environ, **RUN_ONCE_ENV, **extra}


def run(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=smoke_env(),
    )
    assert p.returncode == 0, f"{script} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-3000:]}"
    return p


def bench_module(name: str):
    """A module of ``benchmarks/`` (not a package: its scripts import each other by name)."""
    import importlib

    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def check_machine(doc):
    m = doc["machine"]
    for key in ("packages", "python", "cpu_count", "jax_backend", "device_kind", "date_utc"):
        assert key in m, key
    assert m["packages"]["jax"]


@pytest.mark.slow
def test_first_vs_second_order(tmp_path):
    """--smoke runs every part (accuracy over seeds, gradient gap at the checkpoints, cost vs
    inner steps) and a rerun skips what is done (resume)."""
    out = tmp_path / "fvs"
    args = ["--smoke", "--seeds", "2", "--algorithms", "maml,fomaml,imaml",
            "--inner-steps", "1", "--out", str(out)]  # fmt: skip
    p = run("first_vs_second_order.py", *args)
    doc = json.loads((out / "first_vs_second_order.json").read_text())
    check_machine(doc)
    assert doc["benchmark"] == "first_vs_second_order" and doc["mode"] == "smoke"
    written = p.stdout.split("wrote:", 1)[1].split("\n\n")[0].split()
    assert written[:2] == [
        str(out / "first_vs_second_order.json"),
        str(out / "first_vs_second_order.md"),
    ]
    assert written[2:] == doc.get("plots", [])
    runs = [r for r in doc["runs"] if "skipped" not in r]
    ran = ("maml", "fomaml", "imaml")  # imaml is registered since issue 17
    assert {(r["algorithm"], r["seed"]) for r in runs} == {(a, s) for a in ran for s in (0, 1)}
    for r in runs:
        assert r["metric"] == "mse" and positive(r["test"]["mse"]) and r["steps"] == 20
        assert [p["step"] for p in r["curve"]] == [10, 20]
        assert all(positive(p["wall_s"]) and positive(p["train_s"]) for p in r["curve"])
    imaml = [r for r in doc["runs"] if r["algorithm"] == "imaml"]
    assert len(imaml) == 2 and all("skipped" in r or "test" in r for r in imaml)
    acc = {r["algorithm"]: r for r in doc["summary"]["accuracy"]}
    assert acc["maml"]["seeds"] == 2 and acc["maml"]["std"] >= 0
    assert acc["maml"]["equal_time_s"] == acc["fomaml"]["equal_time_s"] > 0
    costs = [c for c in doc["cost"] if "skipped" not in c]
    assert {c["algorithm"] for c in costs} == set(ran)
    for c in costs:
        assert c["inner_steps"] == 1 and positive(c["ms_per_step"]) and positive(c["compile_s"])
        assert positive(c["memory_mb"]["temp"]) and positive(c["memory_mb"]["peak"])
    (gap,) = doc["gap"]
    assert sorted({r["step"] for r in gap["rows"]}) == [0, 10, 20]
    for row in gap["rows"]:
        assert -1 <= row["cosine"] <= 1 and row["rel_diff"] >= 0
        assert set(row["per_leaf"]) >= {"params/Dense_0/kernel", "params/Dense_0/bias"}
    for png in doc.get("plots", []):
        assert Path(png).stat().st_size > 0
    assert len(doc.get("plots", [])) == 4
    assert {Path(p).name for p in doc["plots"]} >= {"score_vs_steps.png", "score_vs_time.png"}
    # The verdict: per task, winner at equal steps and time with a paired test, cost ratio.
    (v,) = doc["summary"]["verdict"]
    assert v["task"] == "sinusoid" and v["seeds"] == [0, 1] and positive(v["cost_ratio_train"])
    assert v["equal_steps"]["n"] == 2  # equal time: the seeds with a point in the time
    for c in (v["equal_steps"], v["equal_time"]):
        assert c["winner"] in ("maml", "fomaml", None)
        assert c.get("p_t") is None or 0 <= c["p_t"] <= 1
    assert set(v["flattened"]) == {"maml", "fomaml"}
    assert "## Verdict: first vs second order" in (out / "first_vs_second_order.md").read_text()
    assert "VERDICT (first vs second order):" in p.stdout and "at equal meta-steps" in p.stdout
    assert "short runs" in p.stdout
    # A rerun finds every record and trains, times and measures nothing again.
    again = run("first_vs_second_order.py", *args)
    assert ": 20 steps" not in again.stderr and "cost:" not in again.stderr, again.stderr
    doc2 = json.loads((out / "first_vs_second_order.json").read_text())
    assert doc2["runs"] == doc["runs"] and doc2["cost"] == doc["cost"]


def test_first_vs_second_order_paired_test():
    """The verdict's paired t-test and sign test against closed forms (1 and 2 degrees of
    freedom) and exact binomial sums."""
    paired_test = bench_module("_fvso_report").paired_test
    r = paired_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])  # d = 1, 2, 3: t = 2 sqrt(3), df 2
    t = 2 * math.sqrt(3)
    assert r["t"] == pytest.approx(t) and r["p_t"] == pytest.approx(1 - t / math.sqrt(t * t + 2))
    assert r["p_sign"] == pytest.approx(0.25) and (r["positive"], r["negative"]) == (3, 0)
    r = paired_test([0.5, 3.0], [0.0, 0.0])  # df 1: p = 1 - 2 atan(t) / pi
    assert r["p_t"] == pytest.approx(1 - 2 * math.atan(r["t"]) / math.pi)
    r = paired_test([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7])  # 5 of 6 positive
    assert r["p_sign"] == pytest.approx(2 * (1 + 6) / 64)


def test_first_vs_second_order_pairs_differ_in_the_order_only():
    """MAML and FOMAML train the same resolved config in every task the benchmark runs but
    for ``algorithm.name``: a verdict on the order compares nothing else (on Omniglot 5w1s
    the pair once mixed jaxmeta's defaults with the reference code's protocol)."""
    fvso = bench_module("_fvso")
    from jaxmeta.train import load_config

    settings = {"manual_dir": "/data/omniglot", "tiny": False, "set": []}
    for task in fvso.TASKS:
        resolved = {}
        for algorithm in ("maml", "fomaml"):
            path, overrides = fvso.config_for(task, algorithm, settings)
            cfg = load_config(path, overrides).to_dict()
            assert cfg["algorithm"].pop("name") == algorithm, (task, algorithm)
            resolved[algorithm] = cfg
        assert resolved["maml"] == resolved["fomaml"], task
        if task != "sinusoid":  # every Omniglot pair follows the reference code's protocol
            assert resolved["maml"]["algorithm"]["inner_loss_reduction"] == "sum_over_k", task


def test_first_vs_second_order_stops_on_a_signal(tmp_path, monkeypatch, capsys):
    """Ctrl-C or SIGTERM inside a training run stops the whole benchmark with the run's exit
    status (it once marked the run FAILED and went on with the next), and every accuracy run
    checkpoints at its validation points, so the cut run resumes from there."""
    import jaxmeta.train
    from jaxmeta.train import TrainingInterrupted

    fvso = bench_module("_fvso")
    calls = []

    def interrupted(cfg, workdir, **kwargs):
        calls.append(workdir)
        raise TrainingInterrupted("interrupted at step 4; resume with the same command", 143)

    monkeypatch.setattr(jaxmeta.train, "train_and_evaluate", interrupted)
    args = ["--smoke", "--tasks", "sinusoid", "--sections", "accuracy", "--no-plots",
            "--out", str(tmp_path)]  # fmt: skip
    assert bench_module("first_vs_second_order").main(args) == 143
    assert len(calls) == 1, calls  # no further run started
    err = capsys.readouterr().err
    assert "interrupted at step 4; resume with the same command" in err
    assert "FAILED" not in err and "Traceback" not in err
    settings = {"evals": 4, "steps_per_call": 10, "episodes": {"sinusoid": (600, 200)}}
    for keep_all in (True, False):
        got = dict(o.split("=") for o in fvso.run_overrides("sinusoid", 10000, settings,
                                                            keep_all=keep_all))  # fmt: skip
        assert got["train.checkpoint_every"] == got["train.eval_every"] == "2500", got
        assert got["train.keep_checkpoints"] == ("6" if keep_all else "1")


def test_first_vs_second_order_quick_trains_imaml_with_one_seed(tmp_path, monkeypatch, capsys):
    """--quick keeps its time by training iMAML (17x a MAML run) with seed 0 only, and says so;
    the other algorithms keep every seed, and outside --quick iMAML does too."""
    script = bench_module("first_vs_second_order")
    trained = {}

    def train_seeds(task, algorithm, seeds, settings, out):
        trained[algorithm] = seeds
        return []

    monkeypatch.setattr(script, "train_seeds", train_seeds)
    args = ["--tasks", "sinusoid", "--sections", "accuracy", "--algorithms", "maml,imaml",
            "--no-plots", "--out", str(tmp_path)]  # fmt: skip
    assert script.main(["--quick", *args]) == 0
    assert trained == {"maml": [0, 1, 2], "imaml": [0]}
    assert "sinusoid / imaml in --quick: seed 0 only" in capsys.readouterr().out
    assert script.main(["--smoke", *args]) == 0
    assert trained == {"maml": [0, 1], "imaml": [0, 1]}


def test_keep_run_keeps_what_a_resume_needs(tmp_path, capsys):
    """benchmarks/keep_run.py copies a run's latest checkpoint, best/, config, environment and
    metrics (nothing else); a workdir made from that copy resumes to the state of an
    uninterrupted run, bit for bit."""
    import shutil

    import jax
    import numpy as np

    from jaxmeta.train import (
        Checkpoints,
        build_experiment,
        config_from_dict,
        initial_state,
        train_and_evaluate,
    )

    keep_run = bench_module("keep_run")

    def cfg(steps):
        return config_from_dict({
            "name": "keep", "data": {"name": "sinusoid", "shots": 5, "queries": 5},
            "model": {"name": "mlp", "hidden": [8]},
            "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
            "train": {"steps": steps, "meta_batch_size": 4, "steps_per_call": 5,
                      "log_every": 5, "eval_every": 5, "checkpoint_every": 5, "plot": False},
            "eval": {"episodes": 8, "batch_size": 8},
        }, source="test")  # fmt: skip

    origin, kept, resumed = tmp_path / "origin", tmp_path / "kept", tmp_path / "resumed"
    with run_once_compiles():
        train_and_evaluate(cfg(20), tmp_path / "full", progress=False)
        train_and_evaluate(cfg(10), origin, progress=False)
        assert keep_run.main([str(origin), str(kept)]) == 0
        names = sorted(p.name for p in kept.iterdir())
        assert names == ["best", "checkpoints", "config.yaml", "environment.json", "metrics.jsonl"]
        assert [p.name for p in (kept / "checkpoints").iterdir()] == ["10"]  # not 5
        shutil.copytree(kept, resumed)
        assert train_and_evaluate(cfg(20), resumed, progress=False)["start_step"] == 10
    target = jax.eval_shape(lambda: initial_state(cfg(20), build_experiment(cfg(20))))
    (a, _), (b, _) = (Checkpoints(wd).restore(target) for wd in (tmp_path / "full", resumed))
    assert int(a.step) == int(b.step) == 20
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    capsys.readouterr()
    assert keep_run.main([str(tmp_path / "absent"), str(tmp_path / "k2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("keep_run: ") and "no complete checkpoint" in err and err.count("\n") == 1


def test_first_vs_second_order_bad_input():
    p = subprocess.run(
        [sys.executable, str(BENCH / "first_vs_second_order.py"), "--tasks", "omniglot_9w1s"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2 and "unknown task/algorithm/section" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_throughput(tmp_path):
    out = tmp_path / "tp.json"
    # The memory sweep (plain, remat, task_chunk=1) exercises both options; every
    # algorithm's construction is covered by test_throughput_grid_covers_options' grid
    # and tests/test_algorithms.py.
    run(
        "throughput.py",
        "--tiny",
        "--in-process",
        "--sweeps",
        "memory",
        "--task-chunks",
        "1",
        "--json",
        str(out),
    )
    doc = json.loads(out.read_text())
    check_machine(doc)
    res = doc["results"]
    got = {(r["sweep"], r["algorithm"], r["remat"], r["task_chunk"]) for r in res}
    assert got == {
        ("memory", "maml", False, None),
        ("memory", "maml", True, None),
        ("memory", "maml", False, 1),
    }
    for r in res:
        assert "error" not in r, r.get("error")
        for key in (
            "ms_per_step",
            "steps_per_s",
            "tasks_per_s",
            "compile_s",
            "peak_mb",
            "n_params",
            "ms_min",
            "ms_max",
        ):
            assert positive(r[key]), (key, r[key])
        assert r["ms_min"] <= r["ms_per_step"] <= r["ms_max"]
        assert math.isclose(r["tasks_per_s"], r["meta_batch"] * r["steps_per_s"])
        assert math.isfinite(r["last_loss"])


def test_throughput_grid_covers_options():
    """The default grid (not run here) has every algorithm, 1/5/10 inner steps and both options."""
    throughput = bench_module("throughput")
    cfgs = throughput.grid(throughput.parse_args([]))
    algs = {c["algorithm"] for c in cfgs if c["sweep"] == "algorithms"}
    assert algs == set(throughput.ALL)
    assert {c["inner_steps"] for c in cfgs if c["algorithm"] == "maml"} >= {1, 5, 10}
    mem = {(c["remat"], c["task_chunk"]) for c in cfgs if c["sweep"] == "memory"}
    assert mem == {(False, None), (True, None), (False, 1), (False, 8)}
    shape = [c for c in cfgs if c["sweep"] == "shape"]
    assert {c["ways"] for c in shape} >= {5, 20} and {c["shots"] for c in shape} >= {1, 5}
    assert len({c["meta_batch"] for c in shape}) >= 3
    canon = throughput.grid(throughput.parse_args(["--preset", "canonical"]))
    assert len(canon) == 8 and all(c["meta_batch"] == 32 and c["filters"] == 64 for c in canon)
    # miniImageNet-shaped rows: 84x84x3, MAML's setting, on Conv-4-32 and ResNet-12.
    mini = throughput.grid(throughput.parse_args(["--preset", "miniimagenet"]))
    assert {c["model"] for c in mini} == {"conv4", "resnet12"} and len(mini) == 6
    assert all(
        (c["size"], c["channels"], c["meta_batch"], c["queries"]) == (84, 3, 4, 15) for c in mini
    )
    assert {(c["algorithm"], c["inner_steps"], c["first_order"]) for c in mini} == {
        ("maml", 5, False),
        ("maml", 5, True),
        ("protonets", 0, False),
    }


@pytest.mark.slow
def test_compare_pytorch_without_torch(tmp_path):
    out = tmp_path / "cmp.json"
    p = run(
        "compare_pytorch.py",
        "--tiny",
        "--orders",
        "first",
        "--torch-python",
        "none",
        "--json",
        str(out),
    )
    assert "PyTorch side skipped" in p.stderr
    doc = json.loads(out.read_text())
    check_machine(doc)
    assert doc["torch_skipped"]
    (row,) = doc["summary"]
    assert row["order"] == "first" and row["inner_steps"] == 1 and row["queries"] == 1
    assert positive(row["jaxmeta_ms"]) and positive(row["jaxmeta_peak_mb"])
    assert "speedup" not in row  # nothing to compare against


@pytest.mark.parametrize(
    "script",
    [
        "first_vs_second_order.py",
        "throughput.py",
        "compare_pytorch.py",
        "accuracy.py",
        "lowering.py",
        "profile_summary.py",
        "keep_run.py",
    ],
)
def test_help(script):
    assert "usage" in run(script, "--help", timeout=120).stdout


@pytest.mark.parametrize(
    "script",
    [
        "first_vs_second_order.py",
        "throughput.py",
        "compare_pytorch.py",
        "accuracy.py",
        "maml_step.py",
        "scaling.py",
        "populations.py",
    ],
)
def test_every_option_has_help_and_a_scratch_default(script, monkeypatch):
    import argparse
    import importlib.util

    parsers = []

    def grab(self, *args, **kwargs):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    monkeypatch.setattr(sys, "argv", [script])
    spec = importlib.util.spec_from_file_location(f"bench_{script[:-3]}", BENCH / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main = getattr(module, "parse_args", None) or module.main
    with pytest.raises(SystemExit):
        main([]) if main.__code__.co_argcount else main()
    (parser,) = parsers
    for action in parser._actions:
        assert action.help, f"{script}: {action.option_strings} has no help text"
        default = str(action.default)
        assert "benchmarks/results" not in default, f"{script}: {action.option_strings} {default}"


def test_gpu_script_syntax():
    subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], check=True)


@pytest.fixture(scope="session")  # session: xdist may tear a module fixture down between
# the two tests of its group (it was built twice in one run)
def gpu_dry_run(tmp_path_factory, omniglot, omniglot_data_dir):
    """benchmarks/gpu.sh with ALLOW_CPU=1 (tiny settings, no PyTorch), run once for the
    tests that read its outputs: ``(completed process, OUT folder, its work folder)``."""
    tmp = tmp_path_factory.mktemp("gpu_dry_run")
    out = tmp / "out"
    env = smoke_env(
        ALLOW_CPU="1",
        PYTHON=sys.executable,
        JAXMETA_TORCH_PYTHON="none",
        TFDS_DATA_DIR=str(omniglot_data_dir),
        TMPDIR=str(tmp),
        # The stage limits budget GPU time; a loaded CPU must not trip them in a dry run.
        STAGE1_S="600",
        STAGE2_S="600",
        DEADLINE_S="3000",
    )
    p = subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        env=env,
    )
    (work,) = tmp.glob("jaxmeta-gpu.*")  # gpu.sh's mktemp folder under TMPDIR
    return p, out, work


@pytest.mark.xdist_group("gpu_dry_run")
def test_gpu_script_dry_run_on_cpu(gpu_dry_run):
    """benchmarks/gpu.sh end to end with ALLOW_CPU=1 (tiny settings, no PyTorch): every
    stage runs and leaves its archive, as the GPU run must."""
    import tarfile

    p, out, _ = gpu_dry_run
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    names = {f.name for f in out.iterdir()}
    archives = {"lowering.tar.gz", "compare.tar.gz", "repro.tar.gz", "trained_models.tar.gz"}
    assert archives | {"gpu.log", "environment.txt"} <= names and len(names) <= 8
    with tarfile.open(out / "lowering.tar.gz") as tar:
        doc = json.load(tar.extractfile("lowering/lowering.json"))
        assert "lowering/profile/train_step.hlo.txt" in tar.getnames()
        assert "lowering/profile_summary.json" in tar.getnames()
        assert not any(n.endswith(".xplane.pb") for n in tar.getnames())
    assert doc["auto"] == "gemm" and {r["kind"] for r in doc["records"]} == {
        "train_step",
        "meta_step",
    }
    assert all(positive(r["ms_per_step"]) for r in doc["records"])
    assert doc["profile"]["hlo_fusions"] > 0 and "error" not in doc["profile"]
    with tarfile.open(out / "repro.tar.gz") as tar:
        wall = json.load(tar.extractfile("repro/5w1s/runs/maml_5w1s/wall.json"))
        assert wall["rc"] == 0 and wall["wall_ms"] > 0
        report = tar.extractfile("repro/report_5w1s.md").read().decode()
        assert "| maml | 5w1s |" in report and "| protonets | 5w1s |" in report
        assert not any("/checkpoints/" in n for n in tar.getnames())
    with tarfile.open(out / "trained_models.tar.gz") as tar:
        assert any("maml_5w1s/checkpoints/" in n for n in tar.getnames())  # portable run


def test_compare_pytorch_ratios(tmp_path):
    """Ratios from fake runs: fastest exact torch impl, looped-peer memory, contention flag."""
    cp = bench_module("compare_pytorch")
    cfg = {"order": "second", "inner_steps": 1, "queries": 15, "meta_batch": 32}
    by_impl = {
        "jaxmeta": [
            {"ms": 100.0, "peak_rss_mb": 300.0, "steps_peak_mb": 250.0, "cpu_util": 1.9},
            {"ms": 120.0, "peak_rss_mb": 310.0, "cpu_util": 1.9},
        ],
        "higher": [
            {"ms": 400.0, "peak_rss_mb": 380.0, "cpu_util": 1.95},
            {"ms": 420.0, "peak_rss_mb": 380.0, "cpu_util": 1.95},
        ],
        "func_fusedbn": [{"ms": 50.0, "peak_rss_mb": 900.0, "cpu_util": 1.9}] * 2,  # wrong SO grads
        "func": [{"error": "boom"}],
    }
    row = cp.summarize(cfg, by_impl)
    assert row["fastest_torch"] == "higher"
    assert math.isclose(row["speedup"], 410.0 / 110.0) and row["speedup_ok"]
    assert row["speedup_per_round"] == [4.0, 3.5]
    assert math.isclose(row["memory_ratio"], 305.0 / 380.0) and row["memory_ok"]
    assert row["contended"] is False and row["func_error"] == "boom"
    # maml_step.py writes a JSON list of records; JSONL and {"results": [...]} also parse.
    recs = [{"order": "second", "inner_steps": 1, "query_per_class": 15, "ms_per_step": 1.0}]
    (tmp_path / "a.json").write_text(json.dumps(recs))
    (tmp_path / "b.json").write_text(json.dumps({"results": recs}))
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in recs * 2))
    assert cp._records(tmp_path / "a.json") == recs == cp._records(tmp_path / "b.json")
    assert cp._records(tmp_path / "c.jsonl") == recs * 2


def test_compare_pytorch_on_gpu_targets_and_memory(tmp_path):
    """On a GPU the target is 20x and memory is compared as device peaks against torch.func;
    the jaxmeta rows can come from a lowering.py JSON of the same call."""
    cp = bench_module("compare_pytorch")
    cfg = {"order": "second", "inner_steps": 1, "queries": 15, "meta_batch": 32, "filters": 64}
    by_impl = {
        "jaxmeta": [{"ms": 1.5, "peak_rss_mb": 900.0, "device_peak_mb": 300.0, "cpu_util": 1.0}],
        "func": [{"ms": 39.0, "peak_rss_mb": 2000.0, "device_peak_mb": 600.0, "cpu_util": 1.0}],
    }
    row = cp.summarize(cfg, by_impl, target=20.0, device="cuda")
    assert math.isclose(row["speedup"], 26.0) and row["speedup_ok"] and row["speedup_target"] == 20
    assert math.isclose(row["gpu_memory_ratio"], 0.5) and row["gpu_memory_ok"]
    assert "contended" not in row  # CPU contention is not a GPU notion
    assert not cp.summarize(cfg, by_impl, target=30.0, device="cuda")["speedup_ok"]
    rec = {
        "kind": "meta_step",
        "order": "second",
        "inner_steps": 1,
        "query_per_class": 15,
        "meta_batch": 32,
        "filters": 64,
        "conv_impl": "gemm",
        "conv_impl_resolved": "gemm",
        "ms_per_step": 1.5,
        "program_mb": 300.0,
    }
    xla = {**rec, "conv_impl": "xla", "conv_impl_resolved": "xla", "ms_per_step": 14.0}
    path = tmp_path / "lowering.json"
    path.write_text(json.dumps({"auto": "gemm", "records": [xla, rec]}))
    got = cp.jax_from_file(cfg, path)
    assert got["ms"] == 1.5 and got["device_peak_mb"] == 300.0  # the lowering auto picks
    assert "error" in cp.jax_from_file({**cfg, "queries": 1}, path)


def run_in_process(module: str, *args: str, capsys) -> str:
    """``benchmarks/<module>.py ARGS`` called in this process (``main(argv)``, exit status
    0): its stdout. For runs that train nothing, so spare a process start (~3 s of imports)."""
    capsys.readouterr()
    assert bench_module(module).main(list(args)) == 0
    return capsys.readouterr().out


@pytest.mark.xdist_group("gpu_dry_run")
def test_accuracy_table(tmp_path, gpu_dry_run, omniglot_data_dir, omniglot_zip_dir, capsys):
    """accuracy.py --tiny on ProtoNets 5w1s: the run is the dry run's stage 4
    (``accuracy.py --tiny --setting 5w1s --algorithms protonets --data-dir ...`` with
    ``--parallel 10 --set train.keep_checkpoints=1``), copied to a folder of its own."""
    import shutil

    _, _, work = gpu_dry_run
    repro, out = work / "repro" / "5w1s", tmp_path / "acc"
    name = "runs/protonets_5w1s"
    shutil.copytree(repro / name, out / name)
    text = (repro / "accuracy.json").read_text().replace(str(repro / name), str(out / name))
    (out / "accuracy.json").write_text(text)
    stdout = (work / "repro" / "5w1s.log").read_text()
    args = ["--tiny", "--algorithms", "protonets", "--out", str(out)]
    args += ["--data-dir", str(omniglot_data_dir), "--manual-dir", str(omniglot_zip_dir)]
    doc = json.loads((out / "accuracy.json").read_text())
    check_machine(doc)
    (rec,) = doc["runs"]
    assert rec["algorithm"] == "protonets" and rec["steps"] == 4 and rec["full_steps"] == 20000
    assert rec["workdir"] == str(out / name)
    assert (rec["train_ways"], rec["test_ways"]) == (60, 5)  # the paper's protocol
    assert 0 <= rec["accuracy"] <= 100 and rec["ci95"] >= 0 and rec["episodes"] == 8
    assert rec["paper"] == 98.8 and math.isclose(rec["gap"], rec["accuracy"] - 98.8)
    assert positive(rec["cpu_min"]) and "| protonets | 5w1s | vinyals |" in stdout
    # A finished run is kept, not retrained; --table reprints the saved results.
    again = run_in_process("accuracy", *args, capsys=capsys)
    assert "finished before, kept" in again
    table = run_in_process("accuracy", "--table", str(out / "accuracy.json"), capsys=capsys)
    assert "| protonets |" in table
    # --report: finished runs with their test result, an unfinished one (a run cut by a
    # time limit) with its steps and best validation accuracy so far.
    cut = out / "runs" / "maml_5w1s"
    cut.mkdir(parents=True)
    (cut / "config.yaml").write_text("train:\n  steps: 60000\ndata:\n  scheme: maml\n")
    rows = [
        {"split": "train", "step": 100, "loss": 1.0, "wall_time": 6.0},
        {"split": "val", "step": 100, "accuracy": 0.5},
        {"split": "train", "step": 200, "loss": 0.9, "wall_time": 12.0},
        {"split": "val", "step": 200, "accuracy": 0.75},
    ]
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = run_in_process("accuracy", "--report", "--out", str(out), capsys=capsys)
    recs = {r["algorithm"]: r for r in json.loads((out / "report_5w1s.json").read_text())["runs"]}
    assert recs["protonets"]["accuracy"] == rec["accuracy"]
    assert recs["maml"]["steps"] == 200 and recs["maml"]["best_val"] == 75.0
    assert "unfinished at step 200 of 60000; best val 75.00% at step 200" in rep
    # ... and with the test result of its best checkpoint (`jaxmeta evaluate`).
    res = {"accuracy": 0.7, "ci95": 0.01, "episodes": 600, "step": 200}
    (cut / "eval_test.json").write_text(json.dumps(res))
    rep = run_in_process("accuracy", "--report", "--out", str(out), capsys=capsys)
    recs = {r["algorithm"]: r for r in json.loads((out / "report_5w1s.json").read_text())["runs"]}
    assert recs["maml"]["unfinished"] and math.isclose(recs["maml"]["accuracy"], 70.0)
    assert "test of the step-200 checkpoint" in rep


@pytest.mark.slow
def test_maml_rl_quick(tmp_path):
    """In this process (the script's ``main``: no process start, jax already imported),
    its programs compiled as a smoke subprocess's are (RUN_ONCE_ENV)."""
    out = tmp_path / "maml_rl"
    with run_once_compiles():
        assert bench_module("maml_rl").main(["--quick", "--out", str(out)]) == 0
    doc = json.loads((out / "maml_rl.json").read_text())
    check_machine(doc)
    assert doc["benchmark"] == "maml_rl" and doc["quick"]
    ev = doc["eval"]
    assert ev["steps"] == [0, 1, 2, 3]
    for name in ("maml", "pretrained", "random"):
        assert len(ev[name]["mean"]) == 4 and all(math.isfinite(v) for v in ev[name]["mean"])
        assert all(c >= 0 for c in ev[name]["ci95"])
    s = doc["speed"]
    for key in ("maml_train_s", "maml_compile_s", "train_env_steps_per_s"):
        assert positive(s[key]), (key, s[key])
    assert positive(s["rollout_only"]["env_steps_per_s"])
    assert len(doc["maml"]["curve"]["return_after"]) == 5
    for png in doc.get("plots", []):
        assert Path(png).stat().st_size > 0


def test_matmul_flop_count_by_hand():
    """flops.py's counter: a dot (2 x batch x M x N x K), a convolution (2 x outputs x kernel
    inputs), a scan body times its length, the costlier cond branch."""
    import jax
    import jax.numpy as jnp

    flops = bench_module("flops")
    a, b = jnp.zeros((3, 4, 5)), jnp.zeros((3, 5, 6))
    x, k = jnp.zeros((2, 8, 8, 3)), jnp.zeros((3, 3, 3, 7))

    def f(a, b, x, k):
        y = jnp.einsum("bmk,bkn->bmn", a, b)  # 2 * 3 * 4 * 6 * 5 = 720
        c = jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        s, _ = jax.lax.scan(lambda c, _: (c @ jnp.ones((6, 6)), None), y[0], None, length=4)
        z = jax.lax.cond(True, lambda v: v @ jnp.ones((6, 2)), lambda v: v[:, :2], s)
        return y, c, z

    got = flops.matmul_flops(jax.make_jaxpr(f)(a, b, x, k).jaxpr)
    conv = 2 * (2 * 8 * 8 * 7) * (3 * 3 * 3)
    assert got == 720 + conv + 4 * (2 * 4 * 6 * 6) + 2 * 4 * 2 * 6


def test_flops_every_algorithm_from_its_paper_config(tmp_path):
    """flops.py --tiny in process: each algorithm's paper config built through the config
    pipeline, its step timed and its work counted; the default list is the registry."""
    flops = bench_module("flops")
    from conftest import run_once_compiles, shipped_algorithms

    assert flops.shipped_algorithms() == sorted(shipped_algorithms())
    assert all(flops.paper_config(n) is not None for n in flops.shipped_algorithms())
    out = tmp_path / "flops.json"
    args = ["--tiny", "--in-process", "--algorithms", "maml,protonets", "--budget-s", "0.05"]
    args += ["--set", "data.ways=5", "--gemm-budget-s", "0.05"]  # ProtoNets trains 60-way
    with run_once_compiles():  # the plumbing: programs compiled without XLA's optimisations
        assert flops.main([*args, "--warmup", "1", "--min-repeats", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    check_machine(doc)
    rows = {r["algorithm"]: r for r in doc["records"]}
    assert set(rows) == {"maml", "protonets"} and rows["maml"]["meta_batch"] == 2
    for r in rows.values():
        for key in ("ms_per_step", "gflop_per_step", "gflops", "gemm_peak_gflops", "compile_s"):
            assert positive(r[key]), (r["algorithm"], key, r[key])
        want = 100 * r["gflops"] / r["gemm_peak_gflops"]
        assert r["pct_of_peak"] == pytest.approx(want, rel=0.01)
