"""A sweep's report from its runs' rows: results.csv, curves.csv, results.md and the figures.

Every interval counts every source of noise it can (tools/stats.py):
- Test error: the crossed (seeds x test images) standard error (stats.crossed_estimate; an
  effect's differences are paired by seed and image) and a t-test with it.
- Epochs to a training error (at each of the grid's thresholds): runs that never reach it are
  censored at their length, never dropped; a point's median has a distribution-free interval,
  an effect is the median of the per-seed ratios with the censored sign test and the
  order-statistic interval that inverts it.
- One family: every tested verdict a page shows (decide() takes several grids' effects) is
  decided at Holm's family-wise level; "not resolved" comes with the minimum detectable effect
  of its own test (80% power at Holm's strictest level).
- Speed effects are reported within each combination of the other axes (an effect can live in
  the tanh nets alone), test-error effects also pooled over them.
Beside each point: diagnostics.py's numbers (LRN divisor spread, units ever active, activation
scale), and "LRN inactive" where its divisor's spread stayed under 1% (a constant rescale).
"""

import csv
import itertools
import math
import pathlib
import statistics

import numpy as np
from scipy import stats as scipy_stats

from alexnet_jax import diagnostics
from alexnet_jax import records
from alexnet_jax.tools import grid
from alexnet_jax.tools import stats
from alexnet_jax import workdirs

CURVE_COLUMNS = ('point', 'seed', 'step', 'epoch', 'wall_seconds', 'train_loss', 'train_error',
                 'val_error', 'lr')


def _pct(t: float) -> str:
    return f'{t:.0%}'


def summarize(sweep, rows) -> list:
    """Per point: runs done / failed, the test errors [seeds, images], their Estimate, top-5's
    t-interval over seeds, per threshold the epochs by seed (inf: not reached) and their
    median_ci, the diagnostics' means over seeds, and whether LRN stayed inactive."""
    out = []
    for name in dict.fromkeys(r['point'] for r in rows):
        runs = [r for r in rows if r['point'] == name]
        done = [r for r in runs if r['status'] == 'done']
        hits = {r['seed']: np.frombuffer(r['test_correct'].encode(), np.uint8) == ord('1')
                for r in done if r.get('test_correct')}
        errors = {s: 1.0 - h.astype(np.float64) for s, h in hits.items()}
        ran = [r for r in runs if r['status'] in ('done', 'failed')]  # A diverged run counts:
        times = {t: {r['seed']: (float(r[grid.threshold_column(t)])  # its crossing, or never.
                                 if r[grid.threshold_column(t)] != '' else math.inf)
                     for r in ran} for t in grid.thresholds(sweep)}
        diag = {}
        for key in dict.fromkeys(k for r in done for k in r if k.startswith(('init/', 'final/'))):
            values = [float(r[key]) for r in done if r.get(key, '') != '']
            if values:
                diag[key] = statistics.fmean(values)
        final = {k[len('final/'):]: v for k, v in diag.items() if k.startswith('final/')}
        out.append({
            'point': name, 'done': len(done), 'failed': sum(r['status'] == 'failed' for r in runs),
            'errors': errors,
            'seed_errors': {r['seed']: float(r['test_top1_error']) for r in done},
            'top1': (stats.crossed_estimate(np.stack([errors[s] for s in sorted(errors)]))
                     if errors and len(errors) == len(done) else None),
            'top1_seeds': stats.mean_ci([r['test_top1_error'] for r in done], lower=0.0),
            'top5': stats.mean_ci([r['test_top5_error'] for r in done], lower=0.0),
            'times': times, 'medians': {t: stats.median_ci(v.values()) for t, v in times.items()},
            'diag': diag, 'lrn_inactive': diagnostics.lrn_inactive(final),
            'reasons': sorted({r['reason'] for r in runs if r['reason']}),
        })
    return out


def effects(sweep, summary) -> list:
    """The grid's effects (estimates), each verdict decided in the grid's own family (decide)."""
    found = estimates(sweep, summary)
    decide(found)
    return found


