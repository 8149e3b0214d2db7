r"""Ablation sweeps: every grid point x seed through the same `train_and_evaluate` as launch.py.

  python -m alexnet_jax.sweep --config=configs/ablations.py[:grid] --workdir=DIR
  python -m alexnet_jax.sweep --config=configs/ablations.py:fig1 --workdir=DIR --print_commands

One workdir per point (`DIR/<labels>/seed<k>`), so the sweep is resumable for free: a point
with results.json is skipped, an interrupted one resumes from its checkpoint, a failed one is
recorded (failed.json, with the reason) and skipped on the next run unless --retry_failed.
At the end: DIR/results.csv, DIR/results.md (mean ± std over seeds) and the figures
DIR/fig1_training_error.png and DIR/ablation_deltas.png.
"""

import csv
import dataclasses
import importlib.util
import itertools
import json
import math
import pathlib
import shlex
import statistics
import sys

from absl import app
from absl import flags
from absl import logging

from alexnet_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS


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


def run_point(sweep, point: Point, root, *, retry_failed: bool = False) -> dict | None:
    """Trains one point unless it already finished (or failed); returns its results row, or
    None when the run was preempted (SIGTERM/SIGINT; its checkpoint resumes it next time)."""
    from alexnet_jax import train  # Heavy; not needed for --print_commands.
    workdir = pathlib.Path(root) / point.dirname
    results, failed = workdir / 'results.json', workdir / 'failed.json'
    if results.exists():
        logging.info('%s: finished earlier, skipped.', point.dirname)
    elif failed.exists() and not retry_failed:
        logging.info('%s: failed earlier (%s), skipped.', point.dirname,
                     json.loads(failed.read_text())['reason'])
    else:
        failed.unlink(missing_ok=True)
        logging.info('%s: training.', point.dirname)
        try:
            out = train.train_and_evaluate(point_config(sweep, point), str(workdir))
        except train.NonFiniteLossError as e:  # A diverging point (tanh) must not stop the grid.
            _record_failure(workdir, e)
        except cli.UserError:  # The user's to fix (data, workdir in use, disk): stop, one line.
            raise
        except Exception as e:  # pylint: disable=broad-except  (recorded, the grid goes on)
            _record_failure(workdir, e)
        else:
            if 'preempted_at_step' in out:
                return None
    return result_row(sweep, point, workdir)


def _record_failure(workdir, e):
    reason = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
    logging.warning('%s failed: %s', workdir, reason)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'failed.json').write_text(json.dumps({'reason': reason}) + '\n')


def result_row(sweep, point: Point, workdir) -> dict:
    from alexnet_jax import metrics
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


def _mean_std(values) -> tuple:
    values = [float(v) for v in values if v != '']
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(mean, std, scale=1.0, digits=2) -> str:
    return '-' if math.isnan(mean) else f'{mean * scale:.{digits}f} ± {std * scale:.{digits}f}'


def aggregate(rows) -> list:
    """Per point: mean ± std over the seeds that finished."""
    out = []
    for name in dict.fromkeys(r['point'] for r in rows):
        runs = [r for r in rows if r['point'] == name]
        done = [r for r in runs if r['status'] == 'done']
        out.append({
            'point': name, 'done': len(done), 'failed': sum(r['status'] == 'failed' for r in runs),
            'top1': _mean_std(r['test_top1_error'] for r in done),
            'top5': _mean_std(r['test_top5_error'] for r in done),
            'epochs': _mean_std(r['epochs_to_threshold'] for r in runs),
            'steps': _mean_std(r['steps_to_threshold'] for r in runs),
            'reasons': sorted({r['reason'] for r in runs if r['reason']}),
        })
    return out


def axis_effects(sweep, summary) -> list:
    """For every two-valued axis: mean top-1 error of value 2 minus value 1, over the other axes."""
    by_name = {s['point']: s for s in summary}
    effects = []
    for i, axis in enumerate(sweep.axes):
        if len(axis) != 2:
            continue
        (base, _), (ablated, _) = axis
        deltas = []
        for values in itertools.product(*[a for j, a in enumerate(sweep.axes) if j != i]):
            labels = [label for label, _ in values]
            names = ['_'.join(labels[:i] + [lab] + labels[i:]) for lab in (base, ablated)]
            a, b = (by_name.get(n, {}).get('top1', (math.nan, math.nan)) for n in names)
            deltas.append((b[0] - a[0], math.hypot(a[1], b[1])))
        effects.append({'axis': f'{ablated} vs {base}', 'key': ablated,
                        'delta': statistics.fmean(d for d, _ in deltas),
                        'std': statistics.fmean(s for _, s in deltas)})
    return effects


def write_tables(sweep, rows, root) -> str:
    root = pathlib.Path(root)
    with (root / 'results.csv').open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = aggregate(rows)
    lines = [f'# Ablation grid `{sweep.grid}` (base `{sweep.base}`, {sweep.num_seeds} seed(s))', '',
             f'| point | runs done | failed | test top-1 error (%) | test top-5 error (%) | '
             f'epochs to {sweep.threshold:.0%} train error | steps to it |',
             '|---|---|---|---|---|---|---|']
    for s in summary:
        lines.append(f'| {s["point"]} | {s["done"]} | {s["failed"]} | {_fmt(*s["top1"], 100)} | '
                     f'{_fmt(*s["top5"], 100)} | {_fmt(*s["epochs"])} | {_fmt(*s["steps"], 1, 0)} |')
    effects = axis_effects(sweep, summary)
    if effects:
        lines += ['', '| effect | Δ test top-1 error (points, ours) |', '|---|---|']
        lines += [f'| {e["axis"]} | {_fmt(e["delta"], e["std"], 100)} |' for e in effects]
    failures = [f'- {s["point"]}: {"; ".join(s["reasons"])}' for s in summary if s['reasons']]
    if failures:
        lines += ['', 'Failed runs:'] + failures
    lines += ['', f'Paper: {sweep.paper}', '']
    text = '\n'.join(lines)
    (root / 'results.md').write_text(text)
    return text


