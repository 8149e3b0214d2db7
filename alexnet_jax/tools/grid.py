"""A grid: its points (one value of every axis x a seed), each point's config and launch.py
command, and the results row of a point's workdir. Shared by the sweep and Fig. 1's
learning-rate search (which adds its own points)."""

import dataclasses
import itertools
import json
import math
import pathlib
import shlex

from flax import traverse_util
import ml_collections

from alexnet_jax import cli
from alexnet_jax import errors
from alexnet_jax import workdirs

REPO = pathlib.Path(__file__).resolve().parents[2]
SEARCH_SEED0 = 1000  # Fig. 1's learning-rate search seeds start here (lr_search.py).


@dataclasses.dataclass(frozen=True)
class Point:
    labels: tuple        # One label per axis, e.g. ('tanh', 'nolrn').
    seed: int
    overrides: tuple     # (('model.activation', 'tanh'), ...): the point's --config.* flags.

    @property
    def name(self) -> str:
        return '_'.join(self.labels)

    @property
    def dirname(self) -> str:
        return str(workdirs.seed_dir(self.name, self.seed))


def check_sweep(sweep) -> None:
    """The grid's own fields, in one line each (a point's config is validation's)."""
    for field in ('num_seeds', 'first_seed'):
        value = sweep.get(field, 0)
        least = 1 if field == 'num_seeds' else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise errors.ConfigError(f'config.{field}: must be an integer >= {least}, got {value!r}.')
    search = range(SEARCH_SEED0, SEARCH_SEED0 + int(sweep.get('lr_search_seeds', 0)))
    if tuple(sweep.get('lr_search_rates', ())) and set(seeds(sweep)) & set(search):
        raise errors.ConfigError(
            f'config.first_seed: the seeds {seeds(sweep)[0]}..{seeds(sweep)[-1]} overlap the '
            f'learning-rate search\'s {search[0]}..{search[-1]}: a reported run must not be '
            f'the one its rate was chosen on; choose seeds below {SEARCH_SEED0}.')
    for field in ('base_overrides', 'overrides'):
        pairs = sweep.get(field, ())
        if not isinstance(pairs, (tuple, list)) or not all(
                isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str)
                for p in pairs):
            raise errors.ConfigError(
                f'config.{field}: must be a tuple of (field, value) pairs, e.g. '
                f"\"(('train.num_epochs', 2.0),)\", got {pairs!r}.")


def seeds(sweep) -> range:
    """The grid's seeds: first_seed .. first_seed + num_seeds - 1 (a replication: new ones)."""
    first = int(sweep.get('first_seed', 0))
    return range(first, first + sweep.num_seeds)


def thresholds(sweep) -> tuple:
    """The training errors whose epochs-to are reported (sweep.threshold among them), high first."""
    return tuple(sorted({sweep.threshold, *sweep.get('thresholds', ())}, reverse=True))


def threshold_column(threshold: float) -> str:
    return f'epochs_to_{threshold:.0%}'.replace('%', 'pct')


def expand(sweep) -> list:
    """The grid's points: the product of the axes' values, times the seeds."""
    points = []
    for values in itertools.product(*sweep.axes):
        for seed in seeds(sweep):
            # The user's overrides extend the grid's base ones; the axes' values come last.
            overrides = {**dict(sweep.base_overrides), **dict(sweep.get('overrides', ()))}
            for _, axis_overrides in values:
                overrides.update(dict(axis_overrides))
            overrides['seed'] = seed
            points.append(Point(tuple(label for label, _ in values), seed,
                                tuple(sorted(overrides.items()))))
    return points


def load_base_config(spec: str):
    """`configs/alexnet.py:digits` (relative to the repository) -> its get_config('digits')."""
    return cli.load_config_file(spec, root=str(REPO))


def set_field(config, path: str, value) -> None:
    *parents, leaf = path.split('.')
    node = config
    for key in parents:
        node = node[key]
    if leaf not in node:
        raise KeyError(f'config has no field {path!r} (sweep override)')
    node[leaf] = value


def point_config(sweep, point: Point):
    config = load_base_config(sweep.base)
    for path, value in point.overrides:
        set_field(config, path, value)
    return config


# Fields that decide how a point's seeds run, not what they train: a rerun may change them.
NOT_DEFINING = ('seed', 'num_seeds', 'seeds_mode', 'seed_workers', 'train.async_checkpoints',
                'train.keep_checkpoints', 'train.checkpoint_every_steps', 'train.plot',
                'train.eval_batch_size', 'data.data_dir', 'data.num_parallel_calls', 'data.cache')


class DefinitionError(errors.UserError):
    """A rerun of a sweep point whose definition (base config, overrides) changed."""


def definition(config) -> dict:
    """What defines a point's runs: every config field but NOT_DEFINING ones (JSON values)."""
    flat = traverse_util.flatten_dict(config.to_dict(), sep='.')
    return json.loads(json.dumps({k: v for k, v in sorted(flat.items())
                                  if k not in NOT_DEFINING}, default=str))


