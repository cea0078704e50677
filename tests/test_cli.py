"""``python -m fastmuon``: the top-level command line (each command's own options: test_bench.py)."""

import subprocess
import sys

import fastmuon
from fastmuon.__main__ import COMMANDS


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastmuon", *args], capture_output=True, text=True)


def test_version_prints_the_package_version():
    out = run_cli("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"fastmuon {fastmuon.__version__}"


def test_unknown_command_is_named_with_the_known_ones():
    out = run_cli("bogus")
    assert out.returncode == 2 and out.stdout == ""
    error = out.stderr.strip().splitlines()[-1]
    assert "invalid choice: 'bogus'" in error and "argument command" in error
    assert all(name in error for name in COMMANDS)


def test_missing_command_is_an_error():
    out = run_cli()
    assert out.returncode == 2 and "required: command" in out.stderr


def test_options_before_the_command_are_refused_not_passed_on():
    out = run_cli("--quick", "bench")
    assert out.returncode == 2 and "unrecognized arguments: --quick" in out.stderr
    assert "usage: python -m fastmuon [" in out.stderr  # the top level's usage, not bench's


def test_command_options_reach_the_command():
    out = run_cli("bench", "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m fastmuon bench")
    assert "--quick" in out.stdout and "--budget" in out.stdout
    out = run_cli("bench", "--no-such-option")
    assert out.returncode == 2
    assert "python -m fastmuon bench: error: unrecognized arguments: --no-such-option" in out.stderr
