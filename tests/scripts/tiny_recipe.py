"""A tiny RetinaNet recipe on the embedded shapes for the training tests (seconds per run on a CPU)."""

from kdet.detectors import RetinaNet
from kdet.training import Recipe, StepSchedule, recipe_main


def build_model(num_classes, *, backbone, backbone_weights):
    return RetinaNet(num_classes=num_classes,
                     backbone=dict(name=backbone, weights=backbone_weights, freeze_batchnorm=True), fpn_filters=16,
                     head=dict(num_convs=1, filters=16), anchors=dict(anchor_size=2.0, min_level=3, max_level=5),
                     matcher=dict(allow_low_quality_matches=True))


RECIPES = {
    "shapes": Recipe(
        name="tiny", paper="(test recipe)", build_model=build_model,
        train_data="embedded:shapes:train[:24]", val_data="embedded:shapes:validation[:4]",
        image_size=(128, 128), batch_size=4, backbone="tiny",
        schedule=StepSchedule(base_lr=1e-3, reference_batch=4, total_steps=12, boundaries=(8,), warmup_steps=2,
                              optimizer="adam", weight_decay=None),
        steps_per_epoch=5, val_images=4),
}

if __name__ == "__main__":
    raise SystemExit(recipe_main(RECIPES))
