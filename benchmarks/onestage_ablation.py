"""The one-stage papers' tables on the embedded synthetic shapes: AP-Loss's Table 2 and ConRetinaNet's Table 3.

For each seed, RetinaNet variants (the demo's small RetinaNet: tiny backbone,
FPN P3-P7, 9 anchors, 128-px images) are trained with ``model.fit`` on the
synthetic training split with the same data, schedule (Adam, warm-up and
cosine) and step count, all starting from one tiny backbone pretrained as a
RetinaNet on other synthetic images with frozen BatchNorm (see
``ablation_common.py``), and evaluated with pycocotools on the validation
split:

* **AP-Loss Table 2 form** (AP, AP50, AP75): the classification loss is the
  focal loss, the AUC-loss (Eq. 7) or the AP-loss (delta 1, interpolated AP,
  every anchor-class pair of the batch ranked together).
* **ConRetinaNet Table 3 form** (AP, AP50..AP90), rows ``#cls / #reg``:
  1 / 1 (the plain RetinaNet, the same runs as "focal"), 2 / 1, 2 / 2* (the
  2 / 2 model regressing once at test), 2 / 2, 3 / 2; refined terms at
  (0.5, 0.6) and (0.6, 0.7), alpha 1.

Claims to reproduce: AP-loss beats the focal and AUC losses; consistent
optimization beats the plain RetinaNet at every IoU threshold. Each finished
(seed, variant) run is saved to ``--out-dir`` and skipped on restart.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.onestage_ablation                 # 3 seeds x 6 variants
    .venv/bin/python -m benchmarks.onestage_ablation --quick         # smoke run
    .venv/bin/python -m benchmarks.onestage_ablation --detectors focal ap --seeds 0
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import ablation_common as common  # noqa: E402

from kdet.demo import demo_model_config  # noqa: E402
from kdet.detectors.retinanet import RetinaNet  # noqa: E402
from kdet.specs import override  # noqa: E402

AP_METRICS = ("AP", "AP50", "AP75")
CON_METRICS = ("AP", "AP50", "AP60", "AP70", "AP80", "AP90")

# Variant -> RetinaNet keyword arguments on top of the shared configuration.
VARIANTS = {
    "focal": {},
    "auc": dict(classification_loss="auc"),
    "ap": dict(classification_loss="ap"),
    "con_2_1": dict(consistent=dict(cls_terms=2, reg_terms=1)),
    "con_2_2": dict(consistent=dict(cls_terms=2, reg_terms=2)),
    "con_3_2": dict(consistent=dict(cls_terms=3, reg_terms=2)),
}

AP_TABLE = (
    ("Focal loss", "focal", {}),
    ("AUC-loss", "auc", {}),
    ("AP-loss", "ap", {}),
)
CON_TABLE = (
    ("1 / 1 (RetinaNet)", "focal", {}),
    ("2 / 1", "con_2_1", {}),
    ("2 / 2*", "con_2_2", {"regressions": 1}),
    ("2 / 2", "con_2_2", {}),
    ("3 / 2", "con_3_2", {}),
)


def model_config(variant: str, num_classes: int, backbone_weights: str | None = None) -> dict:
    """The demo's RetinaNet (anchors from 16 px, 2-conv 64-wide heads) on the pretrained frozen-BN backbone."""
    return override(demo_model_config(num_classes),
                    dict(backbone=dict(weights=backbone_weights, freeze_batchnorm=True), **VARIANTS[variant]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(parser, out_dir="benchmarks/results/onestage_ablation",
                           plot="docs/onestage_ablation.png", variants=VARIANTS)
    return common.finish_args(parser.parse_args(argv))


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.time()

    def train(variant, seed, backbone_weights):
        return common.train_and_test(
            variant, seed, args, rows=AP_TABLE + CON_TABLE, metrics=CON_METRICS + ("AP75",),
            build=lambda num_classes: RetinaNet(**model_config(variant, num_classes, backbone_weights)))

    runs = common.run_all(args, train)
    t_ap, t_con = common.table(AP_TABLE, runs, AP_METRICS), common.table(CON_TABLE, runs, CON_METRICS)
    extra = {
        "ap_minus_focal": common.difference(t_ap, "AP-loss", "Focal loss", AP_METRICS),
        "ap_minus_auc": common.difference(t_ap, "AP-loss", "AUC-loss", AP_METRICS),
        "consistent_2_2_minus_plain": common.difference(t_con, "2 / 2", "1 / 1 (RetinaNet)", CON_METRICS),
    }
    out = common.report(args, runs, {"aploss_table2": t_ap, "consistent_table3": t_con}, started, **extra)
    seeds = len(args.seeds)
    print()
    print(common.format_table(f"AP-Loss Table 2 form (mean ± std, {seeds} seeds)", t_ap, AP_METRICS))
    print()
    print(common.format_table(f"ConRetinaNet Table 3 form: #cls / #reg (mean ± std, {seeds} seeds)", t_con,
                              CON_METRICS))
    if args.plot and t_con:
        print(f"\nwrote {common.plot([('ConRetinaNet #cls / #reg', t_con)], args.plot, CON_METRICS)}")
    for name, diff in extra.items():
        if diff:
            print(f"{name}: " + ", ".join(f"{m} {v:+.1f}" for m, v in diff.items()))
    return out


if __name__ == "__main__":
    main()
