"""GPU readiness in one run of under 8 minutes: training throughput, Cascade R-CNN vs Model Garden, AP-loss cost.

Three existing benchmarks, each in its own process with its own time limit,
sized for one modern GPU; their JSON objects are gathered into one report:

* ``throughput``: :mod:`benchmarks.train_throughput` -- the
  ``cascade_rcnn_fpn`` recipe's first steps through ``kdet.training.train``
  (MirroredStrategy over the visible GPUs, ``--mixed-precision``,
  1024x1024, ResNet-50 from random weights: the GPU machine reaches no
  network) against a bare ``model.fit``; steps/s and images/s;
* ``cascade_speed``: :mod:`benchmarks.cascade_speed` -- kdet's Cascade
  R-CNN against TF Model Garden's at the same settings (train and
  inference steps, the ratios);
* ``aploss_cost``: :mod:`benchmarks.aploss_cost` -- AP-loss's overhead in a
  RetinaNet training step over the focal loss, and its scaling with pairs.

``--dry-run`` checks the plan on any machine (a CPU too): every step's
arguments are parsed by the script that will run them, nothing is trained,
and the report lists the commands with ``"dry_run": true``. Without a GPU
and without ``--dry-run`` the script stops with a message saying so.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.gpu_check              # on the GPU machine: benchmarks/results/gpu_check.json
    .venv/bin/python -m benchmarks.gpu_check --dry-run    # anywhere: the plan, checked
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

#: name -> (module of benchmarks/, its arguments, seconds it may take on one GPU)
STEPS = {
    "throughput": ("train_throughput", ["--recipe", "cascade_rcnn_fpn", "--image-size", "1024", "1024",
                                        "--batch-per-replica", "2", "--steps", "30", "--warmup", "10",
                                        "--mixed-precision", "mixed_float16"], 180),
    "cascade_speed": ("cascade_speed", ["--train-iters", "10", "--infer-iters", "20", "--warmup", "3"], 150),
    "aploss_cost": ("aploss_cost", ["--steps", "6", "--warmup", "2", "--rounds", "1", "--sizes", "1e5", "1e6", "1e7",
                                    "--repeats", "2"], 120),
}
#: The whole run's budget (the issue's): the step limits add up to it.
BUDGET_S = 480
DEFAULT_JSON = "benchmarks/results/gpu_check.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="check the plan (arguments parsed), train nothing")
    parser.add_argument("--only", nargs="+", choices=list(STEPS), default=list(STEPS), help="run these steps")
    parser.add_argument("--json", default=DEFAULT_JSON, help="(default: %(default)s)")
    return parser.parse_args(argv)


def visible_gpus() -> list[str]:
    """The GPUs TensorFlow sees (imports TensorFlow)."""
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]


def check_arguments(module: str, arguments: list[str]) -> dict:
    """Parses ``arguments`` (with ``--json``) by the script's own ``parse_args``: a ``SystemExit`` is a broken plan."""
    return vars(importlib.import_module(f"benchmarks.{module}").parse_args([*arguments, "--json", "x.json"]))


def run_step(name: str, module: str, arguments: list[str], limit_s: int, work_dir: str) -> dict:
    """Runs one benchmark in its own process; its JSON object, or why it failed."""
    out = os.path.join(work_dir, f"{name}.json")
    command = [sys.executable, "-m", f"benchmarks.{module}", *arguments, "--json", out]
    started = time.time()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "why": f"over its {limit_s}s limit", "command": command}
    seconds = round(time.time() - started, 1)
    if done.returncode != 0 or not os.path.exists(out):
        return {"ok": False, "why": f"exit {done.returncode}: {done.stderr.strip()[-1500:]}", "command": command,
                "seconds": seconds}
    with open(out) as f:
        return {"ok": True, "seconds": seconds, "command": command, "result": json.load(f)}


def headline(name: str, step: dict) -> str:
    """One line of the summary table for a finished step."""
    if not step.get("ok"):
        return step.get("why", "planned")
    r = step["result"]
    if name == "throughput":
        kdet = r["kdet_train"]
        return (f"{kdet['steps_per_s']:.2f} steps/s, {kdet['steps_per_s'] * r['global_batch']:.1f} images/s on "
                f"{r['replicas']} replica(s), {r['mixed_precision']}; loop / bare fit {r['loop_speed_ratio']:.2f}x")
    if name == "cascade_speed":
        ratios = {k: v for k, v in r.get("ratios", {}).items() if isinstance(v, (int, float))}
        return ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) or "see the JSON"
    step_costs = r.get("step", {})
    overhead = step_costs.get("overhead") if isinstance(step_costs, dict) else None
    return f"AP-loss step overhead {overhead:.1%}" if isinstance(overhead, float) else "see the JSON"


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = {"dry_run": args.dry_run, "python": platform.python_version(), "budget_s": BUDGET_S, "steps": {}}
    gpus = visible_gpus()
    report["gpus"] = gpus
    if not gpus and not args.dry_run:
        raise SystemExit("gpu_check: no GPU is visible to TensorFlow; run it on the GPU machine, or --dry-run to "
                         "check the plan here")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="kdet_gpu_check_") as work_dir:
        for name in args.only:
            module, arguments, limit_s = STEPS[name]
            if args.dry_run:
                check_arguments(module, arguments)
                report["steps"][name] = {"ok": None, "command": ["python", "-m", f"benchmarks.{module}", *arguments],
                                         "limit_s": limit_s}
            else:
                report["steps"][name] = run_step(name, module, arguments, limit_s, work_dir)
            print(f"{name:14} {headline(name, report['steps'][name])}", flush=True)
    report["seconds"] = round(time.time() - started, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "steps"}))
    print(f"wrote {args.json} ({report['seconds']}s{', dry run' if args.dry_run else ''})")
    return report


if __name__ == "__main__":
    main()