def check_definition(sweep, point: Point, group, record: bool = True) -> None:
    """Refuses (DefinitionError, one line) a point whose directory was trained with another
    definition; else (`record`) records it beside the point's seeds (workdirs.write_point). A
    directory from before that record is checked against its seeds' configs. More seeds of the
    same definition are welcome. A record with no seed started beside it (a rerun after a user
    error) is replaced."""
    group = pathlib.Path(group)
    ours = definition(point_config(sweep, point))
    saved = workdirs.read_point(group)
    if saved is not None:
        recorded = {group: saved['config']}
    else:
        recorded = {p: definition(ml_collections.ConfigDict(c))
                    for p, c in workdirs.seed_configs(group).items()}
    for where, theirs in recorded.items():
        changed = [f'{k}: {theirs[k]!r} -> {ours[k]!r}'  # A field only one side has: code.
                   for k in sorted(ours.keys() & theirs.keys()) if ours[k] != theirs[k]]
        if changed:
            raise DefinitionError(
                f'{group} was trained with another definition ({where}): '
                f'{"; ".join(changed[:6])}{"; ..." if len(changed) > 6 else ""}. Its results '
                f'are not this grid\'s: set those back to rerun it, or use a new --workdir.')
    if saved is None and record:
        overrides = {k: v for k, v in point.overrides if k != 'seed'}
        workdirs.write_point(group, {'base': sweep.base, 'overrides': overrides, 'config': ours})


def _flag_value(value) -> str:
    if isinstance(value, (tuple, list)):
        return shlex.quote('(' + ','.join(repr(v) for v in value) + ',)')
    return shlex.quote(str(value))


def command(sweep, point: Point, root) -> str:
    """The `python launch.py ...` line that trains this point (for a cluster scheduler)."""
    flags_ = ' '.join(f'--config.{k}={_flag_value(v)}' for k, v in point.overrides)
    workdir = pathlib.Path(root) / point.dirname
    return f'python launch.py --config={sweep.base} {flags_} --workdir={shlex.quote(str(workdir))}'


def result_row(sweep, point: Point, workdir) -> dict:
    """A run's row of results.csv: status, test errors, epochs (and steps) to each threshold
    ('' if never reached; `epochs_trained` says how long it ran), the diagnostics at init and
    at the end (`init/<key>`, `final/<key>`: diagnostics.py); and `test_correct` (the test
    examples' top-1 hits, '0'/'1', for the statistics, not the csv)."""
    row = {'point': point.name, 'seed': point.seed, 'status': 'missing', 'reason': '',
           'test_top1_error': '', 'test_top5_error': '', 'steps_to_threshold': '',
           'epochs_to_threshold': '', 'train_seconds': '', 'epochs_trained': '',
           **{threshold_column(t): '' for t in thresholds(sweep)}, 'test_correct': ''}
    reason, r = workdirs.read_failure(workdir), workdirs.read_results(workdir)
    if reason is not None:
        row.update(status='failed', reason=reason)
    if r is not None:
        row.update(status='done', test_top1_error=1 - r['test_top1'],
                   test_top5_error=1 - r['test_top5'], train_seconds=r.get('train_seconds', ''),
                   test_correct=r.get('test_correct', ''))
        for when, stats in r.get('diagnostics', {}).items():
            row.update({f'{when}/{k}': v for k, v in stats.items()})
    curve = training_error_curve(workdir)
    if curve:
        row['epochs_trained'] = curve[-1][1]
    for t in thresholds(sweep):
        hit = next(((step, epoch) for step, epoch, error in curve if error <= t), None)
        if hit is not None:
            row[threshold_column(t)] = hit[1]
            if t == sweep.threshold:
                row.update(steps_to_threshold=hit[0], epochs_to_threshold=hit[1])
    return row


def training_error_curve(workdir) -> list:
    """(step, epoch, training error over the epoch that ends there) of a run, as Fig. 1 plots it.

    A function of the training trajectory, not of where log records fell (a preemption adds
    one): the records (each the mean since the one before) are pooled, weighted by their steps,
    into windows of train.log_every_steps steps; each window's end gets the mean of the windows
    of the epoch ending there (before the first epoch ends, the steps so far), so one lucky
    batch does not cross the threshold early."""
    train = [h for h in workdirs.read_metrics(workdir) if h['split'] == 'train']
    if not train:
        return []
    return epoch_mean_curve(train, workdirs.read_config(workdir).train.log_every_steps)


def epoch_mean_curve(train: list, every: int) -> list:
    """training_error_curve's (step, epoch, error) from training records ({'step', 'epoch',
    'top1'}, in step order; each the mean since the one before), pooled into windows of
    `every` steps."""
    every = max(1, every)
    steps_per_epoch = train[-1]['step'] / train[-1]['epoch']
    windows = {}  # Window index -> [sum of error x steps, steps, last step].
    previous = 0
    for h in train:
        w = windows.setdefault(math.ceil(h['step'] / every), [0.0, 0, 0])
        steps, previous = h['step'] - previous, h['step']
        w[0] += (1 - h['top1']) * steps
        w[1] += steps
        w[2] = h['step']
    windows = list(windows.values())  # In step order.
    curve, first = [], 0
    for k, (_, _, end) in enumerate(windows):
        while windows[first][2] <= end - steps_per_epoch:
            first += 1
        inside = windows[first:k + 1]
        curve.append((end, end / steps_per_epoch,
                      sum(w[0] for w in inside) / sum(w[1] for w in inside)))
    return curve
