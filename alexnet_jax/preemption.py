"""Preemption: SIGTERM/SIGINT become a request to save a checkpoint and stop cleanly."""

import signal

from absl import logging
import jax
import numpy as np


class PreemptionGuard:
    """SIGTERM/SIGINT set `.requested`; the loop asks `should_stop` every step, then saves and
    exits. A second SIGINT aborts at once; the old handlers come back on exit. On several hosts
    a signal may reach only some, and all must save, so `should_stop` asks all of them (a
    collective) every `every` steps."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # Not the main thread: signals cannot be caught here.
            self._restore_handlers()
            logging.warning('PreemptionGuard outside the main thread: SIGTERM/SIGINT not caught.')
        return self

    def __exit__(self, *exc):
        self._restore_handlers()
        return False

    def _restore_handlers(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            previous = self._previous.get(signal.SIGINT, signal.default_int_handler)
            self._restore_handlers()
            logging.warning('Second SIGINT: aborting without a checkpoint.')
            if callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt
        if not self.requested:
            self.requested = True
            self.signal_name = name
            logging.warning('Received %s: will save a checkpoint and stop after this step%s.',
                            name, ' (Ctrl-C again to abort at once)' if signum == signal.SIGINT else '')

    def any_requested(self) -> bool:
        """True on every process if any process was signalled (a collective on >1 process)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
        flags = multihost_utils.process_allgather(np.asarray([self.requested], np.int32))
        return bool(np.asarray(flags).any())

    def should_stop(self, step: int, every: int) -> bool:
        """Signalled (on any host)? Hosts agree only every `every` steps, to stay in step."""
        if jax.process_count() == 1:
            return self.requested
        return step % max(every, 1) == 0 and self.any_requested()
