"""Train, evaluate, checkpoint and visualize any experiment of the zoo.

    python -m experiments.run EXPERIMENT [--model NAME] [--preset NAME] [--steps N]
                              [--workdir DIR] [--resume] [--distributed] [--debug]
                              [--set key=value ...]

A run lives in one work directory (default ``runs/EXPERIMENT-MODEL-PRESET``): its config
(``config.json``), metrics (``metrics.jsonl``, ``tensorboard/``), checkpoints and plots.
Without ``--resume`` the directory must hold no run yet. With ``--resume`` the run continues
from its latest checkpoint under its saved config; only ``--steps`` may change (to train
longer). Ctrl-C or SIGTERM saves the step in progress and exits with 130.

A mistake of the user's (a bad setting, missing data, an unusable run directory or checkpoint)
is one line, ``error: ...``, and exit status 1; ``--debug`` (or ``ZOO_DEBUG=1``) shows its
traceback instead.
"""

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import sys
import warnings
from types import CoroutineType, ModuleType
from typing import Any, NoReturn

import jax
from flax import nnx

from experiments import config as config_lib
from experiments import parallel, runner, tasks
from experiments.errors import USER_ERRORS


class UsageError(ValueError):
    """A bad command line: the message lists the valid choices."""


def _holds_checkpoints(workdir: pathlib.Path) -> bool:
    folder = workdir / "checkpoints"
    return folder.is_dir() and any(folder.iterdir())


def resolve_config(args: argparse.Namespace, task: ModuleType, workdir: pathlib.Path):
    """The run's config: the saved one when resuming, else preset + overrides."""
    saved = workdir / "config.json"
    if args.resume and not saved.exists():
        if _holds_checkpoints(workdir):
            raise UsageError(
                f"--resume: {saved} is missing, but {workdir / 'checkpoints'} holds "
                "checkpoints; the run is rebuilt from its saved config, so put config.json "
                "back, or start a new --workdir"
            )
        raise UsageError(f"{workdir} holds no run to resume; drop --resume to start one")
    if args.resume:
        if args.preset or args.overrides or args.model:
            raise UsageError(
                f"--resume continues {workdir} under its saved config ({saved}); drop "
                "--model/--preset/--set, or start a new --workdir"
            )
        config = config_lib.load(task.Config, saved)
    else:
        if _holds_checkpoints(workdir):
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
        "--debug",
        action="store_true",
        help="show the traceback of an error instead of its one-line message, and what "
        "libraries report while cleaning up after it (also with ZOO_DEBUG=1)",
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


def _debugging(args: argparse.Namespace) -> bool:
    return args.debug or os.environ.get("ZOO_DEBUG", "") not in ("", "0")


def _fail(error: BaseException, *, debug: bool, message: str | None = None) -> NoReturn:
    """Stop on a user's mistake: ``error: MESSAGE`` (the error's own by default), or with
    ``debug`` its traceback. Called in the ``except`` block of ``error``."""
    if debug:
        raise error
    raise SystemExit(f"error: {error if message is None else message}") from None


def _unusable_workdir(workdir: pathlib.Path, error: OSError) -> str:
    if workdir.exists() and not workdir.is_dir():
        return f"--workdir {workdir} is a file, not a directory; choose another --workdir"
    return f"cannot write the run directory {workdir}: {error}"


# Where the orbax/tensorstore frames of a traceback live.
_CHECKPOINTING = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorstore{os.sep}")


def _from_checkpointing(error: BaseException | None, culprit: Any = None) -> bool:
    """Whether ``error`` is what orbax leaves behind when a read or write of it fails.

    A failed restore (say, of a checkpoint of another model size) raises its error through
    orbax's API, which the runner reports as a CheckpointError; but orbax gathers its reads as
    asyncio tasks on event loops of its own, and the siblings of the one that failed are
    abandoned: Python later reports each (an exception in a coroutine collected unfinished, a
    future whose exception nobody read), and tensorstore's callbacks into the loops orbax has
    closed by then raise "Event loop is closed", dozens of tracebacks in all, which bury the
    one message that says what is wrong.
    """
    if isinstance(culprit, CoroutineType) and any(
        part in culprit.cr_code.co_filename for part in _CHECKPOINTING
    ):
        return True
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return True
        tb = error.__traceback__
        while tb is not None:
            if any(part in tb.tb_frame.f_code.co_filename for part in _CHECKPOINTING):
                return True
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    return False


def _hide_checkpointing_leftovers() -> None:
    """Silence the reports of :func:`_from_checkpointing`: each follows an error that orbax
    raised to its caller, which reports it (--debug shows them all)."""
    if getattr(sys.unraisablehook, "hides_checkpointing_leftovers", False):
        return
    report = sys.unraisablehook

    def unraisablehook(unraisable: Any) -> None:
        if not _from_checkpointing(unraisable.exc_value, unraisable.object):
            report(unraisable)

    unraisablehook.hides_checkpointing_leftovers = True  # type: ignore[attr-defined]
    sys.unraisablehook = unraisablehook

    def keep(record: logging.LogRecord) -> bool:
        return not (record.exc_info and _from_checkpointing(record.exc_info[1]))

    # asyncio logs "... exception was never retrieved" of a future it collects; orbax (through
    # absl) the error of each of its threads, before it raises the first to its caller.
    for name in ("asyncio", "absl"):
        logging.getLogger(name).addFilter(keep)
    # The zoo runs no coroutines of its own: the ones never awaited are orbax's abandoned reads.
    warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    debug = _debugging(args)
    if not debug:
        _hide_checkpointing_leftovers()
    if args.distributed:
        jax.distributed.initialize()  # before anything touches a device
    lead = jax.process_index() == 0  # the process that writes and prints
    try:
        task = tasks.load(args.experiment)
        workdir = args.workdir or pathlib.Path(
            "runs", f"{args.experiment}-{args.model or task.MODELS[0]}-{args.preset or 'tiny'}"
        )
        config = resolve_config(args, task, workdir)
        # The devices the run asks for exist, before any data or compile work.
        parallel.make_mesh(config.train.devices, config_lib.mesh_axes(config.train.mesh))
    except (ValueError, OSError) as error:  # UsageError, bad --set values, unreadable config
        _fail(error, debug=debug)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file, a read-only or full disk
        _fail(error, debug=debug, message=_unusable_workdir(workdir, error))
    try:
        setup = task.setup(config, workdir)
    except (ValueError, OSError, *USER_ERRORS) as error:  # contradicting settings, missing data
        _fail(error, debug=debug)
    if lead:  # the config with what the data decided (vocabulary sizes, channels) filled in
        try:
            config_lib.save(setup.config, workdir / "config.json")
        except OSError as error:
            _fail(error, debug=debug, message=_unusable_workdir(workdir, error))
        print(f"{args.experiment}: {json.dumps(config_lib.to_dict(setup.config), indent=1)}")
    params = sum(x.size for x in jax.tree.leaves(nnx.state(setup.model, nnx.Param)))
    if lead:
        name = type(setup.model).__name__
        print(f"model: {name}, {params:,} parameters; run directory {workdir}")
    try:
        metrics = runner.train(setup, config.train, workdir, resume=args.resume)
    except (OSError, *USER_ERRORS) as error:  # no intact checkpoint to resume from, full disk
        _fail(error, debug=debug)
    if lead:
        print("final: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return metrics


if __name__ == "__main__":
    main()
