"""A sweep's report from its runs' rows: results.csv, curves.csv, results.md and the figures.

Every interval counts every source of noise it can (tools/stats.py):
- Test error: seeds and test images resampled together (a two-way bootstrap of the per seed and
  image errors; an effect's differences are paired by seed and image).
- Epochs to a training error (at each of the grid's thresholds): runs that never reach it are
  censored at their length, never dropped; a point's median has a distribution-free interval,
  an effect is the ratio of medians (seeds bootstrapped in pairs) with a censored sign test.
- Every verdict of the grid is decided at Holm's family-wise level over all of them; "not
  resolved" comes with the minimum detectable effect (80% power at Holm's strictest level).
- Speed effects are reported within each combination of the other axes (an effect can live in
  the tanh nets alone), test-error effects also pooled over them.
Beside each point: diagnostics.py's numbers (LRN divisor, units ever active, activation scale),
and "LRN inactive at this input scale" where its divisor stayed a constant.
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
            'top1': (stats.bootstrap_estimate(np.stack([errors[s] for s in sorted(errors)]))
                     if errors and len(errors) == len(done) else None),
            'top1_seeds': stats.mean_ci([r['test_top1_error'] for r in done], lower=0.0),
            'top5': stats.mean_ci([r['test_top5_error'] for r in done], lower=0.0),
            'times': times, 'medians': {t: stats.median_ci(v.values()) for t, v in times.items()},
            'diag': diag, 'lrn_inactive': diagnostics.lrn_inactive(final),
            'reasons': sorted({r['reason'] for r in runs if r['reason']}),
        })
    return out


def effects(sweep, summary) -> list:
    """Ablated vs baseline (an axis's first value) for every other value of every axis: test
    error pooled over the other axes' values ('within' '') and within each of them; epochs to
    each threshold within each. Holm-adjusted p, verdict and minimum detectable effect added."""
    by_name = {s['point']: s for s in summary}
    found = []
    for i, axis in enumerate(sweep.axes):
        base = axis[0][0]
        others = [a for j, a in enumerate(sweep.axes) if j != i]
        for ablated, _ in axis[1:]:
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
                              'estimate': _error_effect(group),
                              'inactive': any(x['lrn_inactive'] for _, b, a in group
                                              for x in (b, a))})
            for within, b, a in pairs:
                for t in grid.thresholds(sweep):
                    found.append({**head, 'within': within, 'metric': t,
                                  'estimate': stats.censored_ratio(b['times'][t], a['times'][t]),
                                  'inactive': b['lrn_inactive'] or a['lrn_inactive'],
                                  'never': (sum(math.isinf(v) for v in b['times'][t].values()),
                                            sum(math.isinf(v) for v in a['times'][t].values()))})
    tested = [e for e in found if e['estimate'].n >= _least_seeds(e)
              and math.isfinite(e['estimate'].p)]
    z = stats.mde_z(len(tested))
    for e, p in zip(tested, stats.holm([e['estimate'].p for e in tested])):
        e['p_holm'] = p
    for e in found:
        est, ratio = e['estimate'], e['metric'] != 'top1'
        e['mde'] = (math.exp(z * est.se) if ratio else z * est.se) if math.isfinite(est.se) else None
        if ratio and 2.0 ** (1 - est.n) > stats.ALPHA / max(len(tested), 1):
            e['mde'] = 'unattainable'  # No outcome of n sign-test pairs reaches Holm's level.
        if 'p_holm' not in e:
            e['verdict'] = ('no estimate' if est.n == 0 else
                            f'not resolved: n={est.n} < {_least_seeds(e)} seeds'
                            if est.n < _least_seeds(e) else 'neither point reached it')
            continue
        e['verdict'] = stats.decide(est, e['p_holm'], 1.0 if ratio else 0.0,
                                    'ablated faster' if ratio else 'ablated better',
                                    'ablated slower' if ratio else 'ablated worse')
        if e['verdict'] == 'not resolved':
            e['verdict'] += f' at n={est.n}' + (
                '' if e['mde'] is None else
                f': no MDE (a sign test of {est.n} pairs cannot reach Holm\'s level)'
                if e['mde'] == 'unattainable' else
                f': MDE {e["mde"]:.2f}x' if ratio else f': MDE {100 * e["mde"]:.2f} points')
        if est.seeds_only:
            e['verdict'] += ' (seeds only: no per-image results)'
        if e['inactive']:
            e['verdict'] += '; LRN inactive at this input scale'
    return found


def _least_seeds(effect) -> int:
    """Seeds an effect needs for a verdict: a bootstrap's more than a t-test's (stats.py)."""
    if effect['metric'] == 'top1' and not effect['estimate'].seeds_only:
        return stats.MIN_BOOTSTRAP_SEEDS
    return stats.MIN_SEEDS


def _error_effect(group) -> stats.Estimate:
    """Ablated - baseline test errors per seed and image, averaged over the group's pairs at the
    seeds every pair has per-image results for; bootstrapped over seeds and images."""
    seeds = set.intersection(*(set(b['errors']) & set(a['errors']) for _, b, a in group))
    if not seeds:  # No per-image results (several hosts, older runs): the seeds alone.
        return _seeds_only_effect(group)
    diffs = np.stack([np.mean([a['errors'][s] - b['errors'][s] for _, b, a in group], axis=0)
                      for s in sorted(seeds)])
    return stats.bootstrap_estimate(diffs)


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
    return stats.Estimate(ci.mean, ci.lo, ci.hi, ci.n, p, se, seeds_only=True)


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


def markdown(sweep, summary, found, notes=()) -> list:
    seeds = grid.seeds(sweep)
    ts = grid.thresholds(sweep)
    tested = sum('p_holm' in e for e in found)
    lines = [f'# Ablation grid `{sweep.grid}` (base `{sweep.base}`, seeds {seeds[0]}..'
             f'{seeds[-1]})', '',
             'Test top-1 error: mean [95% interval] with seeds and test images resampled '
             'together (two-way bootstrap); top-5: t-interval over seeds. Epochs to a training '
             'error: median [distribution-free 95% interval] over the runs done, a run that '
             'never reached it (or diverged first) counted as longer than its length ("not reached" '
             'when more than half did not); the training error is measured on training batches in training mode '
             '(dropout active where the net has it).', '',
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
    lines += ['', 'Diagnostics (diagnostics.py; mean over seeds, first evaluation batch): the '
              'LRN divisor per LRN layer as p1 / p50 / p99 and p99 relative to k^beta; units '
              'ever active (output > 0 somewhere in the batch) and activation RMS per layer, at '
              'init -> at the end.', '',
              '| point | LRN divisor | units ever active | activation RMS | note |',
              '|---|---|---|---|---|']
    for s in summary:
        d = s['diag']
        layers = [k[len('final/'):-len('/active')] for k in d
                  if k.startswith('final/') and k.endswith('/active')]
        lrns = [k[len('final/'):-len('/divisor_p50')] for k in d
                if k.startswith('final/') and k.endswith('/divisor_p50')]
        lrn = '; '.join(f'{n} {d[f"final/{n}/divisor_p1"]:.3g} / {d[f"final/{n}/divisor_p50"]:.3g}'
                        f' / {d[f"final/{n}/divisor_p99"]:.3g} ({d[f"final/{n}/p99_over_k_beta"]:.3f}'
                        'x)' for n in lrns) or '-'
        active = ', '.join(f'{n} {d.get(f"init/{n}/active", math.nan):.2f}->'
                           f'{d[f"final/{n}/active"]:.2f}' for n in layers) or '-'
        rms = ', '.join(f'{n} {d.get(f"init/{n}/rms", math.nan):.3g}->{d[f"final/{n}/rms"]:.3g}'
                        for n in layers) or '-'
        note = 'LRN inactive at this input scale' if s['lrn_inactive'] else ''
        lines.append(f'| {s["point"]} | {lrn} | {active} | {rms} | {note} |')
    if found:
        lines += ['', f'Effects: ablated vs baseline (the first value of its axis). Test error: '
                  f'Δ points, paired by seed and test image, pooled ("all") over the other axes '
                  f'and within each; epochs: ratio of medians ablated / baseline within each '
                  f'(seeds bootstrapped in pairs; p from the sign test that counts runs that '
                  f'never reached). Verdicts at family-wise 5% by Holm over the {tested} tests '
                  f'of this grid (p_Holm); MDE: the smallest effect found with 80% power at '
                  f'Holm\'s strictest level (5% / {tested}). "never": runs that never reached '
                  f'the threshold, baseline / ablated.', '',
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
                ci = (f'[{_ratio(est.lo)}, {_ratio(est.hi)}]'
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


def _ratio(x: float) -> str:
    """A ratio of medians; 0 and inf: the baseline's / the ablated point's median not reached."""
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
        title += (f'\ntanh / ReLU {ratio["within"]} = {_ratio(est.value)} [{_ratio(est.lo)}, '
                  f'{_ratio(est.hi)}] (n={est.n}'
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
