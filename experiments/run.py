"""Train, evaluate, checkpoint and visualize any experiment of the zoo.

    python -m experiments.run EXPERIMENT [--model NAME] [--preset NAME] [--steps N]
                              [--workdir DIR] [--resume] [--distributed] [--set key=value ...]

A run lives in one work directory (default ``runs/EXPERIMENT-MODEL-PRESET``): its config
(``config.json``), metrics (``metrics.jsonl``, ``tensorboard/``), checkpoints and plots.
Without ``--resume`` the directory must hold no run yet. With ``--resume`` the run continues
from its latest checkpoint under its saved config; only ``--steps`` may change (to train
longer).
"""

import argparse
import dataclasses
import json
import pathlib
import sys
from types import ModuleType

import jax
from flax import nnx

from experiments import config as config_lib
from experiments import runner, tasks
from experiments.errors import USER_ERRORS


class UsageError(ValueError):
    """A bad command line: the message lists the valid choices."""


def resolve_config(args: argparse.Namespace, task: ModuleType, workdir: pathlib.Path):
    """The run's config: the saved one when resuming, else preset + overrides."""
    saved = workdir / "config.json"
    if args.resume and saved.exists():
        if args.preset or args.overrides or args.model:
            raise UsageError(
                f"--resume continues {workdir} under its saved config ({saved}); drop "
                "--model/--preset/--set, or start a new --workdir"
            )
        config = task.load_config(saved)
    else:
        if (workdir / "checkpoints").exists() and any((workdir / "checkpoints").iterdir()):
            raise UsageError(
                f"{workdir} already holds a run; pass --resume to continue it, or choose "
                "another --workdir"
            )
        model = args.model or task.MODELS[0]
        if model not in task.MODELS:
            raise UsageError(
                f"unknown model {model!r} for {args.experiment}; choose one of {list(task.MODELS)}"
            )
        presets = task.presets(model)
        preset = args.preset or "tiny"
        if preset not in presets:
            raise UsageError(
                f"unknown preset {preset!r} for {model}; choose one of {list(presets)}"
            )
        config = config_lib.apply_overrides(presets[preset], args.overrides)
    if args.steps is not None:
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, steps=args.steps)
        )
    return config


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", help=f"one of {sorted(tasks.TASKS)}")
    parser.add_argument("--model", help="model of the experiment (default: its first)")
    parser.add_argument("--preset", help="named config preset (default: tiny)")
    parser.add_argument("--steps", type=int, help="total training steps (overrides train.steps)")
    parser.add_argument("--workdir", type=pathlib.Path, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="one process of a multi-host run: call jax.distributed.initialize() first (the "
        "coordinator, process count and index come from the cluster environment, e.g. SLURM, "
        "or from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); then train "
        "with --set train.devices=0",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.batch_size=32 (repeatable)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.distributed:
        jax.distributed.initialize()  # before anything touches a device
    lead = jax.process_index() == 0  # the process that writes and prints
    try:
        task = tasks.load(args.experiment)
        workdir = args.workdir or pathlib.Path(
            "runs", f"{args.experiment}-{args.model or task.MODELS[0]}-{args.preset or 'tiny'}"
        )
        config = resolve_config(args, task, workdir)
    except ValueError as error:  # UsageError and bad --set values
        raise SystemExit(f"error: {error}") from None
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        setup = task.setup(config, workdir)
    except (ValueError, *USER_ERRORS) as error:  # contradicting settings, missing data
        raise SystemExit(f"error: {error}") from None
    if lead:  # the config with what the data decided (vocabulary sizes, channels) filled in
        config_lib.save(setup.config, workdir / "config.json")
        print(f"{args.experiment}: {json.dumps(config_lib.to_dict(setup.config), indent=1)}")
    params = sum(x.size for x in jax.tree.leaves(nnx.state(setup.model, nnx.Param)))
    if lead:
        name = type(setup.model).__name__
        print(f"model: {name}, {params:,} parameters; run directory {workdir}")
    try:
        metrics = runner.train(setup, config.train, workdir, resume=args.resume)
    except USER_ERRORS as error:  # e.g. no intact checkpoint to resume from
        raise SystemExit(f"error: {error}") from None
    if lead:
        print("final: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return metrics


if __name__ == "__main__":
    main()
