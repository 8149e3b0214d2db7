r"""Ablation sweeps: every grid point x seed through the same `train_and_evaluate` as launch.py.

  python -m alexnet_jax.tools.sweep --config=configs/ablations.py[:grid] --workdir=DIR
  python -m alexnet_jax.tools.sweep --config=configs/ablations.py:fig1 --workdir=DIR --print_commands

One workdir per point (`DIR/<labels>/seed<k>`); a point's seeds train together in one program
(`run_point_seeds`, alexnet_jax/seeds.py; its stacked checkpoint in `DIR/<labels>/checkpoints`).
The sweep is resumable for free: a point
with results.json is skipped, an interrupted one resumes from its checkpoint, a failed one is
recorded (failed.json, with the reason) and skipped on the next run unless --retry_failed.
At the end: DIR/results.csv, DIR/results.md (per point the mean and 95% CI over seeds, per
effect the difference paired by seed, its CI and a verdict: alexnet_jax/tools/stats.py) and the
figures DIR/fig1_training_error.png and DIR/ablation_deltas.png. A grid with
`lr_search_rates` (Fig. 1) first searches each point's learning rate (alexnet_jax/tools/lr_search.py).
"""

import csv
import dataclasses
import functools
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
from alexnet_jax.tools import lr_search
from alexnet_jax.tools import stats

REPO = pathlib.Path(__file__).resolve().parents[2]
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


class Preempted(Exception):
    """A point's run stopped on SIGTERM/SIGINT after saving its checkpoint; the sweep stops."""


def run_point(sweep, point: Point, root, *, retry_failed: bool = False) -> dict:
    """Trains one point unless it already finished (or failed); returns its results row.
    Raises Preempted when the run was stopped (its checkpoint resumes it next time)."""
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
                raise Preempted(f'{point.dirname} preempted at step {out["preempted_at_step"]}')
    return result_row(sweep, point, workdir)


def _record_failure(workdir, e):
    reason = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
    logging.warning('%s failed: %s', workdir, reason)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'failed.json').write_text(json.dumps({'reason': reason}) + '\n')


def run_point_seeds(sweep, points: list, root, *, retry_failed: bool = False) -> list:
    """Trains one grid point's seeds together (alexnet_jax/seeds.py: one program, one compile,
    one data load); seeds already finished (or failed) are left out. Returns their rows."""
    from alexnet_jax import seeds as seeds_lib  # Heavy; not needed for --print_commands.
    group = pathlib.Path(root) / points[0].name

    def todo(p):
        workdir = group / f'seed{p.seed}'
        if (workdir / 'results.json').exists():
            return False
        return retry_failed or not (workdir / 'failed.json').exists()
    missing = [p for p in points if todo(p)]
    if missing:
        for p in missing:
            (group / f'seed{p.seed}' / 'failed.json').unlink(missing_ok=True)
        config = point_config(sweep, missing[0])
        config.num_seeds = len(missing)
        logging.info('%s: training seeds %s together.', points[0].name, [p.seed for p in missing])
        try:
            out = seeds_lib.train_seeds(config, str(group), seeds=[p.seed for p in missing])
        except cli.UserError:  # The user's to fix (data, workdir in use, disk): stop, one line.
            raise
        except Exception as e:  # pylint: disable=broad-except  (recorded, the grid goes on)
            for p in missing:
                _record_failure(group / f'seed{p.seed}', e)
        else:
            if 'preempted_at_step' in out or any('preempted_at_step' in r for r in out.values()
                                                 if isinstance(r, dict)):
                raise Preempted(f'{points[0].name} preempted')
    return [result_row(sweep, p, group / f'seed{p.seed}') for p in points]


def run_grid(sweep, points: list, root, *, retry_failed: bool = False) -> list:
    """Every point: its seeds together when there are several, else one run (run_point)."""
    if sweep.num_seeds == 1:
        return [run_point(sweep, p, root, retry_failed=retry_failed) for p in points]
    rows = []
    for name in dict.fromkeys(p.name for p in points):
        rows += run_point_seeds(sweep, [p for p in points if p.name == name], root,
                                retry_failed=retry_failed)
    return rows


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


METRICS = {  # Row column -> (table heading, scale, unit of an effect); lower is better for all.
    'top1': ('test top-1 error', 100.0, 'points'),
    'epochs': ('epochs to threshold', 1.0, 'epochs'),
}
_COLUMNS = {'top1': 'test_top1_error', 'top5': 'test_top5_error',
            'epochs': 'epochs_to_threshold', 'steps': 'steps_to_threshold'}


