"""The paper recipes of the ``recipes`` package: every module imports and its settings are consistent (no training).

Each recipe module is found with ``pkgutil.iter_modules`` over the package
(all but ``common`` and ``_private`` modules), so a new recipe is covered
without editing this test. The checks read the configuration only (building a
ResNet-50 detector per variant would be slow; the tiny backbone compares a
variant's detector with its base's); the smoke runs of the recipes are the
training tests' business.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import recipes as recipes_package
from kdet.training import command
from kdet.data.pipeline import check_image_size
from kdet.data.sources import EMBEDDED, KINDS
from kdet.data.tfds_readers import FACE_TFDS_NAMES, SUPPORTED_TFDS_NAMES
from kdet.specs import to_config
from kdet.training import Recipe, StepSchedule

RECIPES_DIR = Path(recipes_package.__file__).resolve().parent
RECIPE_NAMES = sorted(m.name for m in pkgutil.iter_modules(recipes_package.__path__)
                      if m.name != "common" and not m.name.startswith("_"))
#: Split names of the tfds sets the recipes read (the readers' datasets; tfds names them so).
TFDS_SPLITS = {"coco/2017": {"train", "validation", "test"}, "voc/2007": {"train", "validation", "test"},
               "voc/2012": {"train", "validation", "test"}, "wider_face": {"train", "validation", "test"}}
#: Foreground classes of each data set: the recipes' models are built for them.
NUM_CLASSES = {"coco/2017": 80, "voc/2007": 20, "voc/2012": 20, "wider_face": 1, "faces": 1, "shapes": 3}
SMOKE_EXTRA_KEYS = {"steps"}
LARGEST_STRIDE = 128  # FPN P7 (the pipeline requires it of every model)


def load_recipe_module(name: str):
    """Imports ``recipes.NAME`` (as ``kdet train NAME`` does): the module."""
    return importlib.import_module(f"recipes.{name}")


def parse_data_string(spec: str) -> tuple[str, str, str | None]:
    """``(kind, dataset name, split)`` of a :mod:`kdet.data.sources` string, checked without reading data."""
    import tensorflow_datasets as tfds

    if "," in spec:  # joined sets: each part parses, all have the same classes
        parsed = [parse_data_string(part.strip()) for part in spec.split(",")]
        assert len({NUM_CLASSES[name] for _, name, _ in parsed}) == 1, f"{spec!r}: joined sets differ in classes"
        return parsed[0]
    kind, _, rest = spec.partition(":")
    assert kind in KINDS and rest, f"{spec!r}: unknown kind (valid: {KINDS})"
    if kind == "tfds":
        name, _, split = rest.partition(":")
        assert name in SUPPORTED_TFDS_NAMES + FACE_TFDS_NAMES, f"{spec!r}: kdet does not read tfds {name!r}"
        instruction = tfds.core.ReadInstruction.from_spec(split)  # raises on a malformed split
        used = {re.sub(r"\[.*\]$", "", part) for part in split.split("+")}
        assert used <= TFDS_SPLITS[name], f"{spec!r}: {name} has splits {sorted(TFDS_SPLITS[name])}"
        assert instruction is not None
        return kind, name, split
    assert kind == "embedded", f"{spec!r}: the recipes use tfds or embedded data"
    name, _, split = rest.partition(":")
    assert name in EMBEDDED, f"{spec!r}: embedded sets are {EMBEDDED}"
    if split:
        assert re.fullmatch(r"\w+(\[:\d+\])?", split), f"{spec!r}: embedded split must be SPLIT or SPLIT[:N]"
    return kind, name, split or None


def all_recipes():
    """``(module name, variant, Recipe)`` of every recipe module."""
    return [(name, variant, recipe) for name in RECIPE_NAMES
            for variant, recipe in load_recipe_module(name).RECIPES.items()]


def recipe_id(item) -> str:
    return f"{item[0]}:{item[1]}"


RECIPES = all_recipes() if RECIPE_NAMES else []


def test_the_paper_recipes_are_there():
    names = set(RECIPE_NAMES)
    assert {"faster_rcnn_fpn", "cascade_rcnn_fpn", "retinanet", "con_retinanet", "ap_loss_retinanet",
            "face_cascade", "face_rcnn"} <= names
    assert command.known_recipes() == RECIPE_NAMES, "kdet train lists the same recipes"
    assert all(f":mod:`recipes.{name}`" in recipes_package.__doc__ for name in names), "the package lists them"


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_file_imports_and_defines_its_recipes(name):
    module = load_recipe_module(name)
    path = Path(module.__file__)
    assert module.__doc__ and "Run::" in module.__doc__, "the docstring names the paper and the command to run it"
    recipes = module.RECIPES
    assert isinstance(recipes, dict) and recipes
    assert all(isinstance(r, Recipe) for r in recipes.values())
    assert next(iter(recipes)) in ("coco", "wider_face"), "the default (first) variant is COCO (faces: WIDER FACE)"
    parameters = inspect.signature(module.build_model).parameters
    for name in ("backbone", "backbone_weights"):
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert "num_classes" in parameters
    assert "raise SystemExit(recipe_main(RECIPES))" in path.read_text(), "runnable as python -m recipes.NAME"


@pytest.mark.parametrize("item", RECIPES, ids=recipe_id)
def test_data_strings_parse(item):
    _, variant, recipe = item
    _, train_name, _ = parse_data_string(recipe.train_data)
    _, val_name, val_split = parse_data_string(recipe.val_data)
    assert NUM_CLASSES[train_name] == NUM_CLASSES[val_name], "train and evaluate on the same classes"
    if variant.startswith("voc"):
        assert (val_name, val_split) == ("voc/2007", "test"), "VOC is evaluated on VOC 2007 test"
    if variant.startswith("coco"):
        assert (train_name, val_name) == ("coco/2017", "coco/2017")
    for key in ("train_data", "val_data"):
        if key in recipe.smoke:
            parse_data_string(recipe.smoke[key])


@pytest.mark.parametrize("item", RECIPES, ids=recipe_id)
def test_image_sizes_fit_the_models_strides(item):
    """FPN detectors need multiples of P7's 128 (the face R-CNN's P6: 64); the face cascade (an image pyramid)
    takes any size."""
    from kdet.face.cascade import FaceCascade

    recipe = item[2]
    stride = recipe.image_stride
    expected = {"face_cascade": FaceCascade.input_stride, "face_rcnn": 64}.get(item[0], LARGEST_STRIDE)
    assert stride == expected
    assert check_image_size(recipe.image_size, stride=stride) == tuple(recipe.image_size)
    check_image_size(recipe.smoke_version().image_size, stride=stride)


@pytest.mark.parametrize("item", RECIPES, ids=recipe_id)
def test_schedule_is_written_at_the_paper_batch_and_consistent(item):
    recipe = item[2]
    schedule = recipe.schedule
    assert isinstance(schedule, StepSchedule)
    assert schedule.reference_batch == recipe.batch_size or recipe.train is not None, (
        "a fit-trained recipe states its schedule at its own (the paper's) batch")
    assert list(schedule.boundaries) == sorted(set(schedule.boundaries))
    assert all(0 < b < schedule.total_steps for b in schedule.boundaries)
    assert schedule.warmup_steps < (schedule.boundaries[0] if schedule.boundaries else schedule.total_steps)
    if recipe.train is None:
        assert recipe.steps_per_epoch <= schedule.total_steps
        assert recipe.epochs_for(recipe.batch_size) >= 1


@pytest.mark.parametrize("item", RECIPES, ids=recipe_id)
def test_smoke_overrides_are_recipe_fields(item):
    recipe = item[2]
    fields = {f.name for f in dataclasses.fields(Recipe)}
    assert recipe.smoke, "every recipe has a smoke setting"
    assert set(recipe.smoke) <= fields | SMOKE_EXTRA_KEYS
    smoke = recipe.smoke_version()
    assert smoke.schedule.total_steps <= 4 and smoke.batch_size <= 64
    assert max(smoke.image_size) <= 256 and smoke.val_images is not None and smoke.val_images <= 4


@pytest.mark.parametrize("item", RECIPES, ids=recipe_id)
def test_resnet_recipes_start_from_imagenet_as_the_papers_and_smoke_runs_never_download(item):
    from kdet.training.loop import _apply_overrides

    recipe = item[2]
    resnet = recipe.backbone in ("resnet50", "resnet101")
    assert recipe.backbone_weights == ("imagenet" if resnet else recipe.backbone_weights)
    assert recipe.smoke_version().backbone_weights is None  # --smoke: the tiny backbone, random weights
    common = dict(smoke=False, data=None, val_data=None, batch_size=None, image_size=None)
    # --backbone tiny: random weights where the recipe has another backbone; a tiny recipe keeps its start
    switched = _apply_overrides(recipe, backbone="tiny", backbone_weights=None, **common).backbone_weights
    assert switched == (recipe.backbone_weights if recipe.backbone == "tiny" else None)
    assert _apply_overrides(recipe, backbone=None, backbone_weights="none", **common).backbone_weights is None
    assert _apply_overrides(recipe, backbone=None, backbone_weights="w.h5", **common).backbone_weights == "w.h5"
    kept = _apply_overrides(recipe, backbone="resnet101", backbone_weights=None, **common).backbone_weights
    assert kept == recipe.backbone_weights


@pytest.mark.parametrize("item", RECIPES, ids=recipe_id)
def test_face_recipes_train_their_own_way(item):
    stem, variant, recipe = item
    num_classes = NUM_CLASSES[parse_data_string(recipe.train_data)[1]]
    is_face = num_classes == 1
    model = recipe.build_model(num_classes, backbone="tiny", backbone_weights=None)
    assert (model.evaluation == "face") == is_face, "the detector says how it is evaluated (face or COCO metrics)"
    if is_face:
        assert callable(recipe.train) and variant in ("wider_face", "embedded", "mtcnn")
        assert (variant == "embedded") == recipe.train_data.startswith("embedded:faces:")
        assert recipe.extra.get("min_face_size"), "face metrics ignore faces below the detector's smallest"


def test_recipe_names_are_unique():
    names = [recipe.name for _, _, recipe in RECIPES]
    assert len(names) == len(set(names)), "model directories and logs are named after the recipe"


def test_face_schedules_count_epochs():
    """kdet.face.recipe: the rate scales with the batch, decays at the boundary epochs."""
    from kdet.face.recipe import epoch_decay, learning_rate, optimizer_factory

    recipe = load_recipe_module("face_cascade").RECIPES["wider_face"]
    recipe = recipe.replace(schedule=dataclasses.replace(recipe.schedule, base_lr=0.001, reference_batch=128,
                                                         total_steps=8, boundaries=(6,), decay_factor=0.1))
    assert learning_rate(recipe, 64) == pytest.approx(0.0005)
    callback = epoch_decay(recipe, 64)
    assert [callback.schedule(epoch, None) for epoch in (0, 5, 6, 7)] == pytest.approx([5e-4, 5e-4, 5e-5, 5e-5])
    optimizer = optimizer_factory(recipe, 64)()
    assert float(optimizer.learning_rate) == pytest.approx(5e-4)
    assert optimizer_factory(recipe, 64)() is not optimizer, "every training step gets a fresh optimiser"


# ---------------------------------------------------------------- the package: names, paths, variants of a base
def tiny_config(build_model, num_classes: int = 80) -> dict:
    """``get_config`` of ``build_model``'s detector on the tiny backbone (seconds), without its generated name."""
    config = build_model(num_classes, backbone="tiny", backbone_weights=None).get_config()
    config.pop("name")
    return config


