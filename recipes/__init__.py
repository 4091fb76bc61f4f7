"""The papers' experiments: one module per detector, each a ``RECIPES`` dict of dataset variants.

* :mod:`recipes.faster_rcnn_fpn` -- Faster R-CNN with ResNet-FPN, the "FPN+"
  baseline of Cascade R-CNN (Cai & Vasconcelos 2018);
* :mod:`recipes.cascade_rcnn_fpn` -- Cascade R-CNN: that baseline plus two
  stages;
* :mod:`recipes.retinanet` -- RetinaNet with the focal loss, the baseline of
  Consistent Optimization (Kong et al.);
* :mod:`recipes.con_retinanet` -- ConRetinaNet: that baseline plus consistent
  optimization;
* :mod:`recipes.ap_loss_retinanet` -- RetinaNet trained with the AP-loss
  (Chen et al.);
* :mod:`recipes.face_cascade` -- the jointly trained 12/24/48 face cascade
  (Qin et al., Sec. 4);
* :mod:`recipes.face_rcnn` -- the jointly trained RPN + Fast R-CNN face
  detector (Qin et al., Sec. 5).

:mod:`recipes.common` holds what several share (data, Detectron's schedules
at batch 8, the smoke overrides, the variant tables); a variant of another
paper's detector imports its base (``con_retinanet`` from ``retinanet``,
``cascade_rcnn_fpn`` from ``faster_rcnn_fpn``).

Run one with ``kdet train NAME[:VARIANT]`` or ``python -m recipes.NAME
[--variant VARIANT]`` (the same options). ``kdet train path/to/file.py`` runs a
recipe file of one's own, which may import from here (``from
recipes.retinanet import build_model``).
"""
