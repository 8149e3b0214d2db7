"""A grid: its points (one value of every axis x a seed), each point's config and launch.py
command, and the results row of a point's workdir. Shared by the sweep and Fig. 1's
learning-rate search (which adds its own points)."""

import dataclasses
import importlib.util
import itertools
import json
import pathlib
import shlex

from alexnet_jax import metrics

REPO = pathlib.Path(__file__).resolve().parents[2]


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
        return f'{self.name}/seed{self.seed}'


def expand(sweep) -> list:
    """The grid's points: the product of the axes' values, times the seeds."""
    points = []
    for values in itertools.product(*sweep.axes):
        for seed in range(sweep.num_seeds):
            overrides = dict(sweep.base_overrides)
            for _, axis_overrides in values:
                overrides.update(dict(axis_overrides))
            overrides['seed'] = seed
            points.append(Point(tuple(label for label, _ in values), seed,
                                tuple(sorted(overrides.items()))))
    return points


def load_base_config(spec: str):
    """`configs/alexnet.py:digits` -> that file's get_config('digits'), as config_flags does."""
    path, _, arg = spec.partition(':')
    file = pathlib.Path(path) if pathlib.Path(path).is_absolute() else REPO / path
    module_spec = importlib.util.spec_from_file_location(f'_sweep_base_{file.stem}', file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


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
    row = {'point': point.name, 'seed': point.seed, 'status': 'missing', 'reason': '',
           'test_top1_error': '', 'test_top5_error': '', 'steps_to_threshold': '',
           'epochs_to_threshold': '', 'train_seconds': ''}
    workdir = pathlib.Path(workdir)
    if (workdir / 'failed.json').exists():
        row.update(status='failed', reason=json.loads((workdir / 'failed.json').read_text())['reason'])
    if (workdir / 'results.json').exists():
        r = json.loads((workdir / 'results.json').read_text())
        row.update(status='done', test_top1_error=1 - r['test_top1'],
                   test_top5_error=1 - r['test_top5'], train_seconds=r.get('train_seconds', ''))
    curve = training_error_curve(metrics.read_history(workdir))
    hit = next(((step, epoch) for step, epoch, error in curve if error <= sweep.threshold), None)
    if hit is not None:
        row.update(steps_to_threshold=hit[0], epochs_to_threshold=hit[1])
    return row


def training_error_curve(history) -> list:
    """(step, epoch, training error over the epoch that ends there), as Fig. 1 plots it.

    Averaging over the last epoch's log records keeps one lucky batch from crossing the
    threshold early; before the first epoch ends, the average is over the steps so far.
    """
    train = [h for h in history if h['split'] == 'train']
    curve = []
    for h in train:
        window = [1 - g['top1'] for g in train if h['epoch'] - 1 < g['epoch'] <= h['epoch']]
        curve.append((h['step'], h['epoch'], sum(window) / len(window)))
    return curve
