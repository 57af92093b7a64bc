"""Hooks for the processes of tests/test_slurm.py, installed by starting Python with this folder on
PYTHONPATH; each acts only where its environment variable is set, and only on the module it names, as
that module is imported. Nothing else is touched, and no process imports a module for them.

* TEST_STEP_SECONDS (the time-limit test): every step of pre-training (`train_masked_prediction`'s
  `on_step`) and of the PR heads (`pr._after_step`) sleeps that long, so that a tiny job outlasts SLURM's
  shortest time limit (one minute) in a known time, whatever else loads the machine. A sleep changes no
  result (tests/test_pretrain.py: a slowed-down run writes the same model).
* TEST_SLURM_WAIT_SECONDS (every test that submits to the one-node test cluster): the SLURM executor
  plugin waits at most that long where it waits for a shared production controller: a fixed 5 s before
  every `sbatch`, and status checks that back off by 10 s more after each one that found no job finished
  (up to 180 s). The test cluster answers at once; without the cap most of a tiny job's time through
  SLURM is these waits. What is submitted, and how, is unchanged.
"""

import importlib.abc
import importlib.machinery
import os
import sys
import time

SECONDS = float(os.environ.get("TEST_STEP_SECONDS") or 0)
SLURM_WAIT = float(os.environ.get("TEST_SLURM_WAIT_SECONDS") or 0)
PLUGIN = "snakemake_executor_plugin_slurm"


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


class _CappedTime:
    """The `time` module as the plugin sees it: every sleep at most SLURM_WAIT seconds."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds):
        time.sleep(min(seconds, SLURM_WAIT))


def _cap_waits(module) -> None:
    module.time = _CappedTime()
    executor = module.Executor
    interval = executor.next_seconds_between_status_checks  # the base class' property

    executor.next_seconds_between_status_checks = property(
        interval.fget, lambda self, value: interval.fset(self, min(value, SLURM_WAIT)))


HOOKS = {}
if SECONDS > 0:
    HOOKS.update({"speaker_neurons.pr": _pace, "speaker_neurons.pretrain.loop": _pace})
if SLURM_WAIT > 0:
    HOOKS[PLUGIN] = _cap_waits


class _HookedImports(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in HOOKS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            HOOKS[name](module)

        spec.loader.exec_module = exec_module
        return spec


if HOOKS:
    sys.meta_path.insert(0, _HookedImports())