def estimates(sweep, summary) -> list:
    """Ablated vs baseline: the grid's `contrasts` (ablated, baseline labels), else every value
    of every axis vs the axis's first. Test error pooled over the other axes' values ('within'
    '') and within each of them, epochs to each threshold within each. Tested ('tested': True):
    the epochs to sweep.threshold and, off the digits (on_digits), the pooled test error (the
    only one with no other axes); the rest are estimates beside them."""
    by_name = {s['point']: s for s in summary}
    contrasts = [tuple(c) for c in sweep.get('contrasts', ())]
    found = []
    for i, axis in enumerate(sweep.axes):
        labels_i = [label for label, _ in axis]
        pairs_i = ([c for c in contrasts if c[0] in labels_i and c[1] in labels_i] if contrasts
                   else [(label, labels_i[0]) for label in labels_i[1:]])
        others = [a for j, a in enumerate(sweep.axes) if j != i]
        for ablated, base in pairs_i:
            pairs = []
            for values in itertools.product(*others):
                labels = [label for label, _ in values]
                b, a = (by_name.get('_'.join(labels[:i] + [lab] + labels[i:]))
                        for lab in (base, ablated))
                if b is not None and a is not None:
                    pairs.append(('_'.join(labels), b, a))
            head = {'axis': f'{ablated} vs {base}', 'key': ablated}
            groups = ([('', pairs)] if len(pairs) > 1 else []) + [(w, [(w, b, a)])
                                                                  for w, b, a in pairs]
            for within, group in groups:
                found.append({**head, 'within': within, 'metric': 'top1',
                              'tested': ((not within or len(pairs) == 1)
                                         and not on_digits(sweep)),
                              'estimate': _error_effect(group),
                              'inactive': any(x['lrn_inactive'] for _, b, a in group
                                              for x in (b, a))})
            for within, b, a in pairs:
                for t in grid.thresholds(sweep):
                    found.append({**head, 'within': within, 'metric': t,
                                  'tested': t == sweep.threshold,
                                  'estimate': stats.paired_ratio(b['times'][t], a['times'][t]),
                                  'inactive': b['lrn_inactive'] or a['lrn_inactive'],
                                  'never': (sum(math.isinf(v) for v in b['times'][t].values()),
                                            sum(math.isinf(v) for v in a['times'][t].values()))})
    return found


def on_digits(sweep) -> bool:
    """A grid on the embedded digits: 360 test images cannot rank these nets (a 1-NN on the raw
    pixels scores among them), so its test error is an estimate beside its tested speed."""
    return ':digits' in sweep.base


def decide(found: list) -> int:
    """Holm over every tested effect in `found` (one family: the effects of every grid a page
    shows together); adds p_holm, the MDE of each effect's own test at Holm's strictest level,
    and the verdict. Returns the family's size."""
    tested = [e for e in found if e['tested'] and e['estimate'].n >= stats.MIN_SEEDS
              and math.isfinite(e['estimate'].p)]
    for e, p in zip(tested, stats.holm([e['estimate'].p for e in tested])):
        e['p_holm'] = p
    for e in found:
        est, ratio = e['estimate'], e['metric'] != 'top1'
        e['family'] = len(tested)
        e['mde'] = stats.mde(est, len(tested)) if est.n else math.nan
        if 'p_holm' not in e:
            e['verdict'] = ('no estimate' if est.n == 0 else
                            f'not resolved: n={est.n} < {stats.MIN_SEEDS} seeds'
                            if est.n < stats.MIN_SEEDS else
                            'not tested (estimate only)' if not e['tested'] else
                            'neither point reached it')
            continue
        e['verdict'] = stats.decide(est, e['p_holm'], 1.0 if ratio else 0.0,
                                    'ablated faster' if ratio else 'ablated better',
                                    'ablated slower' if ratio else 'ablated worse')
        if e['verdict'] == 'not resolved':
            e['verdict'] += f' at n={est.n}' + (
                '' if math.isnan(e['mde']) else
                f': no MDE (a sign test of {est.n} pairs cannot reach Holm\'s level)'
                if math.isinf(e['mde']) else
                f': MDE {e["mde"]:.2f}x' if ratio else f': MDE {100 * e["mde"]:.2f} points')
        if est.seeds_only:
            e['verdict'] += ' (seeds only: no per-image results)'
        if e['inactive']:
            e['verdict'] += '; LRN inactive (divisor spread < 1%)'
    return len(tested)


