r"""Published grids: their per-run results kept in the repository, and the docs' tables made from
them, so every published number regenerates.

  python -m alexnet_jax.tools.publish --config=configs/ablations.py --config.num_seeds=10 \
      --workdir=/tmp/lrn --dest=docs/results/lrn      # copy a finished grid's results, render
  python -m alexnet_jax.tools.publish                 # render the docs from docs/results
  python -m alexnet_jax.tools.publish --photo_spread  # + the paper net's LRN at init on photos

`docs/results/<name>/` holds a grid's sweep.json (the grid's config), results.csv (one row per
run, with its per-image test hits and diagnostics), curves.csv and, for a grid that searched its
learning rates (Fig. 1), lr_search.json (epochs to the threshold at every rate and search seed:
the block `lr-search-<name>`). Rendering reads every grid
there, decides all their verdicts as one Holm family (report.decide: the docs show them
together), and writes docs/ablations_digits_<name>.md for each grid and the generated blocks of
docs/ablations.md (between `<!-- generated: <block> -->` and `<!-- end -->`).
tests/test_publish.py renders from the committed results and fails on any difference.
"""

import csv
import json
import math
import pathlib
import re
import shutil
import statistics

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from alexnet_jax.tools import baselines
from alexnet_jax.tools import grid
from alexnet_jax.tools import lr_search
from alexnet_jax.tools import report

DOCS = grid.REPO / 'docs'
RESULTS = DOCS / 'results'
SEARCH = 'lr_search.json'
SUMMARY = DOCS / 'ablations.md'
BLOCK = re.compile(r'(<!-- generated: (\S+) -->\n).*?(<!-- end -->)', re.S)


def copy(sweep, workdir, dest) -> None:
    """A grid's runs in `workdir` (every point and seed that ran) -> `dest`."""
    workdir, dest = pathlib.Path(workdir), pathlib.Path(dest)
    rows = [row for p in grid.expand(sweep)
            if (row := grid.result_row(sweep, p, workdir / p.dirname))['status'] != 'missing']
    dest.mkdir(parents=True, exist_ok=True)
    (dest / 'sweep.json').write_text(sweep.to_json(indent=1, sort_keys=True) + '\n')
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with (dest / 'results.csv').open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval='')
        writer.writeheader()
        writer.writerows(rows)
    report.write_curves(rows, workdir)
    with (workdir / 'curves.csv').open(newline='') as f, \
            (dest / 'curves.csv').open('w', newline='') as out:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows({k: _short(v) for k, v in r.items()} for r in reader)
    if (workdir / SEARCH).exists():  # Fig. 1's protocol: every rate and search seed.
        shutil.copyfile(workdir / SEARCH, dest / SEARCH)


def _short(value: str) -> str:
    """A float of the curves to 5 significant digits (a fifth of the file; the tables read
    results.csv): '0.10526315789473684' -> '0.10526'."""
    try:
        return value if value == '' or value.isdigit() else f'{float(value):.5g}'
    except ValueError:
        return value


def read(dest) -> tuple:
    """(sweep, rows) of a published grid, as report.summarize takes them."""
    dest = pathlib.Path(dest)
    sweep = ml_collections.ConfigDict(json.loads((dest / 'sweep.json').read_text()))
    with (dest / 'results.csv').open(newline='') as f:
        rows = [{**r, 'seed': int(r['seed'])} for r in csv.DictReader(f)]
    return sweep, rows


def published(results=RESULTS) -> dict:
    """{name: (sweep, summary, effects)} of every grid in `results`, all their verdicts decided
    as one Holm family (report.decide: the docs show them together)."""
    grids = {}
    for dest in sorted(p.parent for p in pathlib.Path(results).glob('*/sweep.json')):
        sweep, rows = read(dest)
        summary = report.summarize(sweep, rows)
        grids[dest.name] = (sweep, summary, report.estimates(sweep, summary))
    report.decide([e for _, _, found in grids.values() for e in found])
    return grids


