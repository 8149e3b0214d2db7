"""Ablation sweeps: grid expansion, reproducible commands, resume, failures, tables, figures."""

import shlex

from absl import flags
from ml_collections import config_flags
import pytest

from alexnet_jax import sweep
from alexnet_jax import validation
from configs import ablations


@pytest.mark.parametrize('grid,points', [
    ('default', {'relu_lrn', 'relu_nolrn', 'tanh_lrn', 'tanh_nolrn'}),
    ('pool', {'pool3s2', 'pool2s2'}),
    ('groups', {'groups2', 'half'}),
    ('dropout', {'dropout', 'nodropout'}),
    ('fig1', {'relu', 'tanh'}),
])
def test_grid_expands_to_points_times_seeds(grid, points):
    config = ablations.get_config(grid)
    config.num_seeds = 2
    expanded = sweep.expand(config)
    assert {p.name for p in expanded} == points
    assert len(expanded) == 2 * len(points)
    assert len({p.dirname for p in expanded}) == len(expanded)
    for p in expanded:
        validation.validate_config(sweep.point_config(config, p))


def test_points_differ_in_exactly_the_swept_fields():
    config = ablations.get_config('default')
    by_name = {(p.name, p.seed): sweep.point_config(config, p) for p in sweep.expand(config)}
    relu, tanh = by_name[('relu_lrn', 0)], by_name[('tanh_nolrn', 1)]
    assert (relu.model.activation, relu.model.lrn, relu.seed) == ('relu', True, 0)
    assert (tanh.model.activation, tanh.model.lrn, tanh.seed) == ('tanh', False, 1)
    tanh.model.activation, tanh.model.lrn, tanh.seed = 'relu', True, 0
    assert tanh.to_dict() == relu.to_dict()


def parse_command(line: str):
    """Parses a printed launch.py line with config_flags, as launch.py would."""
    argv = shlex.split(line)
    assert argv[:2] == ['python', 'launch.py']
    argv = ['launch.py'] + argv[2:]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file('config', flag_values=fv, sys_argv=argv)
    flags.DEFINE_string('workdir', None, '', flag_values=fv)
    fv(argv)
    return fv.config, fv.workdir


@pytest.mark.parametrize('grid', ['default', 'groups', 'pool'])
def test_printed_commands_reproduce_each_point(grid, tmp_path, monkeypatch):
    monkeypatch.chdir(sweep.REPO)  # Commands name configs/ relative to the repository.
    config = ablations.get_config(grid)
    config.num_seeds = 2
    for point in sweep.expand(config):
        parsed, workdir = parse_command(sweep.command(config, point, tmp_path))
        assert parsed.to_dict() == sweep.point_config(config, point).to_dict()
        assert workdir == str(tmp_path / point.dirname)


def test_print_commands_cli_runs_nothing(tmp_path):
    import subprocess, sys
    out = subprocess.run([sys.executable, '-m', 'alexnet_jax.sweep',
                          '--config=configs/ablations.py:pool', f'--workdir={tmp_path}',
                          '--print_commands'], capture_output=True, text=True, cwd=sweep.REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 * 3 and all(l.startswith('python launch.py') for l in lines)
    assert list(tmp_path.iterdir()) == []


def test_unknown_grid_lists_valid_ones():
    with pytest.raises(ValueError, match='choose one of'):
        ablations.get_config('bogus')


def tiny_sweep():
    """Three points on tiny fake data: relu, tanh, and one that diverges (lr 1e30)."""
    config = ablations.get_config('default')
    config.base = 'configs/alexnet.py:fake'
    config.base_overrides = tuple(sorted({
        'model.width': 0.05, 'model.num_classes': 10, 'data.fake_shape': (70, 70, 3),
        'data.fake_num_classes': 10, 'data.fake_train_examples': 64,
        'data.fake_eval_examples': 20, 'data.resize_size': 70, 'data.image_size': 67,
        'train.batch_size': 8, 'train.eval_batch_size': 8, 'train.num_steps': 6,
        'train.log_every_steps': 2, 'train.eval_every_steps': 3, 'train.plot': False,
        'optim.schedule': 'constant'}.items()))
    config.axes = ablations._axis(
        ('relu', {'model.activation': 'relu'}), ('tanh', {'model.activation': 'tanh'}),
        ('diverge', {'model.activation': 'tanh', 'optim.learning_rate': 1e30})),
    config.num_seeds = 1
    config.threshold = 0.99  # Reached at once: exercises the steps-to-threshold column.
    return config


def test_sweep_runs_records_failures_resumes_and_reports(tmp_path):
    config = tiny_sweep()
    points = sweep.expand(config)
    rows = [sweep.run_point(config, p, tmp_path) for p in points]
    status = {r['point']: r['status'] for r in rows}
    assert status == {'relu': 'done', 'tanh': 'done', 'diverge': 'failed'}
    failed = next(r for r in rows if r['status'] == 'failed')
    assert 'NonFiniteLossError' in failed['reason']
    for r in rows[:2]:
        assert 0 <= r['test_top1_error'] <= 1 and r['steps_to_threshold'] == 2

    # Resume: finished and failed points are not trained again.
    stamps = {p: (tmp_path / p.dirname / 'metrics.jsonl').stat().st_mtime_ns for p in points}
    again = [sweep.run_point(config, p, tmp_path) for p in points]
    assert again == rows
    assert stamps == {p: (tmp_path / p.dirname / 'metrics.jsonl').stat().st_mtime_ns
                      for p in points}

    table = sweep.write_tables(config, rows, tmp_path)
    relu_error = 100 * rows[0]['test_top1_error']
    assert f'| relu | 1 | 0 | {relu_error:.2f} ± 0.00 |' in table
    assert '| diverge | 0 | 1 |' in table and 'NonFiniteLossError' in table
    assert (tmp_path / 'results.csv').read_text().count('\n') == 1 + len(points)
    figures = sweep.plot_figures(config, rows, tmp_path)
    assert (tmp_path / 'fig1_training_error.png') in figures
    assert all(f.stat().st_size > 1000 for f in figures)


def test_axis_effects_average_over_the_other_axes():
    config = ablations.get_config('default')
    summary = [{'point': n, 'top1': (e, 0.01)} for n, e in [
        ('relu_lrn', 0.10), ('relu_nolrn', 0.13), ('tanh_lrn', 0.20), ('tanh_nolrn', 0.21)]]
    effects = {e['key']: e for e in sweep.axis_effects(config, summary)}
    assert effects['nolrn']['delta'] == pytest.approx(0.02)   # (0.03 + 0.01) / 2
    assert effects['tanh']['delta'] == pytest.approx(0.09)    # (0.10 + 0.08) / 2
