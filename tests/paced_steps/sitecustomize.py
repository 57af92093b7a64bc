"""Slow training steps down for tests/test_slurm.py's time-limit test: a Python started with this folder
on PYTHONPATH and TEST_STEP_SECONDS set sleeps that long after every step of pre-training
(`train_masked_prediction`'s `on_step`) and of the PR heads (`pr._after_step`), so that a tiny job
outlasts SLURM's shortest time limit (one minute) in a known time, whatever else loads the machine. A
sleep changes no result (tests/test_pretrain.py: a slowed-down run writes the same model). The modules
are patched as they are imported; nothing else is touched, and no other process imports torch for it."""

import importlib.abc
import importlib.machinery
import os
import sys
import time

SECONDS = float(os.environ.get("TEST_STEP_SECONDS") or 0)
PACED = ("speaker_neurons.pr", "speaker_neurons.pretrain.loop")


def _pace(module) -> None:
    if module.__name__ == "speaker_neurons.pr":
        module._after_step = lambda step: time.sleep(SECONDS)
        return
    train = module.train_masked_prediction

    def paced(*args, on_step=None, **kwargs):
        def step(n):
            time.sleep(SECONDS)
            if on_step is not None:
                on_step(n)

        return train(*args, on_step=step, **kwargs)

    module.train_masked_prediction = paced


class _PacedImports(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PACED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _pace(module)

        spec.loader.exec_module = exec_module
        return spec


if SECONDS > 0:
    sys.meta_path.insert(0, _PacedImports())