def test_a_recipe_resolves_by_name_as_by_path():
    assert command.resolve_recipe("con_retinanet")[1] == "coco", "the first variant is the default"
    by_name, variant = command.resolve_recipe("con_retinanet:voc")
    by_path, path_variant = command.resolve_recipe(f"{RECIPES_DIR / 'con_retinanet.py'}:voc")
    assert variant == path_variant == "voc"
    assert by_name is load_recipe_module("con_retinanet").RECIPES["voc"]
    fields = [f.name for f in dataclasses.fields(Recipe) if f.name != "build_model"]
    assert {f: getattr(by_name, f) for f in fields} == {f: getattr(by_path, f) for f in fields}
    assert tiny_config(by_name.build_model, 20) == tiny_config(by_path.build_model, 20)


@pytest.mark.parametrize("spec", ["no_such_recipe", "no_such_recipe:coco", "common", "_private", "retina-net"])
def test_an_unknown_recipe_name_lists_the_known_ones(spec):
    with pytest.raises(ValueError, match=f"recipe '{spec.split(':')[0]}' not found") as error:
        command.resolve_recipe(spec)
    assert all(name in str(error.value) for name in RECIPE_NAMES), str(error.value)


def test_an_unknown_variant_lists_the_recipes_variants():
    with pytest.raises(ValueError, match="recipe 'retinanet' has no variant 'coco_280k'; variants: coco, coco_800, "
                                         "coco_800_jitter, voc"):
        command.resolve_recipe("retinanet:coco_280k")