def _error_effect(group) -> stats.Estimate:
    """Ablated - baseline test errors per seed and image, averaged over the group's pairs at the
    seeds every pair has per-image results for; the crossed (seeds x images) standard error."""
    seeds = set.intersection(*(set(b['errors']) & set(a['errors']) for _, b, a in group))
    if not seeds:  # No per-image results (several hosts, older runs): the seeds alone.
        return _seeds_only_effect(group)
    diffs = np.stack([np.mean([a['errors'][s] - b['errors'][s] for _, b, a in group], axis=0)
                      for s in sorted(seeds)])
    return stats.crossed_estimate(diffs)


def _seeds_only_effect(group) -> stats.Estimate:
    """The paired t-interval and t-test over seeds of the test errors (test images not counted)."""
    diffs = [statistics.fmean(a['seed_errors'][s] - b['seed_errors'][s] for _, b, a in group)
             for s in sorted(set.intersection(*(set(b['seed_errors']) & set(a['seed_errors'])
                                                for _, b, a in group)))]
    ci = stats.mean_ci(diffs)
    if ci.n < 2:
        return stats.NO_ESTIMATE if ci.n == 0 else stats.Estimate(ci.mean, math.nan, math.nan, 1)
    se = ci.half_width / stats.t_quantile(ci.n) if ci.half_width > 0 else 0.0
    p = float(scipy_stats.ttest_1samp(diffs, 0.0).pvalue) if se > 0 else (
        1.0 if ci.mean == 0 else 0.0)
    return stats.Estimate(ci.mean, ci.lo, ci.hi, ci.n, p, se, seeds_only=True, df=ci.n - 1)


def write(sweep, rows, root, notes=()) -> str:
    """results.csv (one row per run), curves.csv and results.md; returns results.md's text."""
    root = pathlib.Path(root)
    columns = list(dict.fromkeys(k for r in rows for k in r if k != 'test_correct'))
    with records.replacing(root / 'results.csv') as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval='', extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    write_curves(rows, root)
    summary = summarize(sweep, rows)
    text = '\n'.join(markdown(sweep, summary, effects(sweep, summary), notes))
    with records.replacing(root / 'results.md') as tmp:
        tmp.write_text(text)
    return text


def write_curves(rows, root) -> None:
    """curves.csv: every logged step of every run (train loss and error, the validation error
    where one was evaluated, the learning rate, wall seconds since the run began)."""
    root = pathlib.Path(root)
    with records.replacing(root / 'curves.csv') as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CURVE_COLUMNS, restval='')
        writer.writeheader()
        for r in rows:
            by_step = {}
            for h in workdirs.read_metrics(workdirs.seed_dir(root / r['point'], r['seed'])):
                line = by_step.setdefault(h['step'], {'point': r['point'], 'seed': r['seed'],
                                                      'step': h['step'], 'epoch': h['epoch']})
                if h['split'] == 'train':
                    line.update(train_loss=h['loss'], train_error=1 - h['top1'], lr=h['lr'],
                                wall_seconds=h.get('wall_seconds', ''))
                elif h['split'] == 'val':
                    line['val_error'] = 1 - h['top1']
            writer.writerows(line for _, line in sorted(by_step.items())
                             if len(line) > 4)  # Not a step with only diagnostics or test.


