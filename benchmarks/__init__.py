"""kdet's benchmarks: run each as ``python -m benchmarks.NAME`` from the repository root (see each module).

Worker subprocesses (latency, step timing) are started with
:func:`worker_command`, so they import this package however the parent was
started.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_flags() -> str:
    """The AVX2 / AVX-512 / VNNI / AMX flags of this CPU (every timing table prints them)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor() or "unknown"
    found = sorted({f for f in flags.split() if f in ("avx2", "avx_vnni") or f.startswith(("avx512", "amx"))})
    return " ".join(found) or "no avx2"


def worker_command(module: str, *args: str, env: dict | None = None) -> tuple[list[str], dict]:
    """``(argv, env)`` to run ``python -m module args`` with the repository root first on ``PYTHONPATH``."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", module, *args], env


#: The line a latency worker prints its result on (:func:`run_worker`, :func:`answer_worker`).
WORKER_TAG = "LATENCY_RESULT "


def run_worker(module: str, spec: dict, *, env: dict, timeout: float = 1800) -> dict:
    """Runs ``python -m module --latency-worker SPEC`` and returns the dict it answered.

    Raises ``RuntimeError`` with the worker's exit status and last stderr when it gave no answer.
    """
    command, env = worker_command(module, "--latency-worker", json.dumps(spec), env=env)
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(WORKER_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"latency worker {spec.get('name')} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len(WORKER_TAG):])


def answer_worker(spec: str | None, worker) -> bool:
    """In a ``--latency-worker SPEC`` process: runs ``worker(spec dict)`` and answers :func:`run_worker`; True.

    False (nothing run) in the parent, where ``spec`` is None.
    """
    if spec is None:
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(WORKER_TAG + json.dumps(worker(json.loads(spec))), flush=True)
    return True


def median_ms(detect, frames, *, warmup: int) -> dict:
    """``{"median_ms", "frames"}``: ``detect(frame)`` timed on every frame after ``warmup`` untimed calls."""
    for i in range(warmup):
        detect(frames[i % len(frames)])
    wall = []
    for frame in frames:
        started = time.perf_counter()
        detect(frame)
        wall.append(1000 * (time.perf_counter() - started))
    return {"median_ms": float(statistics.median(wall)), "frames": len(frames)}


def write_json(result: dict, path: str | None) -> None:
    """Writes a benchmark's result to ``path`` (folders created; nothing when ``path`` is empty) and says so."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")


def benchmark_main(parse_args, latency_worker, run):
    """``main(argv=None)`` of a benchmark with latency workers: in a worker, answer; else ``run(args, argv)``.

    ``argv`` (default ``sys.argv[1:]``) is handed to ``run`` so that it can start workers with the same
    arguments.
    """
    def main(argv=None) -> dict:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parse_args(argv)
        if answer_worker(args.latency_worker, latency_worker):
            return {}
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return run(args, argv)

    return main


def finish(result: dict, table: str, path: str | None) -> dict:
    """A benchmark's end: its table, ``result`` written to ``path`` (:func:`write_json`) and printed as JSON."""
    print("\n" + table)
    write_json(result, path)
    print(json.dumps(result))
    return result
