"""Shared command-line plumbing: flags and errors that end in one clear line, not a traceback.

Every entry point decorates `main` with `one_line_errors` and runs
`app.run(main, flags_parser=cli.parse_flags)`. The error policy, in one place
(`user_message`): a `UserError` and the machine's refusals the user fixes (no space, no
permission, read-only file system) print `error: <one line>` and exit 1; a bug keeps its
traceback.
"""

import errno
import functools
import importlib.util
import os
import re
import sys

from absl import flags
from etils import epy
from ml_collections import config_flags

from alexnet_jax import console
from alexnet_jax import errors

with epy.lazy_imports():  # They load jax; `--help` and a bad flag should not wait for it.
    from flax import traverse_util
    from alexnet_jax import validation
    from alexnet_jax import workdirs

UserError = errors.UserError
InputError = errors.InputError

# OS errors that report the machine's state, not a bug; the message names the path.
_MACHINE_ERRNOS = {
    errno.ENOSPC: 'no space left on the device',
    errno.EDQUOT: 'disk quota exceeded',
    errno.EACCES: 'permission denied',
    errno.EPERM: 'operation not permitted',
    errno.EROFS: 'read-only file system',
}
# What to do about each: nothing frees space on a read-only mount.
_FULL = 'free some space or use another directory; then rerun'
_FIX = {errno.ENOSPC: _FULL, errno.EDQUOT: _FULL,
        errno.EACCES: 'fix the permissions or use another directory; then rerun',
        errno.EPERM: 'fix the permissions or use another directory; then rerun',
        errno.EROFS: 'use a directory on a writable file system; then rerun'}


def define_config_flag(default: str | None = 'configs/alexnet.py') -> None:
    config_flags.DEFINE_config_file(
        'config', default, 'Config file, optionally with a variant: configs/alexnet.py:digits. '
        'Override fields with --config.model.activation=tanh etc.', lock_config=True)
    # Listed by --help (absl shows the main module's key flags), with its variants: `parse_flags`.
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS['config'])
    parser = flags.FLAGS['config'].parser
    by_first_colon = parser.parse

    def parse(spec):  # config_flags splits at the first colon: a directory may hold one.
        spec = os.path.expanduser(spec)  # As every other path flag: ~/configs/alexnet.py.
        file = split_config_spec(spec)[0]
        if not os.path.isfile(file):
            raise FileNotFoundError(f'{file}: no such config file')
        if ':' not in file:
            return by_first_colon(spec)
        config = load_config_file(spec)
        config.lock()
        return config
    parser.parse = parse


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


_HELP = ('--help', '-help', '--helpshort', '-h', '-?', '--helpfull')


def parse_flags(argv):
    """absl `flags_parser`: a bad --config.* exits with one line, code 2; quiets the console;
    `--help` lists the --config file's variants and exits 0."""
    console.quiet()
    if any(a in _HELP for a in argv[1:argv.index('--') if '--' in argv else None]):
        _describe_config_flag()
        try:
            flags.FLAGS(argv)
        except SystemExit as e:  # absl's help exits 1; help asked for is a success.
            sys.exit(0 if e.code == 1 else e.code)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(_one_line(e))
    except (AttributeError, KeyError, ValueError, TypeError, OSError) as e:
        fail(f'bad --config ({type(e).__name__}): {_one_line(e)}')


def _describe_config_flag() -> None:
    """Adds the default --config file's variants (VARIANTS) or grids (GRIDS) to its help."""
    flag = flags.FLAGS['config']
    given = flag.default_as_str  # Not .default: that loads the file.
    spec = given.strip("'") if given not in (None, "'None'") else 'configs/alexnet.py'
    path = split_config_spec(spec)[0]
    try:
        module = _load_module(path)
    except (OSError, ImportError):
        return
    kind, names, doc = (('grids', module.GRIDS, 'docs/ablations.md') if hasattr(module, 'GRIDS')
                        else ('variants', getattr(module, 'VARIANTS', {}), 'docs/training.md'))
    flag.help += (f' {path} {kind}: {", ".join(names)} (e.g. --config={path}:{next(iter(names))})'
                  f'. Each field is described by its comment in {path}; see also {doc}.')