def markdown(sweep, summary, found, notes=(), baselines=None) -> list:
    """results.md's lines; `baselines` ({name: test error}) are printed under the points."""
    seeds = grid.seeds(sweep)
    ts = grid.thresholds(sweep)
    tested = found[0]['family'] if found else 0
    lines = [f'# Ablation grid `{sweep.grid}` (base `{sweep.base}`, seeds {seeds[0]}..'
             f'{seeds[-1]})', '',
             'Test top-1 error: mean [95% t-interval] with the crossed standard error over seeds '
             'and test images (two-way random effects); top-5: t-interval over seeds. Epochs to a '
             'training error: median [distribution-free 95% interval] over the runs done, a run '
             'that never reached it (or diverged first) counted as longer than its length ("not '
             'reached" when more than half did not); the training error is measured on training '
             'batches in training mode, so with dropout active where the net has it.', '',
             '| point | n done | failed | test top-1 error (%) | test top-5 error (%) | '
             + ' | '.join(f'epochs to {_pct(t)} (reached)' for t in ts) + ' |',
             '|---|---|---|---|---|' + '---|' * len(ts)]
    for s in summary:
        top1 = (_estimate(s['top1'], 100) if s['top1'] is not None
                else s['top1_seeds'].format(100) + ' (seeds only)')
        lines.append(f'| {s["point"]} | {s["done"]} | {s["failed"]} | {top1} | '
                     f'{s["top5"].format(100)} | ' + ' | '.join(
                         f'{_median(s["medians"][t])} ({_reached(s["times"][t])})'
                         for t in ts) + ' |')
    if baselines:
        lines += ['', 'Baselines on the same split (test top-1 error, %): ' + '; '.join(
            f'{name} {100 * error:.2f}' for name, error in baselines.items()) + '.']
    lines += ['', 'Diagnostics (diagnostics.py; mean over seeds, first evaluation batch): per LRN '
              'layer the divisor\'s spread p99 / p1 and p99 / k^beta (a matched control: its '
              'constant divisor); units ever active (output > 0 somewhere in the batch) and '
              'activation RMS per layer; each at init -> at the end.', '',
              '| point | LRN divisor | units ever active | activation RMS | note |',
              '|---|---|---|---|---|']
    for s in summary:
        d = s['diag']
        layers = [k[len('final/'):-len('/active')] for k in d
                  if k.startswith('final/') and k.endswith('/active')]
        lrn = '; '.join(
            [f'{n} spread {_at_init(d, n, "spread")}, p99/k^beta {_at_init(d, n, "p99_over_k_beta")}'
             for n in _lrn_layers(d, '/divisor_p50')]
            + [f'{n} constant {_at_init(d, n, "constant")}' for n in _lrn_layers(d, '/constant')]
        ) or '-'
        active = ', '.join(f'{n} {d.get(f"init/{n}/active", math.nan):.2f}->'
                           f'{d[f"final/{n}/active"]:.2f}' for n in layers) or '-'
        rms = ', '.join(f'{n} {d.get(f"init/{n}/rms", math.nan):.3g}->{d[f"final/{n}/rms"]:.3g}'
                        for n in layers) or '-'
        note = 'LRN inactive (divisor spread < 1%)' if s['lrn_inactive'] else ''
        lines.append(f'| {s["point"]} | {lrn} | {active} | {rms} | {note} |')
    if found:
        lines += ['', f'Effects: ablated vs baseline. Test error: Δ points, paired by seed and '
                  f'test image, pooled ("all") over the other axes and within each; t-interval '
                  f'and t-test with the crossed standard error. Epochs: the median of the '
                  f'per-seed ratios ablated / baseline within each, the order-statistic interval '
                  f'and the sign test that counts runs that never reached (a tie when neither '
                  f'did). Tested: the epochs to {_pct(sweep.threshold)}'
                  + ('' if on_digits(sweep) else ' and the pooled test error')
                  + f'; the rest are estimates. Verdicts at family-wise 5% by Holm over the '
                  f'{tested} tests of the family (p_Holm); MDE: the smallest effect its own '
                  f'test finds with 80% power at Holm\'s strictest level (5% / {tested}; the '
                  f'sign test\'s from its exact binomial power at the observed spread of the '
                  f'log ratios). "never": runs that never reached the threshold, baseline / '
                  f'ablated.', '',
                  '| effect | at | metric | n | estimate | 95% CI | p_Holm | verdict | never | '
                  'paper |', '|---|---|---|---|---|---|---|---|---|---|']
        for e in found:
            est, t = e['estimate'], e['metric']
            if t == 'top1':
                metric, value = 'test top-1 error (points)', _signed(100 * est.value)
                ci = f'[{100 * est.lo:.2f}, {100 * est.hi:.2f}]' if est.n > 1 else '-'
                paper = _paper(sweep, 'paper_top1_delta', e['key'])
                paper = '-' if paper is None else f'{paper:+.1f} (ImageNet)'
                never = '-'
            else:
                metric = f'epochs to {_pct(t)}, {e["key"]}/{e["axis"].split(" vs ")[1]}'
                value = _ratio(est.value)
                ci = (f'[{_bound(est.lo)}, {_bound(est.hi)}]'
                      if est.n > 1 and not math.isnan(est.lo) else '-')
                paper = _paper(sweep, 'paper_epochs_ratio', e['key']) if t == 0.25 else None
                paper = '-' if paper is None else f'~{paper:g}x (CIFAR-10)'
                never = f'{e["never"][0]} / {e["never"][1]}'
            p = f'{e["p_holm"]:.3g}' if 'p_holm' in e else '-'
            lines.append(f'| {e["axis"]} | {e["within"] or "all"} | {metric} | {est.n} | '
                         f'{value} | {ci} | {p} | {e["verdict"]} | {never} | {paper} |')
    failures = [f'- {s["point"]}: {"; ".join(s["reasons"])}' for s in summary if s['reasons']]
    if failures:
        lines += ['', 'Failed runs:'] + failures
    lines += ['', *notes] if notes else []
    lines += ['', f'Paper: {sweep.paper}', '']
    return lines


