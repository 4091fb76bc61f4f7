"""Face cascade test pipeline: per-step milliseconds on one core and recall / AP50 at several test-time settings.

Runs the face benchmark's trained target cascade (``--weights-dir``, the
cached ``cascade_joint_from_separate_seed0``; nothing is trained here) at
each named test-time setting of :data:`SETTINGS` (``FaceCascade`` keyword
overrides of the trained config at the benchmark's test thresholds:
``before`` is the benchmark's pipeline before this profile, ``benchmark``
its current one, ``kdet.face.cascade.VALIDATED_TEST_SETTINGS``) and reports, per
setting:

* accuracy on ``--split`` (``validation`` by default: choose settings there,
  report the chosen one on ``test``): AP50, recall and precision at the
  operating point on faces >= 20 px (``face_benchmark.evaluate``);
* windows per image reaching x12-x24 and x12-x24-x48, and detections;
* the milliseconds of each step of ``kdet.face.stages.detect_steps`` (pyramid,
  x12 + its budget, x12-x24 + its budget, x12-x24-x48, final NMS): each
  prefix of the steps is traced as its own graph and timed on every frame, a
  step's time is the median over frames of the difference of consecutive
  prefixes (and each graph's trace count is recorded: 1 is no retracing);
* the whole call as the face benchmark times it (``kdet_detector``: uint8
  frame in, boxes out, one frozen graph), median wall and CPU ms; the steps' prefixes are not
  frozen (tf.function graphs), so they add up to more than the whole call.

Timing follows the face benchmark's one-core method: this process pins
itself to one CPU before TensorFlow starts (``face_peers.limit_cores``),
one intra-op and one inter-op thread, warm-up frames, then the median over
``--frames`` frames of the split, each frame's time the fastest of
``--repeats`` runs (interleaved over the graphs, so load changes hit all). ``--mtcnn`` times MTCNN in the same run
through the benchmark's own latency worker (a subprocess on the same CPU)
before and after the settings, so the speed ratio compares like with like.
On a shared machine wall time includes waiting for the CPU: CPU time
(``time.process_time``) is reported beside it, and the load average.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.face_speed_profile --mtcnn               # every setting, validation
    .venv/bin/python -m benchmarks.face_speed_profile --settings before benchmark --mtcnn
    .venv/bin/python -m benchmarks.face_speed_profile --split test --settings before benchmark --mtcnn
    .venv/bin/python -m benchmarks.face_speed_profile --extra '{"mine": {"stage2_max_boxes": 16}}'
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import worker_command  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import face_benchmark  # noqa: E402  (numpy only at import)
from benchmarks import face_peers  # noqa: E402

STEPS = ("pyramid", "x12", "x24", "x48", "nms")
#: The face benchmark's cascade test pipeline before this profile (besides its test thresholds).
BEFORE = {"test_thresholds": [0.05, 0.001, 0.5], "pyramid": "antialias", "crop_method": "bilinear",
          "compute_dtype": "float32", "stage1_max_boxes": 300, "stage2_max_boxes": 60, "stage1_nms_iou": None,
          "stage2_nms_iou": None}
_BF16 = "bfloat16" if face_benchmark.cpu_has_bfloat16() else "float32"
#: The previous choice (octave pyramid), for comparison.
OCTAVE = {"test_thresholds": [0.1, 0.001, 0.5], "pyramid": "octave", "crop_method": "nearest",
          "compute_dtype": _BF16, "stage1_max_boxes": 300, "stage1_nms_iou": 0.8, "stage2_max_boxes": 48,
          "stage2_nms_iou": 0.7}
#: Test-time settings: FaceCascade overrides of the trained config (at the benchmark's test thresholds unless
#: they say otherwise).
SETTINGS = {
    "before": BEFORE,
    "bfloat16": {**BEFORE, "compute_dtype": _BF16},
    "octave_nearest": {**BEFORE, "pyramid": "octave", "crop_method": "nearest"},
    "octave_nearest_bf16": {**BEFORE, "pyramid": "octave", "crop_method": "nearest", "compute_dtype": _BF16},
    "octave_budgets": OCTAVE,
    "area_budgets": {**OCTAVE, "pyramid": "area"},
    "benchmark": {**face_benchmark.cascade_test_config(), "compute_dtype": _BF16},  # at the benchmark's thresholds
    "benchmark_fast_thresholds": {**face_benchmark.cascade_test_config(), "compute_dtype": _BF16,
                                  "test_thresholds": [0.5, 0.5, 0.7]},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="validation", choices=("validation", "test"))
    parser.add_argument("--images", type=int, default=200, help="images of --split for the accuracy")
    parser.add_argument("--frames", type=int, default=20, help="timed frames of --split per setting")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="runs per frame; the fastest counts")
    parser.add_argument("--settings", nargs="+", default=None, help=f"names of {sorted(SETTINGS)} (default all)")
    parser.add_argument("--extra", default=None, help="JSON {name: {FaceCascade overrides}} added to the settings")
    parser.add_argument("--no-steps", action="store_true", help="time the whole call only")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--mtcnn", action="store_true", help="time MTCNN (benchmark latency worker) in this run")
    parser.add_argument("--target", default="cascade_joint_from_separate")
    parser.add_argument("--weights-dir", default="benchmarks/results/face_benchmark")
    parser.add_argument("--json", default="benchmarks/results/face_speed_profile.json")
    args = parser.parse_args(argv)
    args.all_settings = {**SETTINGS, **(json.loads(args.extra) if args.extra else {})}
    args.settings = args.settings or list(args.all_settings)
    unknown = [s for s in args.settings if s not in args.all_settings]
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {sorted(args.all_settings)}")
    return args


def load_model(args, overrides: dict):
    """The cached target cascade: its trained config, the benchmark's test thresholds, then ``overrides``."""
    store = face_benchmark.Store(args.weights_dir)
    record = store.read(args.target, 0)
    if record is None:
        raise SystemExit(f"no trained {args.target} in {args.weights_dir}: run benchmarks/face_benchmark.py first")
    thresholds = face_benchmark.parse_args([]).cascade_test_thresholds
    config = face_benchmark.with_settings(record["config"], {"test_thresholds": list(thresholds), **overrides})
    model = face_benchmark.build_model("cascade", config)
    model.load_weights(store.paths(args.target, 0)[0])
    return model, config


