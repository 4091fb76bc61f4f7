"""Training: recipes, the resumable training loop, distribution, callbacks.

* :class:`Recipe`, :class:`StepSchedule` (:mod:`kdet.training.recipe`) --
  a paper experiment as data; the modules of the ``recipes`` package define them.
* :func:`train` (:mod:`kdet.training.loop`) -- runs one into a model directory.
* :func:`recipe_main` -- the command line of a recipe module
  (``python -m recipes.retinanet --smoke``), the same as ``kdet train``.
"""

from kdet._lazy import lazy_attributes

_WHERE = {
    "BackupError": "kdet.training.backup",
    "backup_position": "kdet.training.backup",
    "restore_backup": "kdet.training.backup",
    "DetectionImages": "kdet.training.callbacks",
    "StepBackup": "kdet.training.callbacks",
    "TerminateOnNaNTerm": "kdet.training.callbacks",
    "Run": "kdet.training.loop",
    "TrainResult": "kdet.training.loop",
    "choose_strategy": "kdet.training.distribute",
    "set_precision": "kdet.training.distribute",
    "train": "kdet.training.loop",
    "Recipe": "kdet.training.recipe",
    "SGDWithL2": "kdet.training.recipe",
    "StepSchedule": "kdet.training.recipe",
    "WarmupStepDecay": "kdet.training.recipe",
    "training_stream": "kdet.training.stream",
    "recipe_main": "kdet.training.command:train_main",
    "resolve_recipe": "kdet.training.command",
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
