"""The Cascade R-CNN paper's Table 1 and Table 2, reproduced on the embedded synthetic shapes.

For each seed, three detectors of the same family are trained with
``model.fit`` on the synthetic training split (tiny CPU backbone, FPN P2-P6,
the same RPN, data, schedule and step count for all) and evaluated with
pycocotools on the validation split. As the paper starts from an ImageNet
backbone with frozen BatchNorm, all start from one tiny backbone pretrained
once as a RetinaNet on *other* synthetic images (seed 100; cached in
``--out-dir``), with frozen BatchNorm. (From scratch, with batch statistics,
the RoI heads barely learn in this budget and the inference-mode statistics
disagree with the training-mode ones: AP 0.2 after 1200 steps.)

* **Faster R-CNN** (the paper's FPN+ baseline): one RoI stage at IoU 0.5;
* **Iterative BBox**: the *same trained* Faster R-CNN with its head applied
  three times at inference (``iterations=3``);
* **Integral loss**: one stage, three classifiers at U = {0.5, 0.6, 0.7}
  sharing one regressor, their probabilities averaged;
* **Cascade R-CNN**: three stages at (0.5, 0.6, 0.7), per-stage box weights,
  probability ensemble "1~3".

Table 1 prints AP, AP50, AP60, AP70, AP80 and AP90 of the four (mean +- sample
std over the seeds). Table 2 tests the trained cascade at stage 1, 2 or 3 alone
and with the ensembles "1~2" and "1~3", next to the baseline. The paper's claim
is that the cascade beats the baseline on AP, with the largest gains at AP80
and AP90.

Every finished (seed, detector) run is saved to ``--out-dir`` as JSON and
skipped when the script is started again, so a killed run resumes where it
stopped (see ``ablation_common.py``). Prints one JSON object (everything),
the two tables, and writes ``docs/cascade_ablation.png``.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.cascade_ablation                  # 3 seeds (see README for the time)
    .venv/bin/python -m benchmarks.cascade_ablation --quick          # smoke run, ~2 min
    .venv/bin/python -m benchmarks.cascade_ablation --seeds 0 --epochs 4
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import ablation_common as common  # noqa: E402

from kdet.detectors.cascade_rcnn import CascadeRCNN  # noqa: E402
from kdet.presets import small_rcnn  # noqa: E402
from kdet.rcnn_specs import CascadeSpec  # noqa: E402
from kdet.specs import override  # noqa: E402

METRICS = ("AP", "AP50", "AP60", "AP70", "AP80", "AP90")
BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))

# Detector -> the constructor data that makes it (everything else is shared).
DETECTORS = {
    "faster_rcnn": CascadeSpec(ious=(0.5,), box_weights=BOX_WEIGHTS[:1], loss_weights=(1.0,)),
    "integral_loss": CascadeSpec(ious=(0.5,), box_weights=BOX_WEIGHTS[:1], loss_weights=(1.0,),
                                 integral_ious=(0.5, 0.6, 0.7)),
    "cascade": CascadeSpec(ious=(0.5, 0.6, 0.7), box_weights=BOX_WEIGHTS, loss_weights=(1.0, 0.5, 0.25)),
}

# Table rows: (label, detector trained, detect() options).
TABLE1 = (
    ("Faster R-CNN (FPN+)", "faster_rcnn", dict(stages=1, ensemble=False, iterations=1)),
    ("Iterative BBox", "faster_rcnn", dict(stages=1, ensemble=False, iterations=3)),
    ("Integral Loss", "integral_loss", dict(stages=1, ensemble=True, iterations=1)),
    ("Cascade R-CNN", "cascade", dict(stages=3, ensemble=True, iterations=1)),
)
TABLE2 = (
    ("FPN+ baseline", "faster_rcnn", dict(stages=1, ensemble=False, iterations=1)),
    ("stage 1", "cascade", dict(stages=1, ensemble=False, iterations=1)),
    ("stage 2", "cascade", dict(stages=2, ensemble=False, iterations=1)),
    ("stage 3", "cascade", dict(stages=3, ensemble=False, iterations=1)),
    ("stages 1~2", "cascade", dict(stages=2, ensemble=True, iterations=1)),
    ("stages 1~3", "cascade", dict(stages=3, ensemble=True, iterations=1)),
)


def model_config(detector: str, num_classes: int, backbone_weights: str | None = None) -> dict:
    """:func:`kdet.presets.small_rcnn` at 128 px on the pretrained tiny backbone (frozen BatchNorm), plus the stages.

    RPN anchors 16..256 px on P2..P6 (the synthetic objects are 10..115
    px); RoIs pooled from P4 at 56 px (224 scaled like the images, so the
    objects spread over P2..P5); 128 RoIs per image at 25% positives (the
    images hold at most 8 objects); 256-wide box heads.
    """
    small = override(small_rcnn(common.IMAGE_SIZE, freeze_batchnorm=True),
                     dict(rpn=dict(backbone=dict(name="tiny", weights=backbone_weights))))
    return dict(num_classes=num_classes, **small, stages=DETECTORS[detector])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser, out_dir="benchmarks/results/cascade_ablation", plot="docs/cascade_ablation.png",
                           variants=DETECTORS)
    return common.finish_args(parser.parse_args(argv))


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.time()

    def train(detector, seed, backbone_weights):
        return common.train_and_test(
            detector, seed, args, rows=TABLE1 + TABLE2, metrics=METRICS,
            build=lambda num_classes: CascadeRCNN(**model_config(detector, num_classes, backbone_weights)))

    runs = common.run_all(args, train)
    t1, t2 = common.table(TABLE1, runs, METRICS), common.table(TABLE2, runs, METRICS)
    gain = common.difference(t1, "Cascade R-CNN", "Faster R-CNN (FPN+)", METRICS)
    out = common.report(args, runs, {"table1": t1, "table2": t2}, started, cascade_minus_baseline=gain)
    seeds = len(args.seeds)
    print()
    print(common.format_table(
        f"Table 1 form: COCO AP on the synthetic validation split (mean ± std, {seeds} seeds)", t1, METRICS))
    print()
    print(common.format_table("Table 2 form: the cascade tested at each stage and with the stage ensembles", t2,
                              METRICS))
    if args.plot and t1:
        print(f"\nwrote {common.plot([('Table 1: detectors', t1), ('Table 2: cascade tested at', t2)], args.plot, METRICS)}")
    if gain:
        print("\ncascade - baseline: " + ", ".join(f"{m} {v:+.1f}" for m, v in gain.items()))
    return out


if __name__ == "__main__":
    main()
