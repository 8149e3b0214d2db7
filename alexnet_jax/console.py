"""What reaches the console: third-party chatter filtered out, so a run's own lines (and an
error's one line) are what a user reads. Every entry point and every seed worker calls `quiet`.
"""

import logging
import sys

from absl import logging as absl_logging


class QuietLibraries(logging.Filter):
    """Drops the INFO chatter of orbax, TFDS, XLA's backend probing and clu (its writers echo
    every scalar; ReportProgress's work-unit notes) from the console (their warnings and errors
    still show), so the run's own progress lines are readable. Also drops orbax's errors about
    a full disk: each of its save threads logs one with a traceback, and the run then stops
    with the one line of `user_message`, which names the path."""
    NOISY = ('/orbax/', '/tensorflow_datasets/', 'xla_bridge.py', '/clu/metric_writers/',
             '/clu/platform/')

    def filter(self, record):
        if '/orbax/' in record.pathname and NO_SPACE in str(record.msg) + str(record.exc_info):
            return False
        return record.levelno >= logging.WARNING or not any(
            part in record.pathname for part in self.NOISY)


NO_SPACE = 'No space left on device'


def unraisable(error) -> None:
    """sys.unraisablehook: drops 'Event loop is closed' from tensorstore write callbacks that
    finish after orbax closed the loop of a save that failed (a full disk: dozens of them);
    that save's own error is what the run reports."""
    if not (isinstance(error.exc_value, RuntimeError)
            and str(error.exc_value) == 'Event loop is closed'):
        sys.__unraisablehook__(error)


def quiet() -> None:
    """Installs `QuietLibraries` on absl's handler and `unraisable` as sys.unraisablehook."""
    absl_logging.get_absl_handler().addFilter(QuietLibraries())
    sys.unraisablehook = unraisable