def aggregate(rows) -> list:
    """Per point: mean and 95% t-interval over the seeds that finished (stats.mean_ci), and the
    per-seed values the paired effects use. Epochs/steps to the threshold: over the finished
    runs that reached it (`reached` of `done`)."""
    out = []
    for name in dict.fromkeys(r['point'] for r in rows):
        runs = [r for r in rows if r['point'] == name]
        done = [r for r in runs if r['status'] == 'done']
        by_seed = {k: {r['seed']: float(r[c]) for r in done if r[c] != ''}
                   for k, c in _COLUMNS.items()}
        out.append({
            'point': name, 'done': len(done), 'failed': sum(r['status'] == 'failed' for r in runs),
            **{k: stats.mean_ci(v.values()) for k, v in by_seed.items()},
            'reached': len(by_seed['epochs']),
            'by_seed': by_seed,
            'reasons': sorted({r['reason'] for r in runs if r['reason']}),
        })
    return out


def axis_effects(sweep, summary) -> list:
    """For every two-valued axis, ablated minus baseline paired by seed (stats.py), per metric.

    The main effect (`within` '') averages each seed's difference over the other axes' values
    (only seeds finished at every one of them); with other axes, the effect at each of their
    values follows (`within` its labels). `epochs_ratio`: ablated / baseline epochs to the
    threshold, the geometric mean over seeds (and over the other axes) with its log-ratio CI.
    """
    by_name = {s['point']: s for s in summary}
    effects = []
    for i, axis in enumerate(sweep.axes):
        if len(axis) != 2:
            continue
        (base, _), (ablated, _) = axis
        pairs = []  # (within-label, per-seed values of baseline, of ablated) per other-axes value.
        for values in itertools.product(*[a for j, a in enumerate(sweep.axes) if j != i]):
            labels = [label for label, _ in values]
            names = ['_'.join(labels[:i] + [lab] + labels[i:]) for lab in (base, ablated)]
            seeds = [by_name.get(n, {}).get('by_seed', {}) for n in names]
            pairs.append(('_'.join(labels), seeds[0], seeds[1]))
        groups = [('', pairs)] + ([(w, [(w, b, a)]) for w, b, a in pairs] if len(pairs) > 1 else [])
        for within, group in groups:
            effect = {'axis': f'{ablated} vs {base}', 'key': ablated, 'within': within}
            for metric in METRICS:
                diffs = [stats.paired_differences(b.get(metric, {}), a.get(metric, {}))
                         for _, b, a in group]
                common = set.intersection(*(set(d) for d in diffs))
                effect[metric] = stats.mean_ci(
                    [statistics.fmean(d[s] for d in diffs) for s in sorted(common)])
            logs = [{s: math.log(a['epochs'][s] / b['epochs'][s])
                     for s in stats.paired_differences(b.get('epochs', {}), a.get('epochs', {}))
                     if a['epochs'][s] > 0 and b['epochs'][s] > 0} for _, b, a in group]
            common = set.intersection(*(set(d) for d in logs))
            effect['epochs_ratio'] = stats.geometric_ci(
                [statistics.fmean(d[s] for d in logs) for s in sorted(common)])
            effects.append(effect)
    return effects


