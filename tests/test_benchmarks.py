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

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def run(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert p.returncode == 0, f"{script} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-3000:]}"
    return p


def positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def check_machine(doc):
    m = doc["machine"]
    for key in ("packages", "python", "cpu_count", "jax_backend", "device_kind", "date_utc"):
        assert key in m, key
    assert m["packages"]["jax"]


def test_first_vs_second_order(tmp_path):
    out = tmp_path / "fvs"
    p = run(
        "first_vs_second_order.py",
        "--quick",
        "--tiny",
        "--steps",
        "3",
        "--tasks",
        "sinusoid",
        "--in-process",
        "--out",
        str(out),
    )
    doc = json.loads((out / "first_vs_second_order.json").read_text())
    check_machine(doc)
    assert doc["benchmark"] == "first_vs_second_order"
    written = p.stdout.split("wrote:", 1)[1].split()
    assert written == [str(out / "first_vs_second_order.json"), *doc.get("plots", [])]
    runs = {r["order"]: r for r in doc["runs"]}
    assert set(runs) == {"second", "first"}
    for r in runs.values():
        assert "error" not in r, r.get("error")
        for key in ("ms_per_step", "compile_s", "peak_mb", "train_s", "tasks_per_s"):
            assert positive(r[key]), (key, r[key])
        assert r["memory_kind"] in ("device", "rss", "rss_steps")
        assert r["metric"] == "mse" and r["steps"] == 3
        steps = [p["step"] for p in r["curve"]]
        assert steps[0] == 0 and steps[-1] == 3 and steps == sorted(steps)
        for p in r["curve"]:
            assert positive(p["mse"]) and p["ci95"] >= 0 and p["train_s"] >= 0
    # Identical seeds and episodes: the same initial parameters give the same step-0 score.
    assert math.isclose(
        runs["second"]["curve"][0]["mse"], runs["first"]["curve"][0]["mse"], rel_tol=1e-6
    )
    (s,) = doc["summary"]
    assert s["task"] == "sinusoid" and positive(s["second_over_first_ms"])
    for png in doc.get("plots", []):
        assert Path(png).stat().st_size > 0


def test_throughput(tmp_path):
    out = tmp_path / "tp.json"
    # The memory sweep (plain, remat, task_batch_size=1) exercises both options; every
    # algorithm's construction is covered by test_throughput_grid_covers_options' grid
    # and tests/test_algorithms.py.
    run(
        "throughput.py",
        "--tiny",
        "--in-process",
        "--sweeps",
        "memory",
        "--task-batch-sizes",
        "1",
        "--json",
        str(out),
    )
    doc = json.loads(out.read_text())
    check_machine(doc)
    res = doc["results"]
    got = {(r["sweep"], r["algorithm"], r["remat"], r["task_batch_size"]) for r in res}
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
    sys.path.insert(0, str(BENCH))
    try:
        import throughput
    finally:
        sys.path.remove(str(BENCH))
    cfgs = throughput.grid(throughput.parse_args([]))
    algs = {c["algorithm"] for c in cfgs if c["sweep"] == "algorithms"}
    assert algs == set(throughput.ALL)
    assert {c["inner_steps"] for c in cfgs if c["algorithm"] == "maml"} >= {1, 5, 10}
    mem = {(c["remat"], c["task_batch_size"]) for c in cfgs if c["sweep"] == "memory"}
    assert mem == {(False, None), (True, None), (False, 1), (False, 8)}
    shape = [c for c in cfgs if c["sweep"] == "shape"]
    assert {c["ways"] for c in shape} >= {5, 20} and {c["shots"] for c in shape} >= {1, 5}
    assert len({c["meta_batch"] for c in shape}) >= 3
    canon = throughput.grid(throughput.parse_args(["--preset", "canonical"]))
    assert len(canon) == 8 and all(c["meta_batch"] == 32 and c["filters"] == 64 for c in canon)


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
    "script", ["first_vs_second_order.py", "throughput.py", "compare_pytorch.py", "accuracy.py"]
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


def test_compare_pytorch_ratios(tmp_path):
    """Ratios from fake runs: fastest exact torch impl, looped-peer memory, contention flag."""
    sys.path.insert(0, str(BENCH))
    try:
        import compare_pytorch as cp
    finally:
        sys.path.remove(str(BENCH))
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


def test_accuracy_table(tmp_path, omniglot, omniglot_data_dir, omniglot_zip_dir):
    out = tmp_path / "acc"
    args = ["--tiny", "--algorithms", "protonets", "--out", str(out)]
    args += ["--data-dir", str(omniglot_data_dir), "--manual-dir", str(omniglot_zip_dir)]
    p = run("accuracy.py", *args)
    doc = json.loads((out / "accuracy.json").read_text())
    check_machine(doc)
    (rec,) = doc["runs"]
    assert rec["algorithm"] == "protonets" and rec["steps"] == 4 and rec["full_steps"] == 20000
    assert (rec["train_ways"], rec["test_ways"]) == (60, 5)  # the paper's protocol
    assert 0 <= rec["accuracy"] <= 100 and rec["ci95"] >= 0 and rec["episodes"] == 8
    assert rec["paper"] == 98.8 and math.isclose(rec["gap"], rec["accuracy"] - 98.8)
    assert positive(rec["cpu_min"]) and "| protonets | 5w1s | vinyals |" in p.stdout
    # A finished run is kept, not retrained; --table reprints the saved results.
    again = run("accuracy.py", *args)
    assert "finished before, kept" in again.stdout
    assert "| protonets |" in run("accuracy.py", "--table", str(out / "accuracy.json")).stdout
