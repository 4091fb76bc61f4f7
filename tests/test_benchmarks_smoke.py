"""The paper-table benchmarks run end to end in --quick mode (a few steps), so they cannot rot silently.

Their ``--quick`` runs start from the tiny backbone pretrained for 8 steps; it is pretrained once here
(:func:`pretrained_8`, ``kdet.training.pretrain`` with the ``--backbone-weights shapes`` checks) and
copied where each run caches it, instead of once per run (about 18 s of CI each).
"""

import os
import importlib
import shutil

import numpy as np
import pytest

QUICK_PRETRAIN_STEPS = 8  # the benchmarks' --quick pretraining


@pytest.fixture(scope="module")
def pretrained_8(tmp_path_factory):
    """The quick runs' pretrained tiny backbone, pretrained through ``--backbone-weights shapes``'s path."""
    from kdet.training import pretrain

    cache = tmp_path_factory.mktemp("kdet_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDET_CACHE", str(cache))
        patch.setattr(pretrain, "DEFAULT_STEPS", QUICK_PRETRAIN_STEPS)
        path = pretrain.resolve_backbone_weights(pretrain.SHAPES, verbose=0)
    assert path == str(cache / "pretrained" / f"pretrained_tiny_backbone_{QUICK_PRETRAIN_STEPS}.weights.h5")
    assert os.listdir(cache / "pretrained") == [os.path.basename(path)]  # no partial file left
    return path


def _cached_in(pretrained: str, folder) -> None:
    """Puts the pretrained backbone where a --quick run with ``--out-dir``/quick looks for it."""
    os.makedirs(folder, exist_ok=True)
    shutil.copy(pretrained, os.path.join(folder, os.path.basename(pretrained)))


def test_shapes_weights_are_pretrained_once_and_load_into_the_tiny_backbone(pretrained_8, tmp_path, monkeypatch,
                                                                            capsys):
    from kdet.backbones import build_backbone
    from kdet.training import pretrain

    monkeypatch.setenv("KDET_CACHE", str(tmp_path))
    monkeypatch.setattr(pretrain, "DEFAULT_STEPS", QUICK_PRETRAIN_STEPS)
    _cached_in(pretrained_8, tmp_path / "pretrained")
    path = str(tmp_path / "pretrained" / os.path.basename(pretrained_8))
    stamp = os.stat(path).st_mtime_ns
    assert pretrain.resolve_backbone_weights(pretrain.SHAPES, verbose=1) == path
    assert "computed before" in capsys.readouterr().out and os.stat(path).st_mtime_ns == stamp
    assert pretrain.resolve_backbone_weights("mine.weights.h5") == "mine.weights.h5"
    assert pretrain.resolve_backbone_weights(None) is None
    # two backbones built from the file are equal (two random initialisations are not): it loads
    first, second, fresh = (build_backbone("tiny", weights=path), build_backbone("tiny", weights=path),
                            build_backbone("tiny"))
    assert all(np.array_equal(a, b) for a, b in zip(first.get_weights(), second.get_weights()))
    assert any(not np.allclose(a, b) for a, b in zip(first.get_weights(), fresh.get_weights()))



@pytest.mark.slow
@pytest.mark.parametrize("script,detectors,tables", [
    # the cascade alone (the baseline's one-stage training is the unit tests'); two detectors and their
    # difference row are the one-stage ablation's
    ("cascade_ablation", ["cascade"], ("table1", "table2")),
    ("onestage_ablation", ["focal", "con_2_2"], ("aploss_table2", "consistent_table3")),
])
def test_ablation_quick_run_prints_its_tables(script, detectors, tables, pretrained_8, tmp_path, capsys):
    module = importlib.import_module(f"benchmarks.{script}")
    _cached_in(pretrained_8, tmp_path / "quick")
    report = module.main(["--quick", "--detectors", *detectors, "--out-dir", str(tmp_path),
                          "--json", str(tmp_path / "report.json")])
    assert all(report[t] for t in tables)
    assert (tmp_path / "report.json").exists()
    assert len(list(tmp_path.glob("quick/*_seed0.json"))) == len(detectors)
    assert os.path.exists(tmp_path / "quick" / f"{script}.png")
    out = capsys.readouterr().out
    assert "mean ± std" in out
    # A second invocation resumes: nothing is trained again.
    module.main(["--quick", "--detectors", *detectors, "--out-dir", str(tmp_path)])
    assert out.count("done before") == 0 and capsys.readouterr().out.count("done before") == len(detectors)


