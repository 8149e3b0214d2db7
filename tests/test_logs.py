"""The console log a person reads: short lines, no terminal control codes in a piped log, the
results and diagnostics as one line each, and an ETA that leaves out the compilation."""

import json
import re

import pytest

from alexnet_jax import diagnostics
from alexnet_jax import metrics
from tests.helpers import TINY, launch


@pytest.mark.slow  # A launch.py subprocess that builds the digits set first.
def test_piped_log_is_plain_and_short(tmp_path):
    # The digits set built into an empty data dir: TFDS's build (and its progress bars) runs.
    rc, out, err = launch(*TINY, '--config.data.name=digits', '--config.data.test_split=test',
                          '--config.data.train_augment=small',
                          f'--config.data.data_dir={tmp_path / "data"}',
                          '--config.train.num_steps=4', '--config.train.log_every_steps=1',
                          f'--workdir={tmp_path / "run"}')
    assert rc == 0, err[-3000:]
    log = out + err
    assert 'Building the embedded digits set' in log  # The build did run here.
    assert not re.search(r'[\r\x1b]', log)
    assert max(len(line) for line in log.splitlines()) <= 300
    results = json.loads((tmp_path / 'run' / 'results.json').read_text())
    line = next(line for line in log.splitlines() if 'Results:' in line)
    assert f'top-1 {100 * results["test_top1"]:.2f}%' in line and '4 steps' in line
    assert results['test_correct'] not in line and 'diagnostics' not in line


@pytest.mark.parametrize('stats, expected', [
    ({'lrn1/p99_over_k_beta': 5.3, 'lrn2/p99_over_k_beta': 1.0, 'conv1/active': 1.0,
      'fc7/active': 0.66, 'fc7/rms': 0.2},
     'LRN1 divisor p99 5.30x k^beta; LRN2 divisor p99 1.00x k^beta; '
     'fewest units ever active: fc7 66%'),
    ({'conv1/active': 0.5, 'conv2/active': 0.75}, 'fewest units ever active: conv1 50%'),
    ({'lrn1/p99_over_k_beta': 1.4, 'lrn1/spread': 5.25, 'fc8/active': 1.0},
     'LRN1 divisor p99 1.40x k^beta, spread p99/p1 5.25; fewest units ever active: fc8 100%'),
])
def test_diagnostics_summary(stats, expected):
    assert diagnostics.summary(stats) == expected


@pytest.mark.parametrize('intervals, expected', [
    ([], '-'),  # Only the first (compiling) interval: no ETA yet.
    ([(100.0, 0.1)], '-'),  # One more, which may hold the first evaluation's compilation.
    ([(100.0, 0.1), (100.0, 10.0)], '00:00:10'),  # 100 steps left at 10 steps/s.
    ([(100.0, 5.0), (100.0, 1.0), (100.0, 50.0)], '00:00:20'),  # The median rate, 5.
])
def test_eta_leaves_out_the_compilation(tmp_path, intervals, expected):
    recorder = metrics.Recorder(tmp_path, num_steps=1000, steps_per_epoch=100, batch_size=8,
                                plot=False)
    recorder.steady_rates = [rate for _, rate in intervals]
    assert recorder.eta(1000 - 100) == expected


def test_first_logged_interval_is_not_steady(tmp_path):
    recorder = metrics.Recorder(tmp_path, num_steps=10, steps_per_epoch=5, batch_size=8,
                                plot=False)
    scalars = {'loss': 1.0, 'top1': 0.5, 'lr': 0.1}
    recorder.write(2, 'train', scalars, num_steps_since=2)  # Holds the compilation.
    assert recorder.steady_rates == [] and recorder.eta(2) == '-'
    recorder.write(4, 'train', scalars, num_steps_since=2)
    recorder.write(6, 'train', scalars, num_steps_since=2)
    assert len(recorder.steady_rates) == 2 and recorder.eta(6) != '-'
