"""Every recipe of the ``recipes`` package trains in smoke mode (``kdet train NAME --smoke``) and writes its model dir.

Smoke mode applies the recipe's ``smoke`` overrides (a couple of steps on
128-px images) and, for tfds data, runs on ``tfds.testing.mock_data`` (as the
command line does); the face recipes smoke on the embedded face set.
"""

import re

import pytest

from kdet import cli
from kdet.training import command
from kdet.model_dir import read_model_info

#: ``face_cascade`` trains through ``kdet train`` (embedded variant: same procedure, evaluation and model
#: directory, killed and resumed) after the face benchmark's smoke run (tests/test_benchmarks_smoke.py);
#: the CPU-sized ``:small`` variants differ from their recipe's smoke run only in model settings, which
#: tests/training/test_recipes.py builds and compares. Each smoke run is 10-20 s of CI.
RECIPE_NAMES = [name for name in command.known_recipes() if name != "face_cascade"]


def test_the_recipes_are_found():
    assert len(RECIPE_NAMES) >= 6, "the recipes package is importable (python -m pytest from the checkout)"


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_trains_in_smoke_mode(name, tmp_path, capsys):
    model_dir = tmp_path / "model"
    assert cli.main(["train", name, "--smoke", "--model-dir", str(model_dir)]) == 0
    out = capsys.readouterr().out
    recipe, variant = command.resolve_recipe(name)
    smoke = recipe.smoke_version()
    info = read_model_info(str(model_dir))
    assert info.recipe["name"] == recipe.name and tuple(info.input_size) == tuple(smoke.image_size)
    assert (model_dir / "model.weights.h5").is_file() and (model_dir / "metrics.json").is_file()
    if recipe.train is None:  # the fit loop: its steps, a backup, the per-epoch evaluation
        assert f"{smoke.schedule.total_steps} steps (from step 0)" in out
        step = smoke.schedule.total_steps
        assert (model_dir / "backup" / f"step-{step:09d}" / "state.json").is_file()
    else:  # a procedure of several fits (the face recipes): the steps of all of them are reported
        trained = re.search(rf"kdet train: {recipe.name}: (\d+) steps", out)
        assert trained and int(trained.group(1)) > 0, out[-2000:]
    assert ("AP50" in out) and ("AR100" in out or "recall" in out), out[-2000:]
    model = recipe.build_model(1, backbone="tiny", backbone_weights=None)
    if model.evaluation == "face":  # kdet evaluate picks the face metrics for a face model directory
        assert cli.main(["evaluate", "--model-dir", str(model_dir), "--data", "embedded:faces:validation[:2]"]) == 0
        table = capsys.readouterr().out
        assert "AP30_afw" in table and "recall_at_10fp" in table and "AP  AP50" not in table, table
