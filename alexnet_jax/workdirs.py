"""A workdir's layout, owned here: every name in it, `seed<k>/`, the lock, and the readers and
writers of its records. Other modules ask this one for a path or a record, never build one.

  config.json          the full config (the net and preprocessing of its checkpoints)
  checkpoints/<step>/  orbax steps (checkpoints.py); checkpoints_corrupt/ the unreadable ones
  metrics.jsonl        every logged, validation, test and diagnostics record (metrics.py)
  learning_curves.png  drawn from metrics.jsonl
  results.json         the finished run's test metrics; failed.json why it stopped instead
  eval/results.json    config.eval_only's (evaluation.py); the training results stay
  seed<k>/             each seed of several, laid out as the above
  point.json           a sweep point's definition, beside its seeds (tools/grid.py)
"""

import errno
import fcntl
import json
import os
import re

from absl import logging
from etils import epath
import jax
import ml_collections

from alexnet_jax import errors
from alexnet_jax import records

CONFIG = 'config.json'
CHECKPOINTS = 'checkpoints'
CORRUPT = 'checkpoints_corrupt'   # Unreadable steps are moved here, never deleted.
METRICS = 'metrics.jsonl'
CURVES = 'learning_curves.png'
RESULTS = 'results.json'
FAILED = 'failed.json'
EVAL = 'eval'
POINT = 'point.json'

# What each record's readers need of it (records.check): a damaged one is a one-line error.
CONFIG_SHAPE = {'model': dict, 'data': dict, 'train': dict}
RESULTS_SHAPE = {'test_top1': records.NUMBER, 'test_top5': records.NUMBER}
FAILED_SHAPE = {'reason': str}
POINT_SHAPE = {'config': dict}
METRIC_SHAPE = {'step': records.NUMBER, 'epoch': records.NUMBER, 'split': str}
SCORES_SHAPE = {'loss': records.NUMBER, 'top1': records.NUMBER}  # train, val, test lines.


class WorkdirError(errors.UserError):
    """The workdir is a file, cannot be created or written, another run is using it, or it has
    no config.json or checkpoint to read."""


class LayoutError(errors.UserError):
    """A run of one seed in a workdir that holds several seeds' runs, or the reverse."""


