"""kdet's benchmarks: run each as ``python -m benchmarks.NAME`` from the repository root (see each module).

Worker subprocesses (latency, step timing) are started with
:func:`worker_command`, so they import this package however the parent was
started.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_command(module: str, *args: str, env: dict | None = None) -> tuple[list[str], dict]:
    """``(argv, env)`` to run ``python -m module args`` with the repository root first on ``PYTHONPATH``."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", module, *args], env
