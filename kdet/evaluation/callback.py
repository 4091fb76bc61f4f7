"""One evaluation callback for ``model.fit``: any evaluator (COCO or face) after every n-th epoch."""

from __future__ import annotations

import keras

import kdet.evaluation


class EvaluationCallback(keras.callbacks.Callback):
    """Evaluates ``dataset`` with ``evaluator`` at the end of epochs; metrics go into ``logs`` with ``prefix``.

    Callbacks placed AFTER this one in the ``callbacks`` list see the metrics
    (``ModelCheckpoint(monitor="val_AP", mode="max")``, ``TensorBoard``, the
    ``History`` that ``fit`` returns); on skipped epochs the keys are absent.

    Args:
      dataset: finite evaluation pipeline of ``(images, targets)`` batches.
      evaluator: a :class:`~kdet.evaluation.coco.CocoEvaluator` or
        :class:`~kdet.evaluation.face.FaceEvaluator` (reset before each pass).
      every_n_epochs: evaluate after epochs n, 2n, ... (1-based).
      prefix: prepended to every metric name in ``logs``.
      results_json: COCO evaluators only: write the detections here after
        each evaluation; ``{epoch}`` is replaced by the 1-based epoch.
      steps: evaluate at most this many batches.
      verbose: 0 silent; 1 progress bar and a metrics line (2: the line only).

    Attributes:
      last_metrics: the last evaluation's metrics (None before the first).
      last_step: the optimiser step it evaluated (-1 before the first, or without an optimiser).
    """

    def __init__(self, dataset, evaluator, *, every_n_epochs: int = 1, prefix: str = "val_",
                 results_json: str | None = None, steps: int | None = None, verbose: int = 1):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        self.dataset, self.evaluator = dataset, evaluator
        self.every_n_epochs, self.prefix, self.results_json = int(every_n_epochs), prefix, results_json
        self.steps, self.verbose = steps, verbose
        self.last_metrics: dict[str, float] | None = None
        self.last_step = -1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.every_n_epochs:
            return
        self.evaluator.reset()
        # Looked up on the package at call time, so a test (or a user) can wrap kdet.evaluation.evaluate_model.
        metrics = kdet.evaluation.evaluate_model(self.model, self.dataset, self.evaluator, steps=self.steps,
                                                 progress=self.verbose == 1)
        optimizer = getattr(self.model, "optimizer", None)  # None: a model evaluated outside fit
        self.last_metrics, self.last_step = metrics, -1 if optimizer is None else int(optimizer.iterations.numpy())
        if self.results_json:
            self.evaluator.write_results_json(self.results_json.format(epoch=epoch + 1))
        if logs is not None:
            logs.update({self.prefix + key: float(value) for key, value in metrics.items()})
        if self.verbose:
            print(self.report(epoch, metrics))

    def report(self, epoch: int, metrics: dict[str, float]) -> str:
        """The line printed after an evaluation."""
        shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items() if k.startswith(("AP", "recall")))
        return f"epoch {epoch + 1} evaluation: {shown}"