@pytest.mark.slow
def test_face_benchmark_quick_run_prints_table_and_verdicts(pretrained_8, tmp_path, capsys):
    """The kdet face detectors train, the available peers run (none is fetched), one core is timed; resumes.

    The RPN detector's 4-step alternating training is left out (about a minute of CI: its procedure is
    tests/face/test_rcnn.py's), so its claim reads n/a here.
    """
    from benchmarks import face_benchmark
    from benchmarks import face_peers

    # The mtcnn package's own row is left out (its latency worker is ~20 s of CI; the peer keeps its own
    # tests, tests/face/test_peers.py, and tests/face/test_mtcnn.py compares kdet's MTCNN with it).
    peers = [p for p, why in face_peers.available_peers().items() if why is None and p != "mtcnn"]
    kdet = [name for name in face_benchmark.KDET if name != "rcnn_alternating"]
    _cached_in(pretrained_8, tmp_path / "quick")
    report = face_benchmark.main(["--quick", "--out-dir", str(tmp_path), "--cores", "1",
                                  "--detectors", *kdet, *face_benchmark.CONVERTED, *peers])
    quick = tmp_path / "quick"
    assert [n for n in report["results"] if n != "cascade_fast"] == kdet + ["mtcnn_kdet"] + peers
    for name in kdet:
        assert (quick / f"{name}_seed0.weights.h5").exists() and (quick / f"{name}_seed0.json").exists()
        assert 0.0 <= report["summary"][name]["min20/AP50"]["mean"] <= 1.0
    assert list(report["results"])[3] == "cascade_fast"  # the target cascade at FaceCascade's thresholds
    timed = [report["args"]["target_cascade"], "mtcnn_kdet"] + peers  # --quick times one of each cascade kind
    # every detector is also scored on the real photos (the two installed ones in a quick run)
    real = report["summary"]["mtcnn_kdet"]
    assert real["real/faces"]["mean"] == 2 and real["real/found"]["mean"] == 2, real
    assert sorted(report["latency"]) == sorted(timed)
    assert all(report["latency"][n]["1"]["ms"] > 0 for n in timed)
    assert len(report["claims"]) == 9
    assert (quick / "face_benchmark.json").exists() and (quick / "face_benchmark.png").exists()
    out = capsys.readouterr().out
    assert "| kdet cascade, joint from separate |" in out and "FPS 1 core" in out and "REAL found" in out
    assert "| MTCNN weights in kdet (from_mtcnn) |" in out and "2 of 2" in out
    assert out.count("PASS  ") + out.count("FAIL  ") + out.count("n/a   ") == 9
    assert "n/a   joint > separate, RPN detector" in out
    # A second invocation reuses the trained weights (and may skip the latency).
    face_benchmark.main(["--quick", "--out-dir", str(tmp_path), "--no-latency", "--plot", "",
                         "--detectors", "cascade_joint_from_separate"])
    out = capsys.readouterr().out
    assert "== training" not in out and out.count("trained before") == 2  # + the separate cascade it starts from
    _recipe_trains_the_benchmarks_cascade(quick / "cascade_joint_from_separate_seed0.weights.h5", tmp_path, capsys)


def _h5_arrays(path) -> dict:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: out.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return out


class _Killed(BaseException):
    """A kill, as the procedure sees it: it stops inside a phase."""


