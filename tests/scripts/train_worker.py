"""One training process of the multi-worker and kill/resume tests.

Usage: ``train_worker.py MODEL_DIR WEIGHTS_OUT [--pause-at STEP]``; the
cluster (if any) comes from ``TF_CONFIG``. Trains ``tiny_recipe`` with op
determinism, then saves every weight to ``WEIGHTS_OUT`` (``.npz``).
``--pause-at`` sleeps after that global step (its backup written first
when it is a backup step) so a test can SIGKILL the process mid-epoch.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.experimental.enable_op_determinism()
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.threading.set_intra_op_parallelism_threads(1)


class PauseAt(keras.callbacks.Callback):
    def __init__(self, step, offset):
        super().__init__()
        self.step, self.done = step, offset

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        if self.done == self.step:
            print(f"PAUSED at step {self.step}", flush=True)
            time.sleep(600)


def main():
    from tests.scripts.tiny_recipe import RECIPES  # the repository root is on PYTHONPATH (the test sets it)

    from kdet.training import loop

    model_dir, out = sys.argv[1], sys.argv[2]
    pause = int(sys.argv[sys.argv.index("--pause-at") + 1]) if "--pause-at" in sys.argv else None
    recipe = RECIPES["shapes"]
    if pause is not None:  # the pause callback goes after the backup callback
        original = loop.StepBackup

        class BackupThenPause(original):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.pause = PauseAt(pause, self.step_offset)

            def on_train_batch_end(self, batch, logs=None):
                super().on_train_batch_end(batch, logs)
                self.pause.on_train_batch_end(batch, logs)

        loop.StepBackup = BackupThenPause
    result = loop.train(recipe, model_dir=model_dir, backup_every=2, evaluate=False, tensorboard=False, verbose=0)
    np.savez(out, *[np.asarray(v) for v in result.model.weights])
    print(f"DONE steps={result.steps} start={result.start_step} loss={result.history.get('loss', [None])[-1]}",
          flush=True)


if __name__ == "__main__":
    main()