def write_tables(sweep, rows, root, notes=()) -> str:
    """results.csv (one row per run) and results.md: per point the mean [95% CI] over seeds,
    per effect the paired difference, its CI and a verdict; `notes` are added lines."""
    from configs import ablations
    root = pathlib.Path(root)
    with (root / 'results.csv').open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = aggregate(rows)
    target = f'{sweep.threshold:.0%}'
    lines = [f'# Ablation grid `{sweep.grid}` (base `{sweep.base}`, seeds 0..{sweep.num_seeds - 1})',
             '', f'Mean [95% t-interval] over the seeds that finished (n = runs done); epochs and '
             f'steps to {target} training error over the runs that reached it.', '',
             f'| point | n done | failed | test top-1 error (%) | test top-5 error (%) | '
             f'epochs to {target} train error | reached | steps to it |',
             '|---|---|---|---|---|---|---|---|']
    for s in summary:
        lines.append(f'| {s["point"]} | {s["done"]} | {s["failed"]} | {s["top1"].format(100)} | '
                     f'{s["top5"].format(100)} | {s["epochs"].format()} | '
                     f'{s["reached"]}/{s["done"]} | {s["steps"].format(1, 0)} |')
    effects = axis_effects(sweep, summary)
    if effects:
        lines += ['', 'Effects, paired by seed: Δ = ablated − baseline per seed (averaged over '
                  'the other axes for "all"), mean and 95% t-interval over seeds; verdict: '
                  '"worse"/"better" when the CI excludes 0, else the largest |effect| the CI '
                  'admits (alexnet_jax/tools/stats.py).', '',
                  '| effect | at | metric | n | Δ mean | 95% CI | verdict | paper |',
                  '|---|---|---|---|---|---|---|---|']
        for e in effects:
            for metric, (heading, scale, unit) in METRICS.items():
                ci = e[metric]
                if metric == 'epochs':
                    heading = f'epochs to {target} train error'
                paper = ablations.PAPER_TOP1_DELTA.get(e['key']) if metric == 'top1' else None
                lines.append(
                    f'| {e["axis"]} | {e["within"] or "all"} | {heading} ({unit}) | {ci.n} | '
                    f'{_signed(ci.mean * scale)} | {_bracket(ci, scale)} | '
                    f'{stats.verdict(ci, scale, unit)} | '
                    f'{"-" if paper is None else f"{paper:+.1f} (ImageNet)"} |')
            r = e['epochs_ratio']
            paper = ablations.PAPER_EPOCHS_RATIO.get(e['key'])
            lines.append(
                f'| {e["axis"]} | {e["within"] or "all"} | epochs ratio {e["key"]}/'
                f'{e["axis"].split(" vs ")[1]} (geometric mean) | {r.n} | '
                f'{"-" if r.n == 0 else f"{r.mean:.2f}x"} | {_bracket(r, 1.0, "x")} | - | '
                f'{"-" if paper is None else f"~{paper:g}x (CIFAR-10)"} |')
    failures = [f'- {s["point"]}: {"; ".join(s["reasons"])}' for s in summary if s['reasons']]
    if failures:
        lines += ['', 'Failed runs:'] + failures
    lines += ['', *notes] if notes else []
    lines += ['', f'Paper: {sweep.paper}', '']
    text = '\n'.join(lines)
    (root / 'results.md').write_text(text)
    return text


def _signed(x: float) -> str:
    return '-' if math.isnan(x) else f'{x:+.2f}'


def _bracket(ci, scale: float, suffix: str = '') -> str:
    if ci.n < 2:
        return '-'
    return f'[{ci.lo * scale:.2f}{suffix}, {ci.hi * scale:.2f}{suffix}]'


def _yerr(cis, scale: float = 1.0) -> list:
    """matplotlib's asymmetric error bars [[below], [above]] for CIs (0 where there is none)."""
    below = [0.0 if c.n < 2 else (c.mean - c.lo) * scale for c in cis]
    above = [0.0 if c.n < 2 else (c.hi - c.mean) * scale for c in cis]
    return [below, above]