def _lrn_layers(d: dict, suffix: str) -> list:
    return [k[len('final/'):-len(suffix)] for k in d
            if k.startswith('final/') and k.endswith(suffix)]


def _at_init(d: dict, layer: str, key: str) -> str:
    return f'{d.get(f"init/{layer}/{key}", math.nan):.3g}->{d.get(f"final/{layer}/{key}", math.nan):.3g}'


def _paper(sweep, field: str, key: str, default=None):
    """The paper's number for an ablated value's label, from the grid's config (None: none)."""
    return dict(sweep.get(field, {})).get(key, default)


def _estimate(e, scale: float) -> str:
    if e.n == 0:
        return '-'
    if e.n < 2:
        return f'{e.value * scale:.2f}'
    return f'{e.value * scale:.2f} [{e.lo * scale:.2f}, {e.hi * scale:.2f}]'


def _median(e) -> str:
    if e.n == 0:
        return '-'
    value = 'not reached' if math.isinf(e.value) else f'{e.value:.2f}'
    hi = '∞' if math.isinf(e.hi) else f'{e.hi:.2f}'
    return value if e.n < 2 else f'{value} [{e.lo:.2f}, {hi}]'


def _reached(times: dict) -> str:
    return f'{sum(math.isfinite(v) for v in times.values())}/{len(times)}'


def _signed(x: float) -> str:
    return '-' if math.isnan(x) else f'{x:+.2f}'


def _bound(x: float) -> str:
    """An interval's end: 0 and inf when too few seeds (or censored runs) leave it open."""
    return '-' if math.isnan(x) else '∞' if math.isinf(x) else f'{x:.2f}x'


def _ratio(x: float) -> str:
    """A ratio; 0 and inf: the baseline / the ablated run did not reach the threshold."""
    if math.isnan(x):
        return '-'
    return '∞' if math.isinf(x) else '0 (baseline not reached)' if x == 0 else f'{x:.2f}x'



