"""Training: recipes, the resumable training loop, distribution, callbacks.

* :class:`Recipe`, :class:`StepSchedule` (:mod:`kdet.training.recipe`) --
  a paper experiment as data; the modules of the ``recipes`` package define them.
* :func:`train` (:mod:`kdet.training.loop`) -- runs one into a model directory.
* :func:`recipe_main` -- the command line of a recipe module
  (``python -m recipes.retinanet --smoke``), the same as ``kdet train``.
"""

from kdet.training.backup import BackupError, backup_position, restore_backup
from kdet.training.callbacks import DetectionImages, StepBackup, TerminateOnNaNTerm
from kdet.training.loop import Run, TrainResult, choose_strategy, set_precision, train
from kdet.training.recipe import Recipe, SGDWithL2, StepSchedule, WarmupStepDecay
from kdet.training.stream import training_stream


def recipe_main(recipes, argv=None) -> int:
    """``kdet train`` for one recipe module's ``RECIPES`` (its ``__main__``)."""
    from kdet.cli import train_main

    return train_main(recipes, argv)


__all__ = ["BackupError", "DetectionImages", "Recipe", "Run", "SGDWithL2", "StepBackup", "StepSchedule",
           "TerminateOnNaNTerm", "TrainResult", "WarmupStepDecay", "backup_position", "choose_strategy", "recipe_main",
           "restore_backup", "set_precision", "train", "training_stream"]
