"""Class-name and category-id tables of COCO and Pascal VOC.

tfds ``coco/2017`` labels are 0..79 in the order of the ``categories`` list of
``instances_*.json`` (sorted by id), while COCO json ``category_id`` s are 1..90
with ten gaps (12, 26, 29, 30, 45, 66, 68, 69, 71, 83). ``COCO_CATEGORY_IDS[label]``
is the id to write into COCO results; evaluating tfds labels directly against a
COCO json would silently mismatch 70 of the 80 classes.
"""

from __future__ import annotations

from kdet.data.example import DetectionInfo

#: (category_id, name) of the 80 COCO detection classes, label order.
_COCO = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"),
    (5, "airplane"), (6, "bus"), (7, "train"), (8, "truck"), (9, "boat"),
    (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"),
    (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"),
    (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"),
    (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"),
    (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"),
    (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"),
    (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"),
    (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"),
    (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)  # fmt: skip

#: ``COCO_CATEGORY_IDS[label]`` = COCO json category id of tfds label ``label``.
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(cid for cid, _ in _COCO)
#: ``COCO_CLASS_NAMES[label]`` = COCO class name of tfds label ``label``.
COCO_CLASS_NAMES: tuple[str, ...] = tuple(name for _, name in _COCO)

#: The 20 Pascal VOC classes in tfds label order (alphabetical).
VOC_CLASS_NAMES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
#: VOC has no COCO ids: label ``i`` gets category id ``i + 1``.
VOC_CATEGORY_IDS: tuple[int, ...] = tuple(range(1, len(VOC_CLASS_NAMES) + 1))


def coco_info(name: str = "coco/2017", **kwargs) -> DetectionInfo:
    """DetectionInfo of the 80 COCO classes (``kwargs`` go to the dataclass)."""
    return DetectionInfo(
        class_names=COCO_CLASS_NAMES, category_ids=COCO_CATEGORY_IDS, name=name, **kwargs
    )


def voc_info(name: str = "voc/2007", **kwargs) -> DetectionInfo:
    """DetectionInfo of the 20 VOC classes, category ids 1..20."""
    return DetectionInfo(
        class_names=VOC_CLASS_NAMES, category_ids=VOC_CATEGORY_IDS, name=name, **kwargs
    )
