"""Published numbers: the docs regenerate from the committed results, one Holm family across
grids, and the pixel baselines beside them."""

import json
import shutil

import numpy as np
import pytest

from alexnet_jax.data import digits
from alexnet_jax.tools import baselines
from alexnet_jax.tools import lr_search
from alexnet_jax.tools import publish
from alexnet_jax.tools import report
from configs import ablations
from tests.test_sweep import grid_rows


def test_the_docs_regenerate_from_the_committed_results():
    """Every generated page and block, rendered from docs/results, is what the docs hold."""
    assert list(publish.RESULTS.glob('*/results.csv')), 'no published grid'
    for path, text in publish.render().items():
        assert path.read_text() == text, f'{path} differs from its results: run ' \
                                         f'python -m alexnet_jax.tools.publish'


def _holm_by_hand(p):
    """Holm's adjusted p-values, written out: sort, multiply by m - rank, running maximum."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def test_one_holm_family_across_grids():
    """Two grids' verdicts decided together: each adjusted p is Holm's over the union, not
    over its own grid; an effect that passes within its grid can fail in the family. On the
    digits test error is an estimate, not a test; off them it is tested."""
    found = []
    for name, shift in (('pool', 0.02), ('dropout', 0.0)):
        config = ablations.get_config(name)
        if name == 'pool':
            config.base = 'configs/alexnet.py:imagenette'
        base, ablated = [label for label, _ in config.axes[0]]
        errors = {base: {s: 0.05 for s in range(10)},
                  ablated: {s: 0.05 + shift for s in range(10)}}
        epochs = {base: {s: 4.0 + 0.1 * s for s in range(10)},
                  ablated: {s: (4.0 + 0.1 * s) * (1.3 if s < 10 - (name == 'dropout') else 0.9)
                            for s in range(10)}}
        rows = grid_rows(errors, epochs)
        found.append(report.estimates(config, report.summarize(config, rows)))
    report.decide(found[0])
    alone = [e['p_holm'] for e in found[0] if 'p_holm' in e]
    together = found[0] + found[1]
    size = report.decide(together)
    tested = [e for e in together if 'p_holm' in e]
    assert size == len(tested) == 3  # Epochs to 25% in each grid, test error off the digits.
    assert [(e['metric'], e['within']) for e in tested if e['metric'] == 'top1'] == [('top1', '')]
    assert [e['verdict'] for e in found[1] if e['metric'] == 'top1'] == [
        'not tested (estimate only)']
    expected = _holm_by_hand([e['estimate'].p for e in tested])
    assert [e['p_holm'] for e in tested] == pytest.approx(expected)
    assert all(e['family'] == 3 for e in together)
    assert max(expected[:2]) > max(alone)  # A larger family, larger adjusted p-values.


def test_the_1nn_baseline_against_numpy():
    """The 1-NN error on the digits' test split, by brute-force distances in numpy."""
    images, labels = digits.load_sklearn()
    x = images.reshape(len(images), -1).astype(np.float64)
    split = digits.split_indices(labels)
    train, test = x[split['train']], x[split['test']]
    d = ((test[:, None, :] - train[None, :, :]) ** 2).sum(-1)
    predicted = labels[split['train']][np.argmin(d, axis=1)]
    errors = baselines.digits_test_errors()
    assert errors['1-NN (raw pixels)'] == pytest.approx(
        np.mean(predicted != labels[split['test']]))
    assert 0 < errors['logistic regression (raw pixels)'] < 0.1


def test_the_published_lrn_control_has_lrns_scale_at_init():
    """From the runs' own diagnostics (mean over seeds): every matched control's logits RMS at
    init is within [0.7, 1.4] of its LRN arm's, and LRN ran at >= 3 strengths whose LRN1
    divisor spreads at init differ."""
    sweep, rows = publish.read(publish.RESULTS / 'lrn')
    mean = lambda point, key: np.mean([float(r[key]) for r in rows
                                       if r['point'] == point and r['status'] == 'done'])
    points = {r['point'] for r in rows}
    controls = [p for p in points if '_matched' in p]
    assert controls
    for p in controls:
        arm = p.replace('_matched', '_lrn')
        assert 0.7 <= mean(p, 'init/fc8/rms') / mean(arm, 'init/fc8/rms') <= 1.4, p
    spreads = {round(mean(p, 'init/lrn1/spread'), 2) for p in points if '_lrn' in p
               and p.startswith('relu_')}
    assert len(spreads) >= 3


def test_a_searched_grid_publishes_every_rate_and_search_seed(tmp_path):
    """A grid's lr_search.json renders as its `lr-search-<grid>` block: each search seed's
    epochs to 25% per rate, and the mean with a run that never reached it counted at the run's
    length (worked out by hand here)."""
    shutil.copytree(publish.RESULTS / 'pool', tmp_path / 'results' / 'searched')
    epochs = {0.01: [2.0, 2.5, None], 0.1: [1.0, None, 1.5]}
    record = {'relu': {'chosen': {'rate': 0.01, 'why': 'fewest epochs'}, 'trials': [
        {'rate': rate, 'epochs': each, 'final_error': [0.1, 0.3, 0.2],
         'status': ['done'] * 3, 'length': 12.0} for rate, each in epochs.items()]}}
    (tmp_path / 'results' / 'searched' / publish.SEARCH).write_text(json.dumps(record))
    page = tmp_path / 'summary.md'
    page.write_text('<!-- generated: lr-search-searched -->\nstale\n<!-- end -->\n')
    block = publish.render(tmp_path / 'results', page)[page]
    row = next(line for line in block.splitlines() if line.startswith('| relu |'))
    assert row.split(' | ')[1:4] == ['2.00, 2.50, -: 5.50 (20.0%)',
                                     '1.00, -, 1.50: 4.83 (20.0%)', '0.01']
    assert 'stale' not in block
    figure = tmp_path / 'search.png'
    sweep = publish.read(tmp_path / 'results' / 'searched')[0]
    publish.lr_search_figure(sweep, *lr_search.from_record(record), figure)
    assert figure.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_training_error_curves_average_over_the_last_epoch(tmp_path):
    """The published Fig. 1 curves: at each logged step the error over the epoch ending there,
    weighted by steps (here 4 steps an epoch, logged every 2), worked out by hand."""
    curves = tmp_path / 'curves.csv'
    lines = ['point,seed,step,epoch,wall_seconds,train_loss,train_error,val_error,lr']
    for step, error in ((2, 0.9), (4, 0.7), (6, 0.5), (8, 0.1)):
        lines.append(f'relu,0,{step},{step / 4},1.0,1.0,{error},,0.01')
    lines.append('relu,0,9,2.25,,,,0.2,')  # A validation-only line: not a training point.
    curves.write_text('\n'.join(lines) + '\n')
    (curve,) = publish.training_error_curves(curves)['relu']
    assert [e for e, _ in curve] == [0.5, 1.0, 1.5, 2.0]
    assert [error for _, error in curve] == pytest.approx([0.9, 0.8, 0.6, 0.3])
    figure = tmp_path / 'curves.png'
    sweep = ablations.get_config('fig1')
    publish.training_error_figure(sweep, curves, [], figure)
    assert figure.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
