"""MirroredStrategy on 2 logical CPU devices: one fit step equals one device on the same global batch.

Every detector and every loss: RetinaNet (AP-loss across replicas, focal with consistent
optimization, both together), Cascade R-CNN (three stages; its one-stage form is Faster R-CNN and
the RPN face detector's family), and the joint face cascade. Each variant costs about 9 s of CI, so a
loss is checked within the variant that combines it with another (focal within consistent
optimization, one stage within three) rather than again alone.

Runs ``tests/scripts/mirrored_step.py`` in a subprocess (logical devices must be set before TF starts).
"""

import json
import os
import subprocess
import sys

import pytest
from tests.paths import ROOT as REPOSITORY, SCRIPTS

SCRIPT = str(SCRIPTS / "mirrored_step.py")
ROOT = str(REPOSITORY)

VARIANTS = [
    {"classification_loss": {"kind": "ap", "rank_across_replicas": True}},
    {"classification_loss": {"kind": "ap", "rank_across_replicas": False}},
    {"classification_loss": "focal", "consistent": {"cls_terms": 2, "reg_terms": 2}},
    {"detector": "cascade_rcnn", "rpn_overrides": {"loss_normalization": "sampled"}},
    {"detector": "face_cascade"},
    {"classification_loss": {"kind": "ap", "rank_across_replicas": True},
     "consistent": {"cls_terms": 2, "reg_terms": 2}},
]


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, SCRIPT, json.dumps(VARIANTS)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 2, 3, 4, 5])
def test_two_replicas_match_one_device(results, index):
    """Same loss and same update (1e-6 of the largest update x 100) on two replicas as on one device.

    AP-loss ranked across replicas, focal with consistent optimization, both together, Cascade R-CNN
    (RPN normalised by its sampled count: the whole batch's, not each replica's) and the face cascade.
    """
    r = results[index]
    assert r["max_update"] > 1e-3, r
    assert r["max_update_diff"] <= 1e-6 * max(1.0, r["max_update"] * 100), r
    assert abs(r["loss_mirrored"] - r["loss_single"]) <= 1e-5 * abs(r["loss_single"]), r


@pytest.mark.slow
def test_ap_loss_ranked_per_replica_is_a_different_ranking(results):
    """Per replica, each replica ranks its own images: a documented difference from one device."""
    r = results[1]
    assert r["max_update_diff"] > 1e-5, r