def _recipe_trains_the_benchmarks_cascade(bench_weights, tmp_path, capsys):
    """``kdet train face_cascade:embedded`` on the quick run's 8 images for its 1 epoch: the same weights,
    even when the run is killed in its third phase and rerun.

    One procedure (kdet.face.procedures): the recipe and the benchmark mine the same samples and train
    the same steps, so the weights agree to float rounding. The rerun reads the two finished phases
    (the sliding-window samples, the bootstrapping x12) back and trains the rest.
    """

    from kdet import cli
    from kdet.training import phases

    model_dir = tmp_path / "recipe"
    command = ["train", "face_cascade:embedded", "--data", "embedded:faces:train[:8]", "--val-data",
               "embedded:faces:validation[:2]", "--epochs", "1", "--model-dir", str(model_dir)]
    run = phases.PhaseLog.run

    def killed_in_phase_3(log, kind, compute, save, load):
        if log.count == 2:
            raise _Killed(kind)
        return run(log, kind, compute, save, load)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(_Killed, match="hard-samples"):
        patch.setattr(phases.PhaseLog, "run", killed_in_phase_3)
        cli.main(command)
    assert sorted(os.listdir(model_dir / "backup" / "phases")) == ["001-samples", "002-fit", "fingerprint.json"]
    capsys.readouterr()
    assert cli.main(command) == 0
    out = capsys.readouterr().out
    assert "face cascade:" in out and out.count("finished before the run stopped") == 2
    assert not (model_dir / "backup" / "phases").exists()  # the model directory is complete: phases removed
    bench, recipe = _h5_arrays(bench_weights), _h5_arrays(model_dir / "model.weights.h5")
    assert len(bench) == len(recipe) > 0
    for (name, want), got in zip(sorted(bench.items()), [recipe[k] for k in sorted(recipe)]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_tflite_latency_quick_run_prints_its_table(tmp_path, capsys):
    """Shapes model trained by a tiny demo, converted float32/int8, evaluated, timed (the face cascade's TFLite
    forms are tested in tests/serving/test_tflite.py and by face_mobile's smoke run)."""
    from benchmarks import tflite_latency

    result = tflite_latency.main(["--quick", "--work-dir", str(tmp_path), "--shapes-model-dir",
                                  str(tmp_path / "shapes")])
    assert set(result["accuracy"]) == {"shapes_keras", "shapes_float32", "shapes_int8"}
    assert set(result["latency_ms"]) == {"shapes_int8"}
    # the float32 file and the Keras model agree on the validation images
    assert abs(result["accuracy"]["shapes_float32"]["AP"] - result["accuracy"]["shapes_keras"]["AP"]) < 1e-4
    assert "| RetinaNet tiny, shapes 128x128 | int8 |" in capsys.readouterr().out


def test_face_mobile_quick_run_prints_its_table(tmp_path, capsys):
    """MTCNN's weights as exported detect what Keras detects, and the file's GPU view is reported (a smoke run:
    the static forms are tests/face/test_static_export.py's, the latency workers tflite_latency's)."""
    pytest.importorskip("mtcnn", reason="the mtcnn package (pip install -e .[test]) holds MTCNN's weights")
    from benchmarks import face_mobile

    result = face_mobile.main(["--quick", "--work-dir", str(tmp_path)])
    accuracy = result["accuracy"]
    assert set(accuracy) == {"keras", "survivors_float32"}
    assert accuracy["survivors_float32"] == accuracy["keras"]  # the exported file detects what Keras detects
    assert result["gpu"]["survivors_float32"]["dynamic_tensors"] > 0  # the survivors' form: not for a GPU
    assert result["latency_ms"] == {} and result["cpu_flags"]
    assert "| survivors_float32 |" in capsys.readouterr().out


def test_face_benchmark_cache_keys_follow_the_training_options():
    """Weights trained with other bootstrap / fine-tuning options are never reused; defaults add no key."""
    from benchmarks import face_benchmark

    args = face_benchmark.parse_args([])
    key = face_benchmark.training_key("cascade_joint", 0, args)
    assert key["bootstrap"]["hard_samples"] == "all"  # --bootstrap-x12 is the default
    old = face_benchmark.training_key("cascade_joint", 0, face_benchmark.parse_args(["--no-bootstrap-x12"]))
    assert old["bootstrap"]["hard_samples"] == "later_only" and old != key
    assert "hard_samples" not in face_benchmark.training_key(
        "cascade_separate", 0, face_benchmark.parse_args(["--no-bootstrap-x12"]))["bootstrap"]
    target = "cascade_joint_from_separate"
    assert "from_separate_epochs" not in face_benchmark.training_key(target, 0, args)
    assert "from_separate_epochs" not in face_benchmark.training_key(
        target, 0, face_benchmark.parse_args(["--from-separate-epochs", "2"]))  # = E: the same training
    longer = face_benchmark.training_key(target, 0, face_benchmark.parse_args(["--from-separate-epochs", "4"]))
    assert longer["from_separate_epochs"] == 4
    assert "from_separate_epochs" not in face_benchmark.training_key(
        "cascade_joint", 0, face_benchmark.parse_args(["--from-separate-epochs", "4"]))


def test_face_speed_sweep_pass_is_tied_to_its_weights(tmp_path):
    """A cached pass names the weights file it ran; other (or retrained) weights give another identity."""
    from benchmarks import face_speed_sweep

    for name, payload in (("a", b"x"), ("b", b"yy")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cascade_joint_from_separate_seed0.weights.h5").write_bytes(payload)
    first = face_speed_sweep.weights_identity(face_speed_sweep.parse_args(["--weights-dir", str(tmp_path / "a")]))
    other = face_speed_sweep.weights_identity(face_speed_sweep.parse_args(["--weights-dir", str(tmp_path / "b")]))
    assert first != other and first.startswith(str(tmp_path / "a"))
    path = tmp_path / "a" / "cascade_joint_from_separate_seed0.weights.h5"
    os.utime(path, (1, 1))  # retrained: a new modification time
    assert face_speed_sweep.weights_identity(
        face_speed_sweep.parse_args(["--weights-dir", str(tmp_path / "a")])) != first


def test_tflite_latency_converts_again_after_retraining(tmp_path):
    """A cached conversion older than its weights (file or model directory) is stale; a newer one is reused."""
    from benchmarks import tflite_latency

    converted, weights, model_dir = tmp_path / "m.tflite", tmp_path / "w.weights.h5", tmp_path / "model"
    assert tflite_latency.is_stale(str(converted), str(weights))  # not converted yet
    model_dir.mkdir()
    for path in (weights, model_dir / "kdet_model.json", converted):
        path.write_bytes(b"x")
    for path, seconds in ((weights, 100), (model_dir / "kdet_model.json", 100), (converted, 200)):
        os.utime(path, (seconds, seconds))
    assert not tflite_latency.is_stale(str(converted), str(weights))
    assert not tflite_latency.is_stale(str(converted), str(model_dir))
    assert not tflite_latency.is_stale(str(converted))  # no source known: the file stands
    os.utime(weights, (300, 300))  # retrained
    (model_dir / "weights.h5").write_bytes(b"y")  # a newer file in the model directory
    assert tflite_latency.is_stale(str(converted), str(weights))
    assert tflite_latency.is_stale(str(converted), str(model_dir))


def test_gpu_check_dry_run_checks_its_plan_on_a_cpu(tmp_path, monkeypatch, capsys):
    """``benchmarks/gpu_check.py --dry-run``: every step's arguments parse by the script that runs them; no GPU here
    means a clear stop without --dry-run."""
    from benchmarks import gpu_check

    report = gpu_check.main(["--dry-run", "--json", str(tmp_path / "gpu.json")])
    assert report["dry_run"] is True and set(report["steps"]) == {"throughput", "cascade_speed", "aploss_cost"}
    assert sum(limit for _, _, limit in gpu_check.STEPS.values()) <= gpu_check.BUDGET_S == 480  # under 8 minutes
    throughput = report["steps"]["throughput"]["command"]
    assert "mixed_float16" in throughput and "cascade_rcnn_fpn" in throughput
    assert (tmp_path / "gpu.json").exists() and "dry run" in capsys.readouterr().out
    if not report["gpus"]:
        with pytest.raises(SystemExit, match="no GPU is visible"):
            gpu_check.main(["--json", str(tmp_path / "real.json")])
    broken = dict(gpu_check.STEPS, throughput=("train_throughput", ["--mixed-precision", "float8"], 60))
    monkeypatch.setattr(gpu_check, "STEPS", broken)
    with pytest.raises(SystemExit):  # argparse refuses the bad choice: the plan is checked, not just printed
        gpu_check.main(["--dry-run", "--only", "throughput", "--json", str(tmp_path / "bad.json")])