USER_RECIPE = '''"""One's own recipe outside the package: the paper's RetinaNet on the embedded shapes."""

from kdet.training import Recipe, StepSchedule
from recipes.retinanet import build_model

RECIPES = {
    "shapes": Recipe(name="my_retinanet", paper="(mine)", build_model=build_model,
                     train_data="embedded:shapes:train[:8]", val_data="embedded:shapes:validation[:2]",
                     image_size=(128, 128), batch_size=2, backbone="tiny",
                     schedule=StepSchedule(base_lr=1e-3, reference_batch=2, total_steps=4)),
}
'''


def test_a_recipe_file_outside_the_package_loads_by_path(tmp_path):
    path = tmp_path / "my_recipe.py"
    path.write_text(USER_RECIPE)
    recipe, variant = command.resolve_recipe(str(path))
    assert (recipe.name, variant) == ("my_retinanet", "shapes")
    assert recipe.build_model is load_recipe_module("retinanet").build_model
    with pytest.raises(ValueError, match="my_recipe.py has no variant 'coco'; variants: shapes"):
        command.resolve_recipe(f"{path}:coco")
    with pytest.raises(ValueError, match="recipe file .*missing.py' not found"):
        command.resolve_recipe(str(tmp_path / "missing.py"))


def _fields(config: dict) -> dict:
    """A config's settings, one per spec field (``"anchors.num_scales"``); a loss (its ``kind`` decides its fields)
    and anything else that is not a spec's dict count as one setting."""
    return {f"{key}.{field}" if isinstance(value, dict) and "kind" not in value else key: v
            for key, value in config.items()
            for field, v in (value.items() if isinstance(value, dict) and "kind" not in value else [(None, value)])}