def is_url(path: str) -> bool:
    """gs://bucket/..., s3://...: paths kept as they are (no flock, no abspath)."""
    return bool(re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*://', path))


def seed_dir(workdir, seed: int) -> epath.Path:
    return epath.Path(workdir) / f'seed{seed}'


def seed_runs(workdir) -> list:
    """The names of the seed<k>/ runs that started in `workdir` (each wrote its config)."""
    return sorted(p.parent.name for p in epath.Path(workdir).glob(f'seed*/{CONFIG}'))


def checkpoint_dir(workdir) -> epath.Path:
    return epath.Path(workdir) / CHECKPOINTS


def corrupt_dir(workdir) -> epath.Path:
    return epath.Path(workdir) / CORRUPT


def curves_path(workdir) -> epath.Path:
    return epath.Path(workdir) / CURVES


def has_checkpoint(workdir) -> bool:
    directory = checkpoint_dir(workdir)
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def check_layout(workdir, several: bool) -> None:
    """Refuses (one line) a one-seed run in a root of seed<k>/ dirs, and several seeds in a
    one-seed run's workdir: either would train a second run beside the first one's records."""
    root = epath.Path(workdir)
    if not root.is_dir():
        return
    runs = seed_runs(root)
    if not several and runs:
        raise LayoutError(f'{workdir} holds the runs of several seeds ({", ".join(runs)}): '
                          f'rerun with --config.num_seeds={len(runs)}, or pass one of them, '
                          f'e.g. --workdir={workdir}/{runs[0]}, or use a new --workdir.')
    if several and (root / CONFIG).is_file() and read_config(root).get('num_seeds', 1) == 1:
        raise LayoutError(f'{workdir} holds a one-seed run (its {CONFIG}): rerun it with '
                          f'--config.num_seeds=1, or use a new --workdir for several seeds.')


# -- the lock -------------------------------------------------------------------------------------

class Lock:
    """An exclusive `flock` on the workdir itself, held by process 0: the kernel drops it when
    the process dies (kill -9 included), and nothing is written for it. None on URLs and on
    file systems without flock (a warning says so)."""

    def __init__(self, fd: int | None):
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # Closing the descriptor releases the flock.
            self._fd = None


def lock(workdir) -> Lock:
    """Creates `workdir` and locks it; one-line errors for a file, no permission, a holder."""
    if jax.process_index() != 0:
        return Lock(None)
    path = epath.Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise WorkdirError(f'--workdir={workdir} is not a directory ({e.strerror}: '
                           f'{e.filename}); choose a directory path.') from None
    except PermissionError as e:
        raise WorkdirError(f'--workdir={workdir} cannot be created ({e.strerror}: '
                           f'{e.filename}); choose a writable directory.') from None
    except OSError as e:
        if not is_url(str(workdir)):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WorkdirError(f'--workdir={workdir} cannot be reached ({first}); check the URL, '
                           f'the network and the credentials, or use a local path.') from None
    if is_url(str(workdir)):
        return Lock(None)
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise WorkdirError(f'--workdir={workdir} is not writable; choose a writable directory '
                           f'or fix its permissions.')
    fd = os.open(workdir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WorkdirError(f'--workdir={workdir} is in use by another run (it holds the lock on '
                           f'that directory); wait for it to end or stop it, or use another '
                           f'--workdir.') from None
    except OSError as e:  # A file system without flock (some NFS setups): run unguarded.
        os.close(fd)
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL):
            raise
        logging.warning('Cannot lock %s (%s): nothing stops a second run on it.', workdir, e)
        return Lock(None)
    return Lock(fd)


# -- records --------------------------------------------------------------------------------------

def write_config(config, workdir, changes: list = ()) -> None:
    """workdir/config.json: the net and preprocessing of its checkpoints (`read_config`), and
    under 'changes' what a resume changed, from which step (`read_changes`)."""
    if jax.process_index() == 0:
        path = epath.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        record = config.to_dict()
        if changes:
            record['changes'] = list(changes)
        records.write(path / CONFIG, record, indent=2, default=str)


def read_config(directory) -> ml_collections.ConfigDict:
    """DIR/config.json (of a training workdir or a conversion) as a ConfigDict."""
    path = epath.Path(directory) / CONFIG
    if not epath.Path(directory).exists():
        raise WorkdirError(f'{directory} does not exist; pass a directory that launch.py or '
                           f'alexnet_jax.tools.convert wrote.')
    if not path.is_file():
        runs = seed_runs(directory)
        raise WorkdirError(f'{directory} has no {CONFIG}: ' + (
            f'it holds the seeds of a run ({", ".join(runs)}); pass one of them, e.g. '
            f'{directory}/{runs[0]}.' if runs else 'not a converted checkpoint or a training '
            'workdir; pass a directory that launch.py or alexnet_jax.tools.convert wrote.'))
    record = records.read(path, CONFIG_SHAPE)
    record.pop('changes', None)
    return ml_collections.ConfigDict(_tuples(record))


def read_changes(directory) -> list:
    """What resumes of the run in `directory` changed ([{'step', 'field', 'was', 'now'}])."""
    path = epath.Path(directory) / CONFIG
    return records.read(path, CONFIG_SHAPE).get('changes', []) if path.is_file() else []


def seed_configs(workdir) -> dict:
    """{path: config dict} of every seed<k>/ run in `workdir` (a sweep point's seeds)."""
    paths = [epath.Path(workdir) / run / CONFIG for run in seed_runs(workdir)]
    return {p: records.read(p, CONFIG_SHAPE) for p in paths if p.is_file()}


def write_results(workdir, results: dict) -> None:
    if jax.process_index() == 0:
        records.write(epath.Path(workdir) / RESULTS, results, indent=2)


def read_results(workdir) -> dict | None:
    """A finished run's results, or None."""
    path = epath.Path(workdir) / RESULTS
    return records.read(path, RESULTS_SHAPE) if path.exists() else None


def eval_results_path(checkpoint, output=None) -> epath.Path:
    """--output (a .json file, or a directory for results.json); default DIR/eval/results.json
    (a workdir's own results, from training, are left alone)."""
    if output:
        path = epath.Path(output)
        return path if path.suffix == '.json' else path / RESULTS
    return epath.Path(checkpoint) / EVAL / RESULTS


def record_failure(workdir, error: Exception) -> str:
    """Writes workdir/failed.json {'reason'}: the exception's type and first line; returns it."""
    reason = f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'
    logging.warning('%s failed: %s', workdir, reason)
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    records.write(workdir / FAILED, {'reason': reason})
    return reason


def read_failure(workdir) -> str | None:
    """Why a run failed (its failed.json), or None."""
    path = epath.Path(workdir) / FAILED
    return records.read(path, FAILED_SHAPE)['reason'] if path.exists() else None


def clear_failure(workdir) -> None:
    """Drops an earlier attempt's failed.json: the run that starts now records its own."""
    if jax.process_index() == 0:
        (epath.Path(workdir) / FAILED).unlink(missing_ok=True)


def append_metrics(workdir, record: dict) -> None:
    with (epath.Path(workdir) / METRICS).open('a') as f:
        f.write(json.dumps(record) + '\n')


def read_metrics(workdir) -> list:
    """metrics.jsonl's records; a record re-written after a resume replaces the older one.
    A line that is not JSON was cut by a kill -9 and is skipped; any other damage is an error."""
    path = epath.Path(workdir) / METRICS
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode('utf-8')
    except UnicodeDecodeError:
        raise records.damaged(path, 'is not UTF-8 text') from None
    latest = {}
    for number, line in enumerate(text.splitlines(), 1):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # A line cut by a kill -9.
            continue
        where = f'line {number}'
        records.check(r, METRIC_SHAPE, path, where)
        if r['split'] in ('train', 'val', 'test'):
            records.check(r, SCORES_SHAPE, path, where)
        latest[(r['split'], r['step'])] = r
    return sorted(latest.values(), key=lambda r: r['step'])


def read_point(group) -> dict | None:
    """A sweep point's recorded definition; a record with no seed started beside it (a rerun
    after a user error stopped it) is stale: dropped, None."""
    path = epath.Path(group) / POINT
    if path.exists() and not seed_runs(group):
        path.unlink()
    return records.read(path, POINT_SHAPE) if path.exists() else None


def write_point(group, record: dict) -> None:
    epath.Path(group).mkdir(parents=True, exist_ok=True)
    records.write(epath.Path(group) / POINT, record, indent=1, default=str)


def _tuples(x):  # JSON lists back to the tuples a config holds.
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x