def plot_figures(sweep, rows, root) -> list:
    """<grid>_training_error.png (training error vs epochs of every run, relu solid, tanh dashed;
    beside it each point's median epochs to the threshold with its interval) and, with a
    pooled test-error effect, ablation_deltas.png (Δ test top-1 with its interval, the paper's)."""
    from alexnet_jax import plots  # pylint: disable=import-outside-toplevel  (matplotlib, headless)
    plt = plots.plt

    root, written = pathlib.Path(root), []
    summary = summarize(sweep, rows)
    found = effects(sweep, summary)
    t = sweep.threshold
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={'width_ratios': [3, 2]})
    for k, s in enumerate(summary):
        style = '--' if 'tanh' in s['point'].split('_') else '-'
        for n, r in enumerate(r for r in rows if r['point'] == s['point']):
            curve = grid.training_error_curve(workdirs.seed_dir(root / r['point'], r['seed']))
            if curve:
                ax.plot([c[1] for c in curve], [c[2] for c in curve], style, alpha=0.6,
                        label=s['point'] if n == 0 else None, color=f'C{k}')
    title = f'Epochs to {_pct(t)} training error'
    ratio = next((e for e in found if e['key'] == 'tanh' and e['metric'] == t
                  and e['estimate'].n), None)
    if ratio is not None:
        est = ratio['estimate']
        title += (f'\ntanh / ReLU {ratio["within"]} = {_ratio(est.value)} [{_bound(est.lo)}, '
                  f'{_bound(est.hi)}] (n={est.n}'
                  + (f'; paper ~{_paper(sweep, "paper_epochs_ratio", "tanh"):g}x)'
                     if _paper(sweep, 'paper_epochs_ratio', 'tanh') else ')'))
    ax.axhline(t, color='grey', lw=0.8)
    ax.set(xlabel='epochs', ylabel='training error', title=title, ylim=(0, 1))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    medians = [s['medians'][t] for s in summary]
    lengths = [float(r['epochs_trained']) for r in rows if r.get('epochs_trained', '') != '']
    top = max(lengths, default=max([m.value for m in medians if math.isfinite(m.value)],
                                   default=1.0))
    # A median or bound never reached is drawn at the run length, the bar hatched.
    shown = [m.value if math.isfinite(m.value) else top for m in medians]
    below = [v - m.lo if m.n > 1 and math.isfinite(m.value) else 0.0 for v, m in zip(shown, medians)]
    above = [min(m.hi, top) - v if m.n > 1 and math.isfinite(m.value) else 0.0
             for v, m in zip(shown, medians)]
    drawn = bars.bar(range(len(summary)), shown, yerr=[below, above], capsize=4,
                     color=[f'C{k}' for k in range(len(summary))])
    for bar, m in zip(drawn, medians):
        if not math.isfinite(m.value):
            bar.set_hatch('//')
            bar.set_label('median not reached')
    bars.set_xticks(range(len(summary)), [f'{s["point"]}\n({_reached(s["times"][t])})'
                                          for s in summary], fontsize=7, rotation=30, ha='right')
    bars.set(ylabel=f'epochs to {_pct(t)} (median, 95% CI)')
    fig.tight_layout()
    path = root / f'{sweep.grid}_training_error.png'  # Named after its grid: default, pool, ...
    plots.save(fig, path, dpi=120)
    written.append(path)

    main = [e for e in found if e['metric'] == 'top1' and e['estimate'].n
            and (not e['within'] or len(sweep.axes) == 1)]
    if main:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs = range(len(main))
        ests = [e['estimate'] for e in main]
        ax.bar([x - 0.2 for x in xs], [100 * e.value for e in ests], 0.4,
               yerr=[[100 * max(e.value - e.lo, 0) for e in ests],
                     [100 * max(e.hi - e.value, 0) for e in ests]], capsize=4,
               label='ours: Δ, 95% CI (seeds x test images)')
        paper = [_paper(sweep, 'paper_top1_delta', e['key'], math.nan) for e in main]
        ax.bar([x + 0.2 for x in xs], paper, 0.4, label='paper (ImageNet)')
        ax.set_xticks(list(xs), [f'{e["axis"]}\n(n={e["estimate"].n})' for e in main])
        ax.axhline(0, color='k', lw=0.8)
        ax.set(ylabel='Δ test top-1 error (points)', title='Ablation: ablated minus baseline')
        ax.legend(fontsize=8)
        fig.tight_layout()
        plots.save(fig, root / 'ablation_deltas.png', dpi=120)
        written.append(root / 'ablation_deltas.png')
    return written
