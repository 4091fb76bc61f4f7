"""Every head and face network keeps the layer contract: config round trip, eager == symbolic shapes, finite.

The FPN, RetinaNet head and RoIAlign are checked with their own tests
(tests/test_backbones.py, tests/test_roi_align.py); these are the others.
"""

import numpy as np
import pytest

from kdet.face.mtcnn import ONetBranch, PNetBranch, RNetBranch
from kdet.face.nets import X24_TRUNKS, Face12Net, Face24Net, Face48Net, ThresholdControl
from kdet.heads.cascade import BoxHead
from kdet.heads.rpn import RPNHead
from tests.layer_contract import check_layer_contract

RNG = np.random.default_rng(0)


def _x(*shape):
    return RNG.normal(size=shape).astype(np.float32)


CASES = {
    "rpn_head": (RPNHead, dict(num_anchors=3, filters=8), [_x(2, 8, 8, 4), _x(2, 4, 4, 4)]),
    "box_head": (BoxHead, dict(num_classes=3, fc_dim=16), _x(2, 5, 7, 7, 4)),
    "box_head_ensemble": (BoxHead, dict(num_classes=3, fc_dim=16, num_classifiers=2), _x(2, 5, 7, 7, 4)),
    "face12": (Face12Net, dict(filters=8, dropout=0.1), _x(4, 12, 12, 3)),
    **{f"face24_{trunk}": (Face24Net, dict(units=16, dropout=0.1, trunk=trunk), (_x(4, 24, 24, 3), _x(4, 8)))
       for trunk in X24_TRUNKS},
    "face48": (Face48Net, dict(units=16, dropout=0.1), (_x(4, 48, 48, 3), _x(4, 16))),
    "pnet": (PNetBranch, dict(dropout=0.1), _x(4, 14, 13, 3)),
    "rnet": (RNetBranch, dict(dropout=0.1), (_x(4, 24, 24, 3), _x(4, 32))),
    "onet": (ONetBranch, dict(dropout=0.1), (_x(4, 48, 48, 3), _x(4, 160))),
    "threshold_control": (ThresholdControl, dict(threshold=0.2), _x(6, 2)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_contract(name):
    cls, kwargs, inputs = CASES[name]
    check_layer_contract(cls, kwargs, inputs)
