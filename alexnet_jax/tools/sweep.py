r"""Ablation sweeps: every grid point x seed through the same `train_and_evaluate` as launch.py.

  python -m alexnet_jax.tools.sweep --config=configs/ablations.py[:grid] --workdir=DIR
  python -m alexnet_jax.tools.sweep --config=configs/ablations.py:fig1 --workdir=DIR --print_commands

One workdir per point and seed (`DIR/<labels>/seed<k>`); a point's seeds train together
(side by side in worker processes on a CPU, the same workers for every point, or stepped together
in one vmapped program on GPU/TPU). Resumable for free: a point with results.json is skipped, an
interrupted one resumes from its checkpoint, a failed one is recorded (failed.json, with the
reason) and skipped on the next run unless --retry_failed.
At the end: DIR/results.csv, DIR/results.md (per point the mean and 95% CI over seeds, per
effect the difference paired by seed, its CI and a verdict: alexnet_jax/tools/stats.py) and the
figures DIR/fig1_training_error.png and DIR/ablation_deltas.png. A grid with
`lr_search_rates` (Fig. 1) first searches each point's learning rate (alexnet_jax/tools/lr_search.py).
"""

import csv
import functools
import itertools
import json
import math
import pathlib
import statistics
import sys

from absl import app
from absl import flags
from absl import logging

from alexnet_jax import cli
from alexnet_jax.tools import grid
from alexnet_jax.tools import lr_search
from alexnet_jax.tools import stats

FLAGS = flags.FLAGS


class Preempted(Exception):
    """A point's run stopped on SIGTERM/SIGINT after saving its checkpoint; the sweep stops."""


def run_point(sweep, point: grid.Point, root, *, retry_failed: bool = False) -> dict:
    """One point and seed (a run of Fig. 1's search): `run_seeds` with that seed alone."""
    return run_seeds(sweep, [point], root, retry_failed=retry_failed)[0]


def run_seeds(sweep, points: list, root, *, retry_failed: bool = False) -> list:
    """Trains the seeds of one grid point (`points` share a name) that have not finished (nor
    failed, unless `retry_failed`); returns their rows. A failure is recorded in the seed's
    failed.json and the grid goes on; a user's error stops it (one line); a preempted run raises
    Preempted (its checkpoint resumes it next time)."""
    from alexnet_jax import seeds as seeds_lib  # Heavy; not needed for --print_commands.
    from alexnet_jax import train
    root = pathlib.Path(root)
    group = root / points[0].name
    grid.check_definition(sweep, points[0], group)  # Refuses a changed base or overrides.
    missing = [p for p in points if not (root / p.dirname / 'results.json').exists()
               and (retry_failed or not (root / p.dirname / 'failed.json').exists())]
    if missing:
        for p in missing:
            (root / p.dirname / 'failed.json').unlink(missing_ok=True)
        config = grid.point_config(sweep, missing[0])
        config.num_seeds = len(missing)
        logging.info('%s: training seeds %s.', points[0].name, [p.seed for p in missing])
        try:
            out = train.train_and_evaluate(config, str(group), seeds=[p.seed for p in missing])
        except cli.UserError:  # The user's to fix (data, workdir in use, disk): stop, one line.
            raise
        except Exception as e:  # pylint: disable=broad-except  (recorded, the grid goes on)
            for p in missing:  # Seeds another worker finished before the error keep their result.
                if not (root / p.dirname / 'results.json').exists():
                    seeds_lib.record_failure(root / p.dirname, e)
        else:
            if 'preempted_at_step' in out or any('preempted_at_step' in r for r in out.values()
                                                 if isinstance(r, dict)):
                raise Preempted(f'{points[0].name} preempted')
    return [grid.result_row(sweep, p, root / p.dirname) for p in points]


def run_grid(sweep, points: list, root, *, retry_failed: bool = False) -> list:
    rows = []
    for name in dict.fromkeys(p.name for p in points):
        rows += run_seeds(sweep, [p for p in points if p.name == name], root,
                          retry_failed=retry_failed)
    return rows