@pytest.mark.parametrize("variant, base, changes, argument, differing", [
    ("con_retinanet", "retinanet", "CONSISTENT_OPTIMIZATION", "consistent",
     {"consistent.cls_terms", "consistent.reg_terms", "consistent.thresholds"}),  # alpha, test_regressions: defaults
    ("ap_loss_retinanet", "retinanet", "AP_LOSS", None, {"anchors.num_scales", "classification_loss"}),
    ("cascade_rcnn_fpn", "faster_rcnn_fpn", "CASCADE", "stages", {"stages.ious", "stages.box_weights",
                                                                "stages.loss_weights"}),
])
def test_a_variant_detector_is_its_base_plus_the_papers_changes(variant, base, changes, argument, differing):
    """``changes`` is the variant's spec of ``argument``, or (``argument`` None) a dict of the arguments it changes."""
    module = load_recipe_module(variant)
    config, base_config = (_fields(tiny_config(m.build_model)) for m in (module, load_recipe_module(base)))
    assert {k for k in config.keys() | base_config.keys() if config.get(k) != base_config.get(k)} == differing
    stated = getattr(module, changes) if argument is None else {argument: getattr(module, changes)}
    assert differing <= set(_fields({k: to_config(v) for k, v in stated.items()})), (
        f"{variant} states its changes in {changes}")