def step_graphs(model):
    """``{step: graph(uint8 [1, 480, 640, 3]) -> that step's outputs}`` over detect_steps' prefixes."""
    import tensorflow as tf

    from kdet.face import stages

    spec = [tf.TensorSpec([1, *face_benchmark.VGA, 3], tf.uint8)]

    def prefix(stop):
        def run(images):
            for name, outputs in stages.detect_steps(model, images):
                if name == stop:
                    return outputs
        return tf.function(run, input_signature=spec)

    return {name: prefix(name) for name in STEPS}


def counts_graph(model):
    """graph(images) -> windows passed on after x12, x12-x24, x12-x24-x48 and detections."""
    import tensorflow as tf

    from kdet.face import stages

    @tf.function(input_signature=[tf.TensorSpec([1, *face_benchmark.VGA, 3], tf.uint8)])
    def counts(images):
        out = {}
        for name, outputs in stages.detect_steps(model, images):
            if name == "nms":
                out[name] = outputs["num_detections"][0]
            elif name != "pyramid":
                out[name] = tf.reduce_sum(tf.cast(outputs["scores"] > 0, tf.int32))
        return out

    return counts


def _fetch(outputs):
    import tensorflow as tf

    for t in tf.nest.flatten(outputs):
        t.numpy()


def time_calls(calls: dict, frames, *, warmup: int, repeats: int) -> dict:
    """``{name: (wall ms per frame, CPU ms per frame)}`` of each ``calls[name](frame)``.

    Interleaved (every call on a frame, then the next frame), so that a change
    of machine load falls on all of them alike; each frame's figure is the
    fastest of ``repeats`` runs (the least disturbed; the inputs are identical).
    """
    for name, call in calls.items():
        for i in range(warmup):
            call(frames[i % len(frames)])
    out = {name: ([], []) for name in calls}
    for frame in frames:
        for name, call in calls.items():
            best = (float("inf"), float("inf"))
            for _ in range(repeats):
                w, c = time.perf_counter(), time.process_time()
                call(frame)
                best = min(best, (1000 * (time.perf_counter() - w), 1000 * (time.process_time() - c)))
            out[name][0].append(best[0])
            out[name][1].append(best[1])
    return out


def profile_setting(args, name: str, frames, examples) -> dict:
    import tensorflow as tf

    model, config = load_model(args, args.all_settings[name])
    result = {"overrides": args.all_settings[name], "config": {k: v for k, v in config.items() if k != "training"}}
    detect = face_benchmark.kdet_detector("cascade", model, 0.0)
    calls = {"total": detect}
    graphs = {} if args.no_steps else step_graphs(model)
    calls.update({step: (lambda f, g=graph: _fetch(g(tf.constant(f[None])))) for step, graph in graphs.items()})
    load = os.getloadavg()
    timed = time_calls(calls, frames, warmup=args.warmup, repeats=args.repeats)
    wall, cpu = timed["total"]
    result["total"] = {"wall_ms": float(np.median(wall)), "cpu_ms": float(np.median(cpu)),
                       "wall_p90_ms": float(np.percentile(wall, 90))}
    if graphs:
        result["steps"], previous = {}, (np.zeros(len(frames)), np.zeros(len(frames)))
        for step in STEPS:  # a step: the per-frame difference of consecutive prefixes, median over frames
            now = tuple(np.array(v) for v in timed[step])
            result["steps"][step] = {"wall_ms": float(np.median(now[0] - previous[0])),
                                     "cpu_ms": float(np.median(now[1] - previous[1]))}
            previous = now
        # retracing check: one concrete graph per prefix after every frame of this setting
        result["traces"] = {step: graph.experimental_get_tracing_count() for step, graph in graphs.items()}
    counts = counts_graph(model)
    per_frame = [{k: int(v) for k, v in counts(tf.constant(f[None])).items()} for f in frames]
    result["windows"] = {k: float(np.mean([p[k] for p in per_frame])) for k in ("x12", "x24", "x48", "nms")}
    result["loadavg"] = [round(v, 2) for v in load] + [round(v, 2) for v in os.getloadavg()]
    if not args.no_accuracy:
        metrics, _ = face_benchmark.evaluate(detect, examples)
        result["metrics"] = {"min20": metrics["min20"], "all": metrics["all"]}
    return result


