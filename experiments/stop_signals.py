"""Ctrl-C and SIGTERM during training, acted on between steps (``StopSignals``)."""

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["StopSignals"]


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (what a cluster scheduler sends before it kills a job) while
    training: recorded by a handler, acted on by the loop between steps.

    Python's default, raising KeyboardInterrupt wherever the signal lands, could stop the loop
    after it drew a batch but before it counted the step (the checkpoint's data position would
    then be one batch ahead of its step: the resumed run would skip that batch), or inside the
    jitted step after it consumed (donated) the arrays a checkpoint saves. So the first signal
    is only recorded, and the loop saves and stops once the step in progress is done, its
    evaluation and checkpoint included: an evaluation cut short would leave the step without
    its best/ checkpoint, and the resumed run, which starts after that step, would never
    evaluate it.

    A second signal quits at once without saving (the latest checkpoint stays), so nobody has to
    wait out a long evaluation; but never inside a checkpoint save. Orbax would leave the
    previous checkpoint intact (it writes into a temporary directory and renames it), but
    raising inside its save can strand its threads and the temporary directory, while the save
    itself takes seconds: the signal is noted and the run stops right after the save. Once the
    last step is saved there is nothing to lose, and a signal quits at once.
    """

    def __init__(self, *, active: bool):
        """``active``: print what it does (the process that prints)."""
        self.signal: int | None = None  # the first signal received
        self._active = active
        self._saving = False
        self._all_saved = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        # Python calls handlers in the main thread only, and lets only it install them.
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal is None and not self._all_saved:
            self.signal = signum
            self._notify(
                f"{name}: stopping once the step in progress is done and saved; "
                "again to stop without saving"
            )
            return
        self.signal = self.signal or signum
        if self._saving:
            self._notify(f"{name}: saving a checkpoint; stopping as soon as it is written")
            return
        raise KeyboardInterrupt

    def _notify(self, text: str) -> None:
        # Straight to the file descriptor: the handler may run in the middle of another write
        # to sys.stderr, whose buffer refuses to be entered twice. A captured stderr without a
        # descriptor gets nothing.
        if self._active:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                os.write(sys.stderr.fileno(), f"\n{text}\n".encode())

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def requested(self) -> bool:
        """Whether a signal came, to any process: they all stop after the same step, since
        each step and checkpoint is a collective of all of them."""
        asked = self.signal is not None
        if jax.process_count() > 1:
            asked = bool(multihost_utils.process_allgather(np.int32(asked)).max())
        return asked

    def all_saved(self) -> None:
        """The last step is saved: a signal from now on quits at once (so does one already in)."""
        self._all_saved = True
        if self.signal is not None:
            raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        # One code for "interrupted, saved, continue with --resume", whichever signal asked:
        # the shell's code for Ctrl-C (128 + SIGINT), so scripts need to test for one value.
        return 128 + signal.SIGINT
