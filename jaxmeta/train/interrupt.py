"""SIGINT and SIGTERM during training: stop between steps, never in the middle of a save.

Python's default SIGINT handling raises ``KeyboardInterrupt`` wherever the main thread is,
e.g. inside orbax while its worker threads are writing a checkpoint, which then fail
noisily at interpreter shutdown; SIGTERM kills the process without running any cleanup.
:class:`InterruptGuard` turns both signals into :class:`Interrupted`, raised at once
between operations but postponed to the end of a :meth:`InterruptGuard.critical` section
(a checkpoint save, the metrics flush before it), so a save is either complete or not
started and the workdir resumes exactly.
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):  # noqa: N818 -- a signal, not an error
    """SIGINT or SIGTERM arrived; ``exit_code`` is the shell convention ``128 + signum``."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


class InterruptGuard:
    """While entered (in the main thread), SIGINT/SIGTERM raise :class:`Interrupted`.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self):
        self._previous: dict[int, object] = {}
        self._depth = 0
        self._pending: int | None = None

    def _handle(self, signum, frame) -> None:
        if self._depth:
            self._pending = signum
            return
        raise Interrupted(signum)

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def critical(self):
        """A section a signal must not cut: the signal takes effect when it ends."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self._pending is not None:
            signum, self._pending = self._pending, None
            raise Interrupted(signum)