def render(results=RESULTS, summary_page=SUMMARY, grids=None) -> dict:
    """{path: text} of every generated page and of the summary page with its blocks filled;
    `grids`: `published(results)` where the caller has it already."""
    grids = published(results) if grids is None else grids
    errors = baselines.digits_test_errors()
    pages = {summary_page.parent / f'ablations_digits_{name}.md': '\n'.join(report.markdown(
        sweep, summary, found, baselines=errors if report.on_digits(sweep) else None))
             for name, (sweep, summary, found) in grids.items()}
    blocks = {'family': family_table(grids), 'baselines': '; '.join(
        f'{name} {100 * e:.2f}%' for name, e in errors.items())}
    if PHOTO_SPREAD.exists():
        blocks['paper-spread'] = photo_spread_text()
    blocks.update({f'points-{name}': points_table(sweep, summary, found)
                   for name, (sweep, summary, found) in grids.items()})
    blocks.update({f'lr-search-{name}': lr_search.table(
        sweep, *lr_search.from_record(lr_search.read(pathlib.Path(results) / name / SEARCH)))
        .rstrip('\n') for name, (sweep, _, _) in grids.items()
        if (pathlib.Path(results) / name / SEARCH).exists()})
    text = summary_page.read_text()
    unknown = sorted(set(m.group(2) for m in BLOCK.finditer(text)) - set(blocks))
    if unknown:
        raise ValueError(f'{summary_page}: no generated block named {unknown}; '
                         f'these exist: {sorted(blocks)}')
    pages[summary_page] = BLOCK.sub(lambda m: m.group(1) + blocks[m.group(2)] + '\n'
                                    + m.group(3), text)
    return pages


PHOTO_SPREAD = RESULTS / 'paper_lrn_spread.json'


def measure_photo_spread(seeds=(0, 1, 2), count: int = 32, path=PHOTO_SPREAD) -> dict:
    """The paper's net (configs/alexnet.py, its init) at init on photo crops minus the mean
    pixel, as the paper fed ImageNet: LRN's divisor spread per layer and seed -> `path`."""
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from alexnet_jax import diagnostics, models  # pylint: disable=import-outside-toplevel
    config = grid.load_base_config('configs/alexnet.py')
    d = config.data
    images = ((diagnostics.photo_crops(d.image_size, count).astype(np.float32)
               - np.asarray(d.mean_rgb, np.float32)) / np.asarray(d.stddev_rgb, np.float32))
    model = models.create_model(config.model)
    out = {}
    for seed in seeds:
        params = jax.jit(lambda k: model.init(k, images[:1]))(jax.random.key(seed))['params']
        stats = diagnostics.measure(model.apply, params, {}, images, config.model)
        out[seed] = {k: round(v, 4) for k, v in stats.items() if k.startswith('lrn')}
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(json.dumps(out, indent=1, sort_keys=True) + '\n')
    return out


def photo_spread_text(path=PHOTO_SPREAD) -> str:
    measured = json.loads(pathlib.Path(path).read_text())
    layers = sorted({k.split('/')[0] for m in measured.values() for k in m})
    return '; '.join(
        f'{n} {min(m[f"{n}/spread"] for m in measured.values()):.4g} to '
        f'{max(m[f"{n}/spread"] for m in measured.values()):.4g}'
        for n in layers) + f' (over {len(measured)} inits).'


def family_table(grids: dict) -> str:
    """Every tested verdict of the family, one line each."""
    lines = ['| grid | effect | in | metric | n | estimate [95% CI] | p_Holm | verdict |',
             '|---|---|---|---|---|---|---|---|']
    for name, (_, _, found) in grids.items():
        for e in found:
            if 'p_holm' not in e:
                continue
            est = e['estimate']
            if e['metric'] == 'top1':
                metric = 'test error, points'
                value = f'{100 * est.value:+.2f} [{100 * est.lo:.2f}, {100 * est.hi:.2f}]'
            else:
                metric = f'epochs to {e["metric"]:.0%}, ratio'
                value = (f'{report._ratio(est.value)} [{report._bound(est.lo)}, '
                         f'{report._bound(est.hi)}]')
            lines.append(f'| {name} | {e["axis"]} | {e["within"] or "all"} | {metric} | {est.n} | '
                         f'{value} | {e["p_holm"]:.3g} | {e["verdict"]} |')
    return '\n'.join(lines)


