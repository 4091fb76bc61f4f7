"""Joint fine-tuning from MTCNN's weights: what it does on the embedded (synthetic) set and on real photos.

The paper initialises the joint network from separately trained stages; here the stages are MTCNN's
published ones (``kdet.face.from_mtcnn``), with the cross-stage feature links (P-Net's feature into R-Net,
R-Net's into O-Net) at zero, so fine-tuning starts exactly at MTCNN (tests/face/test_mtcnn.py). The
procedure is ``kdet.face.procedures.CascadeTraining(start="mtcnn")``: the embedded training images
mined as for kdet's cascades (48-px windows, 5% faces, flips), MTCNN's P-Net bootstraps hard samples,
then the joint loss (Eq. 6, threshold controls 0.1 / 0.003) trains all three branches and the links.

For each learning rate and epoch count it reports, next to MTCNN-in-kdet before fine-tuning:
AP50 / recall at the operating point on faces >= 20 px of the embedded test split (**synthetic**), and
faces found / false positives / AFW AP on the real photos (``kdet.data.real_faces``, letterboxed to
640x480 as the face benchmark does). Fine-tuning that costs real faces is reported as such.

Fine-tuning moves the scores the stage thresholds cut (MTCNN's 0.6 / 0.7 / 0.8 were chosen for MTCNN's
own scores), so each model is also reported at the stage thresholds chosen for it on the embedded
*validation* split (``--val-images``; the highest AP50 on faces >= 20 px over ``--threshold-grid``,
ties to the higher thresholds, which are faster): MTCNN before fine-tuning gets the same search.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.face_mtcnn_finetune                        # ~15 min on 2 cores
    .venv/bin/python -m benchmarks.face_mtcnn_finetune --quick                # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import face_benchmark as fb  # noqa: E402

#: Stage thresholds searched on the validation split (MTCNN's own first in each list).
THRESHOLD_GRID = [[0.6, 0.3, 0.1], [0.7, 0.3, 0.1], [0.8, 0.5]]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2, help="joint epochs of each fine-tuning")
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[1e-4, 1e-3], help="Adam")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-images", type=int, default=60, help="embedded validation images the thresholds "
                                                                   "are chosen on (0: no threshold search)")
    parser.add_argument("--threshold-grid", type=json.loads, default=THRESHOLD_GRID, metavar="JSON",
                        help="candidate thresholds after each stage: [[x12...], [x24...], [x48...]]")
    parser.add_argument("--real-photos", choices=("fetch", "installed", "none"), default="fetch")
    parser.add_argument("--json", default="benchmarks/results/face_mtcnn_finetune.json")
    parser.add_argument("--quick", action="store_true", help="8 train / 4 test images, 1 epoch, one rate")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_images, args.test_images, args.epochs, args.learning_rates = 8, 4, 1, args.learning_rates[:1]
        args.val_images, args.threshold_grid = 4, [[0.6, 0.3], [0.7], [0.8]]
        args.real_photos = "installed" if args.real_photos == "fetch" else args.real_photos
        args.json = os.path.join(os.path.dirname(args.json), "face_mtcnn_finetune_quick.json")
    return args


def _scores(model, examples, photos) -> dict:
    metrics, _ = fb._evaluate_both(fb.kdet_detector("cascade", model, rcnn_scale=1.0), examples, photos)
    row = {"AP50_min20": metrics["min20"]["AP50"], "recall_min20": metrics["min20"]["recall_at_op"],
           "precision_min20": metrics["min20"]["precision_at_op"]}
    real = metrics.get("real")
    if real:
        row.update(real_faces=real["faces"], real_found=real["found"], real_false_positives=real["false_positives"],
                   real_ap30=real["ap"])
    return row


def with_thresholds(model, thresholds):
    """``model`` (a FaceCascade) rebuilt with other stage thresholds, its weights copied."""
    from kdet.specs import override

    out = fb.build_model("cascade", override(model.get_config(), {"test": {"thresholds": list(thresholds)}}))
    out.set_weights(model.get_weights())
    return out


def choose_thresholds(model, validation, grid) -> tuple[list[float], list[dict]]:
    """The grid's stage thresholds with the highest validation AP50 (faces >= 20 px); ties to higher ones."""
    import itertools

    tried = []
    for thresholds in itertools.product(*(sorted(values, reverse=True) for values in grid)):
        metrics, _ = fb.evaluate(fb.kdet_detector("cascade", with_thresholds(model, thresholds), rcnn_scale=1.0),
                                 validation)
        tried.append({"thresholds": list(thresholds), "AP50_min20": metrics["min20"]["AP50"]})
        print(f"  validation AP50 {100 * tried[-1]['AP50_min20']:.1f} at thresholds {thresholds}", flush=True)
    best = max(tried, key=lambda t: t["AP50_min20"])  # max keeps the first: the highest thresholds of a tie
    return best["thresholds"], tried


