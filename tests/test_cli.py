"""The ``jaxmeta`` command: help texts, error exits, divergence, ``data omniglot``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxmeta.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tests" / "tiny.yaml")


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    # main() would otherwise enable ~/.cache/jaxmeta/xla for this whole test process.
    monkeypatch.setenv("JAXMETA_CACHE_DIR", "off")


def _help(capsys, *args) -> str:
    with pytest.raises(SystemExit) as info:
        main([*args, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_help_texts(capsys):
    top = _help(capsys)
    for word in ("train", "evaluate", "predict", "plot", "data", "--version", "python -m jaxmeta"):
        assert word in top
    train = _help(capsys, "train")
    for word in (
        "--config",
        "--workdir",
        "--set",
        "--no-progress",
        "train.steps",
        "train.seed",
        "eval.episodes",
        "data.manual_dir",
        "resumes",
        "exit status",
    ):
        assert word in train, word
    ev = _help(capsys, "evaluate")
    for word in (
        "--workdir",
        "--split",
        "--episodes",
        "--inner-steps",
        "--checkpoint",
        "--bn-mode",
        "eval_<split>_<checkpoint>_<episodes>ep",
        "inductive",
        "95% CI",
    ):
        assert word in ev, word
    data = _help(capsys, "data", "omniglot")
    for word in ("--manual-dir", "--data-dir", "--no-download", "rotations", "--export-test"):
        assert word in data, word
    predict = _help(capsys, "predict")
    for word in ("--workdir", "--support", "--query", "--out", "--bn-mode", "one subfolder"):
        assert word in predict, word
    assert "--workdir" in _help(capsys, "plot")


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: jaxmeta" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["train.steps=0"], "--set: train.steps: must be positive"),
        (["train.stepz=3"], "--set: train.stepz: unknown key"),
        (["data.ways=150", "data.rotations=false"], "--set: data.ways: 150-way is larger than"),
        (["data.shots=10", "data.queries=11"], "--set: data.queries: shots + queries = 10 + 11"),
        (["algorithm.inner_steps=two"], "--set: algorithm.inner_steps: expected int"),
        # The key the user set is blamed, not the file's data.queries it adds up with.
        (["data.shots=25"], "--set: data.shots: shots + queries = 25 + 1 = 26 > 20"),
        (["train.stesp=3"], "train.stesp: unknown key (did you mean 'steps'?)"),
        (["trian.steps=3"], "trian.steps: unknown key (did you mean 'train'?)"),
        (["algorithm.inner_lf=3"], "(did you mean 'inner_lr'?)"),
        (["data.shotz=3"], "(did you mean 'shots'?)"),
    ],
)
def test_bad_config_exits_2_before_anything_runs(capsys, tmp_path, sets, needle):
    args = ["train", "--config", TINY, "--workdir", str(tmp_path / "wd")]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert not (tmp_path / "wd").exists()  # nothing was started


def test_bad_file_is_named(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(TINY).read_text().replace("steps: 20", "steps: twenty"))
    assert main(["train", "--config", str(bad), "--workdir", str(tmp_path / "wd")]) == 2
    assert f"{bad}: train.steps: expected int, got 'twenty'" in capsys.readouterr().err


def test_yaml_error_is_one_clean_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: tiny.yaml\ntrain: {steps: 3\n")
    assert main(["train", "--config", str(bad), "--workdir", str(tmp_path / "wd")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: not valid YAML: line 3, column 1: expected ',' or '}}'" in err, err
    assert "<yaml>" not in err and "<unicode string>" not in err and len(err.splitlines()) == 1


def test_missing_config_and_workdir(capsys, tmp_path):
    assert main(["train"]) == 2
    assert "--config is required" in capsys.readouterr().err
    assert main(["train", "--config", "configs/nope.yaml"]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert main(["evaluate", "--workdir", str(tmp_path)]) == 2
    assert "not a 'jaxmeta train' workdir" in capsys.readouterr().err


def test_divergence_exits_1_with_a_clear_message(capsys, tmp_path):
    config = str(REPO / "configs" / "sinusoid" / "maml_k5.yaml")
    sets = [
        "optimizer.learning_rate=1e30",
        "model.hidden=[8]",
        "train.steps=20",
        "train.steps_per_call=5",
        "train.log_every=5",
        "train.checkpoint_every=5",
        "train.eval_every=0",
        "eval.episodes=10",
    ]
    args = ["train", "--config", config, "--workdir", str(tmp_path), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "training diverged at step 2: metric 'loss'" in err, err
    assert "no checkpoint was written yet" in err
    assert not list((tmp_path / "checkpoints").glob("[0-9]*"))


def test_evaluate_regression_json(capsys, tmp_path):
    config = str(REPO / "configs" / "sinusoid" / "maml_k5.yaml")
    sets = [
        "model.hidden=[8]",
        "train.steps=10",
        "train.steps_per_call=5",
        "train.log_every=5",
        "train.checkpoint_every=5",
        "train.eval_every=5",
        "eval.episodes=10",
        "train.plot=false",
    ]
    args = ["train", "--config", config, "--workdir", str(tmp_path), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    capsys.readouterr()
    assert (
        main(["evaluate", "--workdir", str(tmp_path), "--episodes", "12", "--checkpoint", "latest"])
        == 0
    )
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "eval_test_latest_12ep.json").read_text())
    assert res["episodes"] == 12 and res["step"] == 10 and res["checkpoint"] == "latest"
    assert res["inner_steps"] == 10 and "bn_mode" not in res  # eval_inner_steps; no BatchNorm
    assert f"test mse: {res['mse']:.4f} ± {res['ci95']:.4f}" in out
    assert json.loads((tmp_path / "eval_test.json").read_text())["inner_steps"] == 10
    # A step number works too; a missing step is a one-line error listing the steps.
    assert (
        main(["evaluate", "--workdir", str(tmp_path), "--episodes", "12", "--checkpoint", "5"]) == 0
    )
    assert (tmp_path / "eval_test_step5_12ep.json").exists()
    assert main(["evaluate", "--workdir", str(tmp_path), "--checkpoint", "7"]) == 2
    assert "no checkpoint of step 7" in capsys.readouterr().err


def test_data_omniglot_prints_counts(capsys, omniglot, omniglot_data_dir):
    assert main(["data", "omniglot", "--data-dir", str(omniglot_data_dir), "--no-download"]) == 0
    out = capsys.readouterr().out
    assert "1623 characters x 20 drawers" in out
    lines = {tuple(line.split()[:2]): line.split()[2:] for line in out.splitlines()[2:]}
    assert lines[("maml", "train")] == ["1100", "4400"]
    assert lines[("maml", "val")] == ["100", "400"]
    assert lines[("vinyals", "train")] == ["1028", "4112"]
    assert lines[("vinyals", "test")] == ["423", "1692"]


def test_readme_synopsis_defaults_match_the_parser():
    """``[--opt value]`` in the README's command synopsis is that option's real default."""
    import argparse
    import re

    from jaxmeta.cli import _parser

    def sub(parser, name):
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return action.choices[name]

    readme = (REPO / "README.md").read_text()
    block = readme.split("## The `jaxmeta` command", 1)[1].split("```", 2)[1]
    checked = 0
    for line in block.splitlines():
        if not line.startswith("jaxmeta "):
            continue
        words = line.split()[1:]
        parser = sub(_parser(), words[0])
        if words[0] == "data":
            parser = sub(parser, words[1])
        for opt, value in re.findall(r"\[--([a-z-]+) ([a-z0-9]+)\]?", line):
            default = parser._option_string_actions[f"--{opt}"].default
            assert str(default) == value, (line, opt, default)
            checked += 1
    assert checked >= 6


def test_failed_data_step_leaves_no_workdir(capsys, tmp_path):
    """A run whose data cannot be prepared (wrong manual_dir) leaves no empty skeleton."""
    empty = tmp_path / "nothing"
    empty.mkdir()
    wd = tmp_path / "wd"
    args = ["train", "--config", TINY, "--workdir", str(wd), "--set", f"data.manual_dir={empty}"]
    args += ["--set", "data.download=false", "--set", f"data.data_dir={tmp_path / 'tfds'}"]
    assert main(args) == 2
    assert "jaxmeta: error:" in capsys.readouterr().err
    assert not wd.exists()


def test_help_imports_no_jax_and_lists_every_config():
    """`jaxmeta --help` parses before anything imports JAX (it took 5.5 s); train --help
    lists every shipped config (generated from the folder)."""
    import re
    import subprocess
    import sys

    code = (
        "import sys\nfrom jaxmeta.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\nprint('JAX' if 'jax' in sys.modules else 'NO-JAX')"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip().endswith("NO-JAX"), p.stdout + p.stderr
    from jaxmeta.cli import _config_listing

    listed = set()
    for folder, names in re.findall(r"configs/(\w+)/: ((?:.|\n {6})*)", _config_listing()):
        for name in names.split():
            head, _, tails = name.partition("{")
            for tail in tails.rstrip("}").split(",") if tails else [""]:
                listed.add(f"{folder}/{head}{tail}")
    shipped = {f"{p.parent.name}/{p.stem}" for p in (REPO / "configs").glob("*/*.yaml")}
    assert listed == shipped


def test_data_help_keeps_parentheses_whole(capsys):
    from jaxmeta.cli import _first_sentence

    assert _first_sentence("Episodes (Vinyals et al. 2016; split). More.") == (
        "Episodes (Vinyals et al. 2016; split)"
    )
    out = " ".join(_help(capsys, "data").split())
    assert "miniimagenet N-way K-shot miniImageNet episodes (Vinyals et al. 2016; Ravi" in out


def test_version_matches_the_readme(capsys):
    import jaxmeta

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"jaxmeta {jaxmeta.__version__}"
    major_minor = ".".join(jaxmeta.__version__.split(".")[:2])
    assert f"## Upgrading from 0.1 to {major_minor}" in (REPO / "README.md").read_text()


def test_an_interrupted_run_ends_the_process_without_waiting(monkeypatch, tmp_path, capsys):
    """SIGINT/SIGTERM: the process ends with os._exit after the run's files are closed (a
    normal exit waited for the chunk XLA was still computing: ~10 minutes for a 20-way
    population on the CPU); a call from Python returns the status instead."""
    import sys

    import jaxmeta.train
    from jaxmeta import cli
    from jaxmeta.train import TrainingInterrupted

    def interrupted(cfg, workdir, **kwargs):
        raise TrainingInterrupted("interrupted at step 3; resume with the same command", 143)

    class Exit(Exception):
        pass

    exits = []

    def exit_now(code):
        exits.append(code)
        raise Exit

    monkeypatch.setattr(jaxmeta.train, "train_and_evaluate", interrupted)
    monkeypatch.setattr(cli.os, "_exit", exit_now)
    args = ["train", "--config", str(REPO / "configs/sinusoid/maml_k5.yaml"),
            "--workdir", str(tmp_path / "w"), "--no-progress"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["jaxmeta", *args])
    with pytest.raises(Exit):
        cli.main()
    assert exits == [143]
    assert "interrupted at step 3; resume with the same command" in capsys.readouterr().err
    assert cli.main(args) == 143 and exits == [143]  # a call: no exit
