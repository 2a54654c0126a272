"""The ``jaxmeta`` command's opt-in huge pages for malloc (jaxmeta/host_memory.py): when the
tunable is added, that the command starts itself again with it, and only the command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxmeta import cli, host_memory
from jaxmeta.host_memory import huge_page_environment

GLIBC = (2, 36)
ON = {"JAXMETA_HUGE_PAGES": "1"}  # the opt-in


@pytest.fixture
def thp(tmp_path):
    def mode(text):
        path = tmp_path / "enabled"
        path.write_text(text)
        return path

    return mode


def test_the_tunable_is_added_where_it_can_work(thp):
    madvise, always = thp("always [madvise] never\n"), thp("[always] madvise never\n")
    got = huge_page_environment({"HOME": "/h", **ON}, glibc=GLIBC, mode_file=madvise)
    assert got == {"HOME": "/h", **ON, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    got = huge_page_environment(
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", **ON}, glibc=(2, 35), mode_file=always
    )
    assert got == {**ON, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}


@pytest.mark.parametrize(
    "environ, glibc, mode",
    [
        ({}, GLIBC, "always [madvise] never"),  # not asked for (the default)
        ({"JAXMETA_HUGE_PAGES": "0"}, GLIBC, "always [madvise] never"),
        ({**ON, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "always [madvise] never"),
        ({**ON, "GLIBC_TUNABLES": "a.b=1:glibc.malloc.hugetlb=2"}, GLIBC, "[always] madvise"),
        (ON, (2, 34), "always [madvise] never"),  # glibc before the tunable
        (ON, None, "always [madvise] never"),  # not glibc (e.g. musl): no version
        (ON, GLIBC, "always madvise [never]"),  # THP off
        (ON, GLIBC, None),  # no THP in the kernel
    ],
)
def test_nothing_is_added_unless_asked_for_and_able_to_work(thp, environ, glibc, mode):
    mode_file = thp(mode) if mode else thp("").with_name("absent")
    if glibc is None:  # the running C library is asked: make it "not glibc"
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
            assert huge_page_environment(environ, mode_file=mode_file) is None
    else:
        assert huge_page_environment(environ, glibc=glibc, mode_file=mode_file) is None


class Exec(Exception):
    pass


@pytest.fixture
def execs(monkeypatch):
    """``os.execve`` calls of the CLI (raised instead of run), with the tunable always due."""
    calls = []

    def execve(path, args, env):
        calls.append((path, args, env))
        raise Exec

    monkeypatch.setattr(host_memory.os, "execve", execve)
    monkeypatch.setattr(host_memory.sys, "platform", "linux")
    monkeypatch.setattr(
        host_memory, "huge_page_environment", lambda environ: {**environ, "GLIBC_TUNABLES": "x"}
    )
    return calls


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "export-features"])
def test_a_command_that_computes_starts_itself_again(execs, monkeypatch, command):
    monkeypatch.setattr(sys, "argv", ["jaxmeta", command, "--workdir", "w"])
    with pytest.raises(Exec):
        cli.main()
    ((path, args, env),) = execs
    assert path == sys.executable and args == list(sys.orig_argv)
    assert env["GLIBC_TUNABLES"] == "x" and env["PATH"] == os.environ["PATH"]


def test_calls_from_python_and_other_commands_do_not(execs, monkeypatch, tmp_path, capsys):
    args = ["train", "--config", str(tmp_path / "absent.yaml"), "--workdir", str(tmp_path / "w")]
    assert cli.main(args) == 2  # argv given: a call from Python, not the process
    assert "absent.yaml" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["jaxmeta", "plot", "--help"])
    with pytest.raises(SystemExit):
        cli.main()
    assert execs == []


def test_the_command_runs_again_in_the_same_process_with_the_tunable():
    """A real start with the opt-in: the program runs twice in one process id, the second
    time with the tunable, where this machine can use it (once, unchanged, where not)."""
    code = (
        "import os, sys; print(os.getpid(), os.environ.get('GLIBC_TUNABLES'), flush=True); "
        "sys.argv = ['jaxmeta', 'evaluate', '--help']; "
        "from jaxmeta.cli import main; sys.exit(main())"
    )
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["JAXMETA_HUGE_PAGES"] = "1"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    starts = [line.split(" ", 1) for line in p.stdout.splitlines()[:2] if line[:1].isdigit()]
    assert "--workdir" in p.stdout  # the help of evaluate, printed once
    if huge_page_environment(env) is None:
        assert starts == [[starts[0][0], "None"]]
    else:
        assert [s[1] for s in starts] == ["None", "glibc.malloc.hugetlb=1"]
        assert starts[0][0] == starts[1][0]  # the same process