def time_mtcnn(args) -> dict | None:
    """MTCNN through the face benchmark's latency worker (a subprocess pinned to this process's CPU)."""
    spec = {"name": "mtcnn", "kind": "peer", "cores": 1, "frames": args.frames, "warmup": args.warmup,
            "rcnn_scale": 0.5, "peer_cache_dir": str(face_peers.DEFAULT_CACHE_DIR)}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    load = os.getloadavg()
    command, env = worker_command("benchmarks.face_benchmark", "--latency-worker", json.dumps(spec), env=env)
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(face_benchmark.WORKER_TAG)]
    if proc.returncode != 0 or not lines:
        print(f"MTCNN latency worker failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
        return None
    out = json.loads(lines[-1][len(face_benchmark.WORKER_TAG):])
    out["loadavg"] = [round(v, 2) for v in load] + [round(v, 2) for v in os.getloadavg()]
    return out


def format_table(report: dict) -> str:
    mtcnn = report.get("mtcnn_ms")
    header = ["setting", "pyramid", "x12", "x24", "x48", "nms", "total wall", "total cpu", "FPS (cpu)",
              "x MTCNN (wall)", "win x24", "win x48", "AP50 >=20", "recall >=20", "prec >=20"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, r in report["settings"].items():
        steps = r.get("steps", {})
        cells = [name] + [f"{steps[s]['cpu_ms']:.1f}" if s in steps else "–" for s in STEPS]
        total = r["total"]
        cells += [f"{total['wall_ms']:.1f}", f"{total['cpu_ms']:.1f}", f"{1000 / total['cpu_ms']:.1f}",
                  f"{mtcnn['wall_ms'] / total['wall_ms']:.1f}x" if mtcnn else "–",
                  f"{r['windows']['x12']:.0f}", f"{r['windows']['x24']:.0f}"]
        m = r.get("metrics", {}).get("min20")
        cells += [f"{100 * m[k]:.1f}" for k in ("AP50", "recall_at_op", "precision_at_op")] if m else ["–"] * 3
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nsteps: median CPU ms of each step on one core; win x24 / x48: windows per image entering x12-x24 / "
            f"x12-x24-x48; accuracy on {report['args']['images']} {report['args']['split']} images")
    if mtcnn:
        note += f"; MTCNN {mtcnn['wall_ms']:.1f} ms wall ({mtcnn['cpu_ms']:.1f} ms CPU), same run"
    return "\n".join(lines) + note


def main(argv=None) -> dict:
    args = parse_args(argv)
    cpus = face_peers.limit_cores(1)  # before TensorFlow sizes its thread pools, like the latency worker
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from kdet.data.faces import face_examples

    examples = [] if args.no_accuracy else list(face_examples(args.split, num_images=args.images))
    frames = [e["image"] for e in (examples[:args.frames] if examples else
                                   face_examples(args.split, num_images=args.frames))]
    report = {"args": {k: v for k, v in vars(args).items() if k != "all_settings"}, "cpus": cpus,
              "loadavg_start": [round(v, 2) for v in os.getloadavg()], "settings": {}}
    mtcnn_runs = [time_mtcnn(args)] if args.mtcnn else []
    for name in args.settings:
        started = time.perf_counter()
        report["settings"][name] = profile_setting(args, name, frames, examples)
        r = report["settings"][name]
        m = r.get("metrics", {}).get("min20", {})
        print(f"{name:24s} total {r['total']['wall_ms']:6.1f} ms wall {r['total']['cpu_ms']:6.1f} ms cpu  "
              f"windows {r['windows']}  AP50 {100 * m.get('AP50', float('nan')):.1f} "
              f"recall {100 * m.get('recall_at_op', float('nan')):.1f}  ({time.perf_counter() - started:.0f}s)",
              flush=True)
    if args.mtcnn:
        mtcnn_runs.append(time_mtcnn(args))
        runs = [r for r in mtcnn_runs if r]
        if runs:
            report["mtcnn_runs"] = runs
            report["mtcnn_ms"] = {"wall_ms": min(r["median_ms"] for r in runs),
                                  "cpu_ms": min(r["median_cpu_ms"] for r in runs)}
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    table = format_table(report)
    report["table"] = table
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print("\n" + table)
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
