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
