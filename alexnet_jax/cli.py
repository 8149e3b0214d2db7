"""Shared command-line plumbing: `--config` flags that fail with one clear line, not a traceback.

Every entry point (launch.py, summary, sweep, evaluate, ...) does

    cli.define_config_flag()
    app.run(main, flags_parser=cli.parse_flags)

and calls `cli.validated_config()` in main.
"""

import logging
import sys

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from alexnet_jax import validation


def define_config_flag(default: str | None = 'configs/alexnet.py') -> None:
    config_flags.DEFINE_config_file(
        'config', default, 'Config file, optionally with a variant: configs/alexnet.py:digits. '
        'Override fields with --config.model.activation=tanh etc.', lock_config=True)


def fail(message: str, code: int = 2):
    """Prints `error: message` to stderr and exits; for bad user input, not for bugs."""
    sys.stderr.write(f'error: {message}\n')
    sys.exit(code)


def _one_line(error: BaseException) -> str:
    # ml_collections wraps a KeyError's "did you mean" text in a repr inside an AttributeError.
    text = str(error.args[0]) if error.args else str(error)
    if 'Traceback (most recent call last)' in text:  # A config file that raised: keep its error.
        text = [l for l in text.splitlines() if l.strip()][-1]
    while text[:1] in '\'"' and text[-1:] == text[:1]:
        text = text[1:-1]
    return ' '.join(text.replace('\\n', ' ').replace("\\'", "'").split())


class _QuietLibraries(logging.Filter):
    """Drops the INFO chatter of orbax, TFDS and XLA's backend probing from the console (their
    warnings and errors still show), so the run's own progress lines are readable."""
    NOISY = ('/orbax/', '/tensorflow_datasets/', 'xla_bridge.py', '/clu/metric_writers/')

    def filter(self, record):
        return record.levelno >= logging.WARNING or not any(
            part in record.pathname for part in self.NOISY)


def parse_flags(argv):
    """absl `flags_parser`: a typo or bad value in --config.* exits with one line, code 2.

    Also quiets third-party INFO logs (see `_QuietLibraries`).
    """
    absl_logging.get_absl_handler().addFilter(_QuietLibraries())
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(_one_line(e))
    except (AttributeError, KeyError, ValueError, TypeError, OSError) as e:
        fail(f'bad --config ({type(e).__name__}): {_one_line(e)}')


def validated_config():
    """The parsed `--config`, validated; a bad field exits with one line naming it."""
    config = flags.FLAGS.config
    if config is None:
        fail('--config is required, e.g. --config=configs/alexnet.py:digits')
    try:
        validation.validate_config(config)  # Also where a lazily loaded config file is read.
    except validation.ConfigError as e:
        fail(str(e))
    except OSError as e:
        fail(f'cannot load --config: {" ".join(str(e).split())}')
    return config