METRICS = {  # Row column -> (table heading, {}: the threshold; scale; unit of an effect).
    'top1': ('test top-1 error', 100.0, 'points'),  # Lower is better for all.
    'epochs': ('epochs to {} train error', 1.0, 'epochs'),
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
            **{k: stats.mean_ci(v.values(), lower=0.0) for k, v in by_seed.items()},
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
                effect[metric] = stats.mean_ci(_at_common_seeds(
                    [stats.paired_differences(b.get(metric, {}), a.get(metric, {}))
                     for _, b, a in group]))
            effect['epochs_ratio'] = stats.geometric_ci(_at_common_seeds(
                [stats.log_ratios(b.get('epochs', {}), a.get('epochs', {})) for _, b, a in group]))
            effects.append(effect)
    return effects


def _at_common_seeds(per_group: list) -> list:
    """For each seed present in every group's {seed: value}: its mean over the groups."""
    common = set.intersection(*(set(d) for d in per_group))
    return [statistics.fmean(d[s] for d in per_group) for s in sorted(common)]


def write_tables(sweep, rows, root, notes=()) -> str:
    """results.csv (one row per run) and results.md (module doc); `notes` are added lines."""
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
                paper = ablations.PAPER_TOP1_DELTA.get(e['key']) if metric == 'top1' else None
                lines.append(
                    f'| {e["axis"]} | {e["within"] or "all"} | {heading.format(target)} ({unit}) | '
                    f'{ci.n} | {_signed(ci.mean * scale)} | {_bracket(ci, scale)} | '
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
    from configs import ablations

    root, written = pathlib.Path(root), []
    summary = {s['point']: s for s in aggregate(rows)}
    effects = axis_effects(sweep, list(summary.values()))
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={'width_ratios': [3, 2]})
    for k, name in enumerate(summary):
        style = '--' if 'tanh' in name.split('_') else '-'
        for seed in range(sweep.num_seeds):
            curve = grid.training_error_curve(root / name / f'seed{seed}')
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
    lines = [grid.command(sweep, p, lr_search.root_of(root)) for p in search]
    if search:
        saved = pathlib.Path(root) / 'lr_search.json'
        if not saved.exists():
            print(f'# The grid\'s own runs need the search\'s rates: run these, then the sweep '
                  f'(or rerun with --print_commands once {saved} exists).', file=sys.stderr)
            points = []
        else:
            choices = {k: v['chosen'] for k, v in json.loads(saved.read_text()).items()}
            points = lr_search.apply(points, choices)
    print('\n'.join(lines + [grid.command(sweep, p, root) for p in points]))


@cli.one_line_errors
def main(argv):
    del argv
    sweep = FLAGS.config
    if sweep is None or 'axes' not in sweep:
        cli.fail('--config must be an ablation grid, e.g. --config=configs/ablations.py:pool')
    points = grid.expand(sweep)
    root = pathlib.Path(cli.local_path(FLAGS.workdir, '--workdir'))
    search = lr_search.all_search_points(sweep) if lr_search.enabled(sweep) else []
    if FLAGS.print_commands:
        print_commands(sweep, points, search, root)
        return
    from alexnet_jax import validation
    base = pathlib.Path(sweep.base.partition(':')[0])
    if not (base if base.is_absolute() else grid.REPO / base).is_file():
        cli.fail(f'config.base={sweep.base!r}: no such config file; e.g. '
                 f'--config.base=configs/alexnet.py:digits')
    try:  # The base config file's own errors (a bad variant), as cli.parse_flags treats them.
        grid.load_base_config(sweep.base)
    except (AttributeError, KeyError, ValueError, TypeError) as e:
        cli.fail(f'config.base={sweep.base!r} does not load ({type(e).__name__}: '
                 f'{" ".join(str(e).split())})')
    for p in search + points:  # Every point's config is checked before any training starts.
        try:
            validation.validate_config(grid.point_config(sweep, p))
        except (validation.ConfigError, KeyError) as e:
            cli.fail(f'grid point {p.name}: {e}')
    root.mkdir(parents=True, exist_ok=True)
    cli.use_compilation_cache()  # Each point's seeds after the first compile nothing.
    from alexnet_jax import seeds as seeds_lib  # Heavy; not needed for --print_commands.
    try:
        with seeds_lib.shared_workers():  # One set of seed worker processes for every point.
            notes = []
            if search:  # Fig. 1's protocol: each point trains at the rate its search found fastest.
                choices = lr_search.run(sweep, root, functools.partial(
                    run_seeds, retry_failed=FLAGS.retry_failed))
                print((root / 'lr_search.md').read_text())
                points = lr_search.apply(points, choices)
                notes = ['Learning rates (lr_search.md): ' + ', '.join(
                    f'{name} {c["rate"]:g}' for name, c in choices.items()) + '.']
            rows = run_grid(sweep, points, root, retry_failed=FLAGS.retry_failed)
    except Preempted as e:  # SIGTERM/SIGINT: its checkpoint is saved; exit 0, like launch.py.
        print(f'Sweep stopped: {e}; rerun the same grid.command to resume.')
        return
    print(write_tables(sweep, rows, root, notes))
    for path in plot_figures(sweep, rows, root):
        print(f'wrote {path}')


if __name__ == '__main__':
    sys.path.insert(0, str(grid.REPO))  # For `configs`.
    cli.define_config_flag('configs/ablations.py')
    flags.DEFINE_string('workdir', None, 'Root directory: one subdirectory per point.', required=True)
    flags.DEFINE_bool('print_commands', False, 'Print one launch.py line per point; run nothing.')
    flags.DEFINE_bool('retry_failed', False, 'Run points that failed before again.')
    app.run(main, flags_parser=cli.parse_flags)