def plot_figures(sweep, rows, root) -> list:
    """Fig. 1 (training error vs epochs, relu solid / tanh dashed) and the effects bar chart."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from alexnet_jax import metrics
    from configs import ablations

    root, written = pathlib.Path(root), []
    summary = {s['point']: s for s in aggregate(rows)}
    fig, ax = plt.subplots(figsize=(6, 4))
    speed = {}
    for name in summary:
        style = '--' if 'tanh' in name.split('_') else '-'
        for seed in range(sweep.num_seeds):
            curve = training_error_curve(metrics.read_history(root / name / f'seed{seed}'))
            if curve:
                ax.plot([c[1] for c in curve], [c[2] for c in curve], style,
                        alpha=0.8, label=name if seed == 0 else None,
                        color=f'C{list(summary).index(name)}')
        speed[name] = summary[name]['epochs'][0]
    relu = [v for k, v in speed.items() if 'relu' in k.split('_')]
    tanh = [v for k, v in speed.items() if 'tanh' in k.split('_')]
    title = f'Epochs to {sweep.threshold:.0%} training error'
    if relu and tanh and not (math.isnan(statistics.fmean(relu)) or math.isnan(statistics.fmean(tanh))):
        title += f': tanh / ReLU = {statistics.fmean(tanh) / statistics.fmean(relu):.2f}x (paper ~6x)'
    ax.axhline(sweep.threshold, color='grey', lw=0.8)
    ax.set(xlabel='epochs', ylabel='training error', title=title, ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(root / 'fig1_training_error.png', dpi=120)
    plt.close(fig)
    written.append(root / 'fig1_training_error.png')

    effects = axis_effects(sweep, list(summary.values()))
    if effects:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs = range(len(effects))
        ax.bar([x - 0.2 for x in xs], [100 * e['delta'] for e in effects], 0.4,
               yerr=[100 * e['std'] for e in effects], label='ours (digits)')
        paper = [ablations.PAPER_TOP1_DELTA.get(e['key'], math.nan) for e in effects]
        ax.bar([x + 0.2 for x in xs], paper, 0.4, label='paper (ImageNet)')
        ax.set_xticks(list(xs), [e['axis'] for e in effects])
        ax.axhline(0, color='k', lw=0.8)
        ax.set(ylabel='Δ top-1 error (points)', title='Ablation: ablated minus baseline')
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(root / 'ablation_deltas.png', dpi=120)
        plt.close(fig)
        written.append(root / 'ablation_deltas.png')
    return written


@cli.one_line_errors
def main(argv):
    del argv
    sweep = FLAGS.config
    if sweep is None or 'axes' not in sweep:
        cli.fail('--config must be an ablation grid, e.g. --config=configs/ablations.py:pool')
    points = expand(sweep)
    root = pathlib.Path(cli.local_path(FLAGS.workdir, '--workdir'))
    if FLAGS.print_commands:
        print('\n'.join(command(sweep, p, root) for p in points))
        return
    from alexnet_jax import validation
    base = pathlib.Path(sweep.base.partition(':')[0])
    if not (base if base.is_absolute() else REPO / base).is_file():
        cli.fail(f'config.base={sweep.base!r}: no such config file; e.g. '
                 f'--config.base=configs/alexnet.py:digits')
    try:  # The base config file's own errors (a bad variant), as cli.parse_flags treats them.
        load_base_config(sweep.base)
    except (AttributeError, KeyError, ValueError, TypeError) as e:
        cli.fail(f'config.base={sweep.base!r} does not load ({type(e).__name__}: '
                 f'{" ".join(str(e).split())})')
    for p in points:  # Every point's config is checked before any training starts.
        try:
            validation.validate_config(point_config(sweep, p))
        except (validation.ConfigError, KeyError) as e:
            cli.fail(f'grid point {p.name}: {e}')
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in points:
        row = run_point(sweep, p, root, retry_failed=FLAGS.retry_failed)
        if row is None:  # Preempted: exit 0, like launch.py.
            print(f'Sweep stopped during {p.dirname} (preempted); rerun the same command to '
                  f'resume it.')
            return
        rows.append(row)
    print(write_tables(sweep, rows, root))
    for path in plot_figures(sweep, rows, root):
        print(f'wrote {path}')


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))  # For `configs`.
    cli.define_config_flag('configs/ablations.py')
    flags.DEFINE_string('workdir', None, 'Root directory: one subdirectory per point.', required=True)
    flags.DEFINE_bool('print_commands', False, 'Print one launch.py line per point; run nothing.')
    flags.DEFINE_bool('retry_failed', False, 'Run points that failed before again.')
    app.run(main, flags_parser=cli.parse_flags)