def points_table(sweep, summary, found) -> str:
    """Per point: test error, median epochs to the threshold, and at init the LRN divisor's
    spread per layer (a matched control: its constant) and the logits' RMS; a control's (a
    point compared with one baseline only) also as a ratio to its baseline's."""
    by_name = {s['point']: s for s in summary}
    arm = {}  # An ablated point compared with one baseline only (a control) -> that baseline.
    for a, b in sweep.get('contrasts', ()):
        for s in summary:
            if a in s['point'].split('_'):
                arm.setdefault(s['point'], set()).add(
                    '_'.join(b if x == a else x for x in s['point'].split('_')))
    arm = {p: next(iter(b)) for p, b in arm.items() if len(b) == 1}
    t = sweep.threshold
    lines = [f'| point | test top-1 error % | epochs to {t:.0%} | LRN at init | logits RMS at init |',
             '|---|---|---|---|---|']
    for s in summary:
        d = s['diag']
        lrn = '; '.join(
            [f'{n} spread {d[f"init/{n}/spread"]:.3g}' for n in report._lrn_layers(d, '/divisor_p50')
             if f'init/{n}/spread' in d]
            + [f'{n} constant {d[f"init/{n}/constant"]:.3g}'
               for n in report._lrn_layers(d, '/constant') if f'init/{n}/constant' in d]) or '-'
        logits = [k for k in ('init/fc8/rms', 'init/fc4/rms') if k in d]
        rms = f'{d[logits[0]]:.3g}' if logits else '-'
        other = by_name.get(arm.get(s['point'], ''))
        if logits and other is not None and logits[0] in other['diag']:
            rms += f' ({d[logits[0]] / other["diag"][logits[0]]:.2f}x {other["point"]})'
        top1 = report._estimate(s['top1'], 100) if s['top1'] is not None else '-'
        lines.append(f'| {s["point"]} | {top1} | {report._median(s["medians"][t])} '
                     f'({report._reached(s["times"][t])}) | {lrn} | {rms} |')
    return '\n'.join(lines)


def lrn_strength_figure(sweep, summary, path) -> None:
    """Median epochs to the threshold (95% interval) against LRN1's divisor spread at init, per
    activation: LRN and its matched control at each strength, LRN off as a line."""
    from alexnet_jax import plots  # pylint: disable=import-outside-toplevel  (matplotlib)
    plt = plots.plt
    t = sweep.threshold
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    for ax, act in zip(axes, ('relu', 'tanh')):
        points = [s for s in summary if s['point'].split('_')[0] == act]
        lrn = {s['point'].split('_')[1][3:]: s for s in points
               if s['point'].split('_')[1].startswith('lrn')}
        for arm, style in (('lrn', 'o-'), ('matched', 's--')):
            xs, ms = [], []
            for strength, on in lrn.items():
                arm_point = next((s for s in points if s['point'] == f'{act}_{arm}{strength}'),
                                 None)
                if arm_point is not None and 'init/lrn1/spread' in on['diag']:
                    xs.append(on['diag']['init/lrn1/spread'])
                    ms.append(arm_point['medians'][t])
            order = sorted(range(len(xs)), key=xs.__getitem__)
            xs, ms = [xs[i] for i in order], [ms[i] for i in order]
            ax.errorbar(xs, [m.value for m in ms], fmt=style, capsize=3, label=arm,
                        yerr=[[m.value - m.lo for m in ms], [m.hi - m.value for m in ms]])
        off = next((s for s in points if s['point'] == f'{act}_nolrn'), None)
        if off is not None:
            m = off['medians'][t]
            ax.axhline(m.value, color='k', lw=1, label='LRN off')
            ax.axhspan(m.lo, m.hi, color='k', alpha=0.1)
        ax.set(xlabel='LRN1 divisor spread p99/p1 at init (the LRN arm)',
               ylabel=f'median epochs to {t:.0%} training error', title=act)
        ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save(fig, path, dpi=110)


def lr_search_figure(sweep, found: dict, choices: dict, path) -> None:
    """Epochs to the threshold against the learning rate, per point: each search seed (a run that
    never reached it at its length, marked x; a failed one is left out), their censored mean as
    the curve, the chosen rate circled."""
    from alexnet_jax import plots  # pylint: disable=import-outside-toplevel  (matplotlib)
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, trial_list in found.items():
        line, = ax.plot([t.rate for t in trial_list],
                        [lr_search.censored_mean(t) for t in trial_list], '-', label=name)
        for t in trial_list:
            for e in (e for e, st in zip(t.epochs, t.status) if st != 'failed'):
                ax.plot(t.rate, t.length if e is None else e, 'x' if e is None else '.',
                        color=line.get_color(), alpha=0.6)
        chosen = next((t for t in trial_list if t.rate == choices[name]['rate']), None)
        if chosen is not None:
            ax.plot(chosen.rate, lr_search.censored_mean(chosen), 'o', mfc='none', ms=12,
                    color=line.get_color())
    ax.set(xscale='log', xlabel='learning rate',
           ylabel=f'epochs to {sweep.threshold:.0%} training error',
           title=f'{sweep.grid}: learning-rate search (x: never reached, at the run\'s length)')
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save(fig, path, dpi=110)


