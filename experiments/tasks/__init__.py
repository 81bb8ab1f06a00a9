"""The experiments, one module each: presets, data, forward, metrics and pictures.

Each module holds ``MODELS`` (its model names, the first the default), ``Config`` (the class
``config.json`` loads into: ``experiments.config.load(task.Config, path)``),
``presets(model)`` (name -> config) and ``setup(config, workdir) -> runner.Setup``.
"""

import importlib
from types import ModuleType

__all__ = ["TASKS", "load"]

# Experiment name -> its module.
TASKS = {
    "translate": "experiments.tasks.translate",
    "lm": "experiments.tasks.lm",
    "caption": "experiments.tasks.caption",
}


def load(name: str) -> ModuleType:
    """The module of experiment ``name``; ValueError listing the valid names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(TASKS)}")
    return importlib.import_module(TASKS[name])