def _rows(label, model, test, photos, validation, args, extra=None) -> dict:
    """The model's row at its own thresholds, and (with ``validation``) at the ones chosen there."""
    rows = {label: {**_scores(model, test, photos), **(extra or {})}}
    if validation:
        thresholds, tried = choose_thresholds(model, validation, args.threshold_grid)
        chosen = f"{label}, thresholds {'/'.join(f'{t:g}' for t in thresholds)} chosen on validation"
        rows[chosen] = {**_scores(with_thresholds(model, thresholds), test, photos), "thresholds": thresholds,
                        "validation_grid": tried, **(extra or {})}
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    from kdet.data.faces import face_examples
    from kdet.face import from_mtcnn, procedures

    started = time.time()
    train = list(face_examples("train", num_images=args.train_images))
    test = list(face_examples("test", num_images=args.test_images))
    validation = list(face_examples("validation", num_images=args.val_images)) if args.val_images else []
    photos = fb.real_photos(args)
    training = procedures.CascadeTraining(epochs=1, joint_epochs=args.epochs, start="mtcnn",
                                          min_face_size=float(fb.MIN_FACE))
    prepared = procedures.prepare_cascade({"test": {"min_face_size": float(fb.MIN_FACE)}}, train, training,
                                          seed=args.seed, verbose=2)
    print(f"mined {len(prepared.samples)} samples ({prepared.sliding} sliding-window) in {prepared.seconds:.0f}s",
          flush=True)
    rows = _rows("mtcnn (before fine-tuning)", from_mtcnn(test={"min_face_size": float(fb.MIN_FACE)}), test,
                 photos, validation, args)
    for rate in args.learning_rates:
        tuned_at = time.perf_counter()
        model, _ = procedures.train_cascade(prepared, training, seed=args.seed, verbose=2,
                                            optimizer=procedures.default_optimizer(rate))
        seconds = time.perf_counter() - tuned_at
        rows.update(_rows(f"joint from mtcnn, Adam {rate:g}, {args.epochs} epoch(s)", model, test, photos,
                          validation, args, {"train_seconds": round(seconds)}))
    from benchmarks import cpu_flags

    out = {"args": vars(args), "cpu_flags": cpu_flags(), "samples": len(prepared.samples), "rows": rows,
           "wall_seconds": round(time.time() - started, 1)}
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nJoint fine-tuning from MTCNN: {args.train_images} embedded train images; AP50 / recall / precision on "
          f"faces >= 20 px of {args.test_images} embedded test images (SYNTHETIC); REAL: {len(photos)} real photos "
          f"({sum(len(p.faces) for p, _ in photos)} faces) letterboxed to 640x480, found / false positives / AFW AP\n")
    print("| model | AP50 ≥20px | recall@op | precision@op | REAL found | REAL FP | REAL AP30 |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        real = (f"{r['real_found']} of {r['real_faces']} | {r['real_false_positives']} | {100 * r['real_ap30']:.1f}"
                if "real_faces" in r else "– | – | –")
        print(f"| {name} | {100 * r['AP50_min20']:.1f} | {100 * r['recall_min20']:.1f} | "
              f"{100 * r['precision_min20']:.1f} | {real} |")
    print(f"\nwrote {args.json} ({out['wall_seconds']:.0f}s)")
    return out


if __name__ == "__main__":
    main()