def plot_figures(sweep, rows, root) -> list:
    """Fig. 1 (training error vs epochs, relu solid / tanh dashed; beside it epochs to the
    threshold per point with 95% CIs) and the effects chart (paired Δ top-1 with 95% CIs)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from alexnet_jax import metrics
    from configs import ablations

    root, written = pathlib.Path(root), []
    summary = {s['point']: s for s in aggregate(rows)}
    effects = axis_effects(sweep, list(summary.values()))
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={'width_ratios': [3, 2]})
    for k, name in enumerate(summary):
        style = '--' if 'tanh' in name.split('_') else '-'
        for seed in range(sweep.num_seeds):
            curve = training_error_curve(metrics.read_history(root / name / f'seed{seed}'))
            if curve:
                ax.plot([c[1] for c in curve], [c[2] for c in curve], style, alpha=0.6,
                        label=name if seed == 0 else None, color=f'C{k}')
    title = f'Epochs to {sweep.threshold:.0%} training error'
    ratio = next((e['epochs_ratio'] for e in effects
                  if e['key'] == 'tanh' and not e['within'] and e['epochs_ratio'].n), None)
    if ratio is not None:
        title += f'\ntanh / ReLU = {ratio.mean:.2f}x'
        title += f' [{ratio.lo:.2f}, {ratio.hi:.2f}]' if ratio.n > 1 else ''
        title += f' (n={ratio.n}; paper ~{ablations.PAPER_EPOCHS_RATIO["tanh"]:g}x)'
    ax.axhline(sweep.threshold, color='grey', lw=0.8)
    ax.set(xlabel='epochs', ylabel='training error', title=title, ylim=(0, 1))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    cis = [s['epochs'] for s in summary.values()]
    bars.bar(range(len(cis)), [c.mean for c in cis], yerr=_yerr(cis), capsize=4,
             color=[f'C{k}' for k in range(len(cis))])
    bars.set_xticks(range(len(cis)), [f'{n}\n(n={s["reached"]}/{s["done"]})'
                                      for n, s in summary.items()], fontsize=8)
    bars.set(ylabel=f'epochs to {sweep.threshold:.0%} (mean, 95% CI)')
    fig.tight_layout()
    fig.savefig(root / 'fig1_training_error.png', dpi=120)
    plt.close(fig)
    written.append(root / 'fig1_training_error.png')

    main = [e for e in effects if not e['within']]
    if main:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs = range(len(main))
        ax.bar([x - 0.2 for x in xs], [100 * e['top1'].mean for e in main], 0.4,
               yerr=_yerr([e['top1'] for e in main], 100), capsize=4,
               label='ours, paired Δ, 95% CI')
        paper = [ablations.PAPER_TOP1_DELTA.get(e['key'], math.nan) for e in main]
        ax.bar([x + 0.2 for x in xs], paper, 0.4, label='paper (ImageNet)')
        ax.set_xticks(list(xs), [f'{e["axis"]}\n(n={e["top1"].n})' for e in main])
        ax.axhline(0, color='k', lw=0.8)
        ax.set(ylabel='Δ test top-1 error (points)', title='Ablation: ablated minus baseline')
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(root / 'ablation_deltas.png', dpi=120)
        plt.close(fig)
        written.append(root / 'ablation_deltas.png')
    return written


def print_commands(sweep, points, search, root) -> None:
    """One launch.py line per run; with a learning-rate search, its runs first, and the grid's
    own runs once ROOT/lr_search.json holds the choices (else a note on stderr)."""
    lines = [command(sweep, p, lr_search.root_of(root)) for p in search]
    if search:
        saved = pathlib.Path(root) / 'lr_search.json'
        if not saved.exists():
            print(f'# The grid\'s own runs need the search\'s rates: run these, then the sweep '
                  f'(or rerun with --print_commands once {saved} exists).', file=sys.stderr)
            points = []
        else:
            choices = {k: v['chosen'] for k, v in json.loads(saved.read_text()).items()}
            points = lr_search.apply(points, choices)
    print('\n'.join(lines + [command(sweep, p, root) for p in points]))


@cli.one_line_errors
def main(argv):
    del argv
    sweep = FLAGS.config
    if sweep is None or 'axes' not in sweep:
        cli.fail('--config must be an ablation grid, e.g. --config=configs/ablations.py:pool')
    points = expand(sweep)
    root = pathlib.Path(cli.local_path(FLAGS.workdir, '--workdir'))
    search = lr_search.all_search_points(sweep) if lr_search.enabled(sweep) else []
    if FLAGS.print_commands:
        print_commands(sweep, points, search, root)
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
    for p in search + points:  # Every point's config is checked before any training starts.
        try:
            validation.validate_config(point_config(sweep, p))
        except (validation.ConfigError, KeyError) as e:
            cli.fail(f'grid point {p.name}: {e}')
    root.mkdir(parents=True, exist_ok=True)
    try:
        notes = []
        if search:  # Fig. 1's protocol: each point trains at the rate its search found fastest.
            choices = lr_search.run(sweep, root, functools.partial(
                run_point, retry_failed=FLAGS.retry_failed))
            print((root / 'lr_search.md').read_text())
            points = lr_search.apply(points, choices)
            notes = ['Learning rates (lr_search.md): ' + ', '.join(
                f'{name} {c["rate"]:g}' for name, c in choices.items()) + '.']
        rows = run_grid(sweep, points, root, retry_failed=FLAGS.retry_failed)
    except Preempted as e:  # SIGTERM/SIGINT: its checkpoint is saved; exit 0, like launch.py.
        print(f'Sweep stopped: {e}; rerun the same command to resume.')
        return
    print(write_tables(sweep, rows, root, notes))
    for path in plot_figures(sweep, rows, root):
        print(f'wrote {path}')


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))  # For `configs`.
    cli.define_config_flag('configs/ablations.py')
    flags.DEFINE_string('workdir', None, 'Root directory: one subdirectory per point.', required=True)
    flags.DEFINE_bool('print_commands', False, 'Print one launch.py line per point; run nothing.')
    flags.DEFINE_bool('retry_failed', False, 'Run points that failed before again.')
    app.run(main, flags_parser=cli.parse_flags)
