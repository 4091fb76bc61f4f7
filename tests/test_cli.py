"""The command line's own manners: TensorFlow's C++ log noise is off unless ``--verbose`` asks for it."""

import os
import subprocess
import sys

from tests.paths import ROOT

#: Runs kdet's command line (a command that fails before any work), then imports TensorFlow and lists devices:
#: on a machine without a GPU, TensorFlow's C++ layer logs a CUDA cuInit error unless its log level hides it.
SCRIPT = """
import os, sys
from kdet import cli
code = cli.main(sys.argv[1:] + ["evaluate", "--model-dir", "/nonexistent/kdet/model"])
print("level", os.environ["TF_CPP_MIN_LOG_LEVEL"], "code", code)
import tensorflow as tf
tf.config.list_physical_devices()
"""


def _run(*flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", SCRIPT, *flags], capture_output=True, text=True, timeout=300,
                          env=env, cwd=str(ROOT))


def test_tensorflow_log_lines_are_hidden_unless_verbose():
    quiet = _run()
    assert "level 3 code 2" in quiet.stdout, quiet.stdout + quiet.stderr
    assert "/nonexistent/kdet/model" in quiet.stderr  # kdet's own error is still printed
    assert "cuda" not in quiet.stderr.lower() and "external/local_xla" not in quiet.stderr, quiet.stderr
    verbose = _run("--verbose")
    assert "level 0 code 2" in verbose.stdout, verbose.stdout + verbose.stderr


def test_every_help_answers_in_well_under_two_seconds():
    """``kdet --help`` and each subcommand's, timed as a user runs them (a fresh process; about 0.1 s measured on the
    2-core AVX2 machine; the bound is generous for a loaded CI machine, TensorFlow alone imports in 5-30 s)."""
    import time

    from kdet.cli import build_parser

    commands = [[]] + [[name] for name in build_parser()._subparsers._group_actions[0].choices]
    assert len(commands) >= 6  # demo, train, evaluate, detect, export
    for command in commands:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "kdet", *command, "--help"], capture_output=True, text=True,
                              timeout=60, cwd=str(ROOT))
        seconds = time.perf_counter() - started
        assert done.returncode == 0 and "usage: kdet" in done.stdout, done.stderr
        assert seconds < 2.0, (command, seconds)