def use_compilation_cache() -> str | None:
    """Turns on XLA's persistent compilation cache (returns its directory), so reruns and the
    seeds of a sweep load their steps instead of compiling them; jax's JAX_COMPILATION_CACHE_DIR
    and JAX_ENABLE_COMPILATION_CACHE win; the default is $XDG_CACHE_HOME/alexnet_jax/xla."""
    import jax  # pylint: disable=import-outside-toplevel  (not needed by every tool)
    if not jax.config.jax_enable_compilation_cache:
        return None
    if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
        # Also the programs that compile in under a second (jax's default skips them): a
        # run's init and small helpers add up to seconds, and loading them is quicker.
        jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    if jax.config.jax_compilation_cache_dir is None:
        root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
        jax.config.update('jax_compilation_cache_dir', os.path.join(root, 'alexnet_jax', 'xla'))
    return jax.config.jax_compilation_cache_dir


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


def config_file() -> str:
    """The --config value as given: 'configs/alexnet.py:digits'."""
    return config_flags.get_config_filename(flags.FLAGS['config'])


def default_config():
    """The --config file's own `get_config(variant)`: the config before the overrides."""
    return load_config_file(config_file())


def split_config_spec(spec: str) -> tuple:
    """'path[:variant]' -> (path, variant or ''); a colon in a directory name is the path's."""
    return spec.rpartition(':')[::2] if ':' in spec.split('/')[-1] else (spec, '')


def load_config_file(spec: str, root: str = ''):
    """'path[:variant]' -> that file's get_config(variant), as config_flags loads it; a
    relative path is taken from `root` (default: the current directory)."""
    path, arg = split_config_spec(os.path.expanduser(spec))
    module = _load_module(os.path.join(root, path))
    return module.get_config(arg) if arg else module.get_config()


def _load_module(path: str):
    module_spec = importlib.util.spec_from_file_location('_config_file', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def config_changes(config, defaults) -> list:
    """'field: default -> value' for every field of `config` that differs from `defaults`
    (command-line overrides and the values derived from them)."""
    flat = lambda c: traverse_util.flatten_dict(c.to_dict(), sep='.')  # noqa: E731
    new, old = flat(config), flat(defaults)
    return [f'{k}: {old.get(k, "(none)")!r} -> {v!r}' for k, v in new.items()
            if k not in old or old[k] != v]


def _causes(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def user_message(error: BaseException) -> str | None:
    """The one line to print for an error the user fixes; None for a bug (keep the traceback)."""
    if isinstance(error, errors.UserError):
        return ' '.join(str(error).split())
    for e in _causes(error):
        if isinstance(e, OSError) and e.errno in _MACHINE_ERRNOS:
            where = f': {e.filename}' if e.filename else ''
            return f'{_MACHINE_ERRNOS[e.errno]}{where}; {_FIX[e.errno]}.'
        if console.NO_SPACE in str(e):  # tensorstore (orbax) reports it as text, with the path.
            path = re.search(r'(?:local file|Failed writing:) "([^"]+)"', str(e))
            where = f': {path[1].split(".orbax-checkpoint-tmp")[0]}' if path else ''
            return f'no space left on the device{where} ({type(e).__name__}); {_FULL}.'
    return None


def one_line_errors(main):
    """Decorates a CLI's `main(argv)` with the error policy above."""
    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except Exception as e:  # pylint: disable=broad-except  (re-raised unless a user error)
            message = user_message(e)
            if message is None:
                raise
            fail(message, code=1)
    return wrapped


def local_path(value: str | None, flag: str) -> str | None:
    """A path flag made absolute, once, at the entry point (orbax needs absolute paths); URLs
    (gs://...) are kept. An empty value is an error, not the current directory."""
    if value is None:
        return None
    if not value.strip():
        raise InputError(f'{flag} is empty; give a directory, e.g. {flag}=/tmp/run.')
    if workdirs.is_url(value):
        return value
    return os.path.abspath(os.path.expanduser(value))