def test_common_is_not_a_recipe():
    common = load_recipe_module("common")
    assert not hasattr(common, "RECIPES") and "common" not in RECIPE_NAMES
    build_model = load_recipe_module("retinanet").build_model
    variants = common.standard_variants("x", "paper", build_model, batch_size=8, smoke=common.SMOKE)
    assert list(variants) == ["coco", "coco_800", "coco_800_jitter", "voc", "small"]
    assert [r.name for r in variants.values()] == ["x", "x_800", "x_800_jitter", "x_voc", "x_small"]


#: The recipes with a ``:small`` variant: every COCO/VOC one (the face recipes' CPU size is their embedded variant).
SMALL_RECIPES = ("retinanet", "con_retinanet", "ap_loss_retinanet", "faster_rcnn_fpn", "cascade_rcnn_fpn")


@pytest.mark.parametrize("name", SMALL_RECIPES)
def test_every_coco_recipe_has_the_cpu_sized_small_variant_the_readme_describes(name):
    """``NAME:small``: the tiny backbone from scratch, 256-px images, batch 8, the embedded shapes by default, and the
    paper's detector with only the widths, anchors and budgets of :mod:`kdet.presets` changed."""
    from kdet.presets import SMALL_RETINANET, small_rcnn

    module = load_recipe_module(name)
    small, paper = module.RECIPES["small"], next(iter(module.RECIPES.values()))
    assert command.resolve_recipe(f"{name}:small")[0] is small and small.name == f"{name}_small"
    assert (small.backbone, small.backbone_weights, small.image_size, small.batch_size) == ("tiny", None, (256, 256), 8)
    assert small.train_data.startswith("embedded:shapes:train") and small.val_data.startswith("embedded:shapes:val")
    assert small.schedule.optimizer == "adam" and small.schedule.total_steps == 3000
    assert small.steps_per_epoch * small.batch_size == 2000  # one epoch: the embedded training images once
    config, paper_config = (_fields(tiny_config(r.build_model, 3)) for r in (small, paper))
    changes = _fields(to_config_dict(SMALL_RETINANET if "retinanet" in name else small_rcnn(256)))
    differing = {k for k in config.keys() | paper_config.keys() if config.get(k) != paper_config.get(k)}
    assert differing <= set(changes), "the small variant changes only what kdet.presets names"
    assert all(_agrees(config[k], v) for k, v in changes.items()), (name, changes)
    if "retinanet" in name:
        assert (config["fpn_filters"], config["head.num_convs"], config["head.filters"]) == (64, 2, 64)
    else:
        assert (config["rpn.fpn_filters"], config["fc_dim"], config["roi_sampling.num_samples"]) == (64, 256, 128)
        assert config["roi_pooler.canonical_size"] == 112.0  # FPN's 224 at 512 px, scaled to 256 px


def _agrees(value, change) -> bool:
    """``value`` has ``change``: equal, or (a dict change) every field it names, recursively."""
    if isinstance(change, dict) and isinstance(value, dict):
        return all(key in value and _agrees(value[key], v) for key, v in change.items())
    return value == change


def to_config_dict(changes: dict) -> dict:
    """Spec changes as plain config data (a spec's changed fields stay a dict; a nested argument dict stays whole)."""
    return {key: to_config(value) for key, value in changes.items()}