def training_error_curves(curves_csv) -> dict:
    """{point: [each seed's (epoch, training error) curve]} from curves.csv, the error over the
    epoch ending at each logged step, as the report measures it (grid.epoch_mean_curve)."""
    runs = {}
    with open(curves_csv, newline='') as f:
        for r in csv.DictReader(f):
            if r['train_error'] != '':
                runs.setdefault(r['point'], {}).setdefault(r['seed'], []).append(
                    {'step': int(r['step']), 'epoch': float(r['epoch']),
                     'top1': 1 - float(r['train_error'])})
    # Each record is already one logged window: windows of 1 step pool nothing further.
    return {point: [[(c[1], c[2]) for c in grid.epoch_mean_curve(records, 1)]
                    for records in seeds.values()] for point, seeds in runs.items()}


def training_error_figure(sweep, curves_csv, found, path) -> None:
    """The paper's Fig. 1 from curves.csv: training error against epochs (training_error_curves),
    every seed thin, the median over seeds bold, ReLU solid, tanh dashed; the tested ratio and
    its interval in the title."""
    from alexnet_jax import plots  # pylint: disable=import-outside-toplevel  (matplotlib)
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for k, (point, curves) in enumerate(training_error_curves(curves_csv).items()):
        style = '--' if 'tanh' in point.split('_') else '-'
        for curve in curves:
            ax.plot(*zip(*curve), style, color=f'C{k}', alpha=0.25, lw=0.8)
        common = min(len(c) for c in curves)
        ax.plot([e for e, _ in curves[0][:common]],
                [statistics.median(c[i][1] for c in curves) for i in range(common)], style,
                color=f'C{k}', lw=2, label=f'{point} (median of {len(curves)} seeds)')
    tested = next((e for e in found if 'p_holm' in e and e['metric'] == sweep.threshold), None)
    title = f'{sweep.grid}: training error at each activation\'s chosen rate'
    if tested is not None:
        est = tested['estimate']
        title += (f'\n{tested["axis"]}: {report._ratio(est.value)} [{report._bound(est.lo)}, '
                  f'{report._bound(est.hi)}] the epochs to {sweep.threshold:.0%}')
    ax.axhline(sweep.threshold, color='grey', lw=0.8)
    ax.set(xlabel='epochs', ylabel='training error (over the last epoch)', ylim=(0, 1),
           title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save(fig, path, dpi=110)


FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.photo_spread:
        measure_photo_spread()
    if FLAGS.config is not None:
        if not FLAGS.workdir or not FLAGS.dest:
            raise app.UsageError('--config needs --workdir (the grid\'s runs) and --dest.')
        copy(FLAGS.config, FLAGS.workdir, FLAGS.dest)
    grids = published()
    for path, text in render(grids=grids).items():
        path.write_text(text)
        print(f'Wrote {path.relative_to(grid.REPO)}')
    if 'lrn' in grids:
        sweep, summary, _ = grids['lrn']
        lrn_strength_figure(sweep, summary, DOCS / 'ablations_digits_lrn.png')
        print('Wrote docs/ablations_digits_lrn.png')
    for path in sorted(RESULTS.glob(f'*/{SEARCH}')):  # Fig. 1's grids: the search, the curves.
        sweep, _, found = grids[path.parent.name]
        figure = DOCS / f'ablations_digits_{path.parent.name}_lr_search.png'
        lr_search_figure(sweep, *lr_search.from_record(lr_search.read(path)), figure)
        print(f'Wrote {figure.relative_to(grid.REPO)}')
        figure = DOCS / f'ablations_digits_{path.parent.name}_curves.png'
        training_error_figure(sweep, path.parent / 'curves.csv', found, figure)
        print(f'Wrote {figure.relative_to(grid.REPO)}')


if __name__ == '__main__':
    config_flags.DEFINE_config_file('config', None, 'A grid, e.g. configs/ablations.py:default.')
    flags.DEFINE_string('workdir', None, 'The finished grid\'s runs (the sweep\'s --workdir).')
    flags.DEFINE_string('dest', None, 'Where its results go, e.g. docs/results/lrn.')
    flags.DEFINE_bool('photo_spread', False, 'Measure the paper net\'s LRN spread at init on '
                      'photos first (measure_photo_spread).')
    app.run(main)
