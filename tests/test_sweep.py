"""Ablation sweeps: grid expansion, reproducible commands, resume, failures, tables, figures."""

import json
import math
import re
import shlex

from absl import flags
from ml_collections import config_flags
import numpy as np
import pytest
from scipy import stats as scipy_stats

from alexnet_jax.tools import lr_search
from alexnet_jax.tools import grid as grid_lib
from alexnet_jax.tools import report
from alexnet_jax.tools import stats
from alexnet_jax.tools import sweep
from alexnet_jax import validation
from alexnet_jax import workdirs
from configs import ablations


@pytest.mark.parametrize('grid,points', [
    ('default', {f'{a}_{lrn}' for a in ('relu', 'tanh') for lrn in (
        'nolrn', 'lrnhi', 'matchedhi', 'lrnmid', 'matchedmid', 'lrnlo', 'matchedlo')}),
    ('pool', {'pool3s2', 'pool2s2'}),
    ('groups', {'groups2', 'half'}),
    ('dropout', {'dropout', 'nodropout'}),
    ('fig1', {'relu', 'tanh'}),
    ('fig1_paper_init', {'relu', 'tanh'}),
    ('fig1_he_init', {'relu', 'tanh'}),
])
def test_grid_expands_to_points_times_seeds(grid, points):
    config = ablations.get_config(grid)
    config.num_seeds = 2
    expanded = grid_lib.expand(config)
    assert {p.name for p in expanded} == points
    assert len(expanded) == 2 * len(points)
    assert len({p.dirname for p in expanded}) == len(expanded)
    for p in expanded:
        validation.validate_config(grid_lib.point_config(config, p))


def test_a_replication_takes_new_seeds():
    """first_seed: a second run of a grid trains new seeds, in their own seed<k> dirs, with no
    seed shared with the first run (the same seeds twice are not a replication)."""
    config = ablations.get_config('dropout')
    config.num_seeds = 20
    first = {p.seed for p in grid_lib.expand(config)}
    config.first_seed = 20
    again = grid_lib.expand(config)
    assert first == set(range(20)) and {p.seed for p in again} == set(range(20, 40))
    assert {p.dirname.split('/')[1] for p in again} == {f'seed{s}' for s in range(20, 40)}
    assert all(dict(p.overrides)['seed'] == p.seed for p in again)


def test_points_differ_in_exactly_the_swept_fields():
    config = ablations.get_config('default')
    by_name = {(p.name, p.seed): grid_lib.point_config(config, p) for p in grid_lib.expand(config)}
    relu, tanh = by_name[('relu_lrnhi', 0)], by_name[('tanh_nolrn', 1)]
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


def test_command_line_overrides_extend_the_grids_own(monkeypatch):
    """A default-grid run shortened on the command line keeps the grid's LRN alpha scaling."""
    monkeypatch.chdir(grid_lib.REPO)
    argv = ['sweep', '--config=configs/ablations.py',
            "--config.overrides=(('train.num_epochs', 2.0), ('model.lrn_beta', 0.5))"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file('config', flag_values=fv, sys_argv=argv)
    fv(argv)
    grid_lib.check_sweep(fv.config)
    plain = ablations.get_config('default')
    alphas = set()
    for point in grid_lib.expand(fv.config):
        config = grid_lib.point_config(fv.config, point)
        own = grid_lib.point_config(plain, point)  # The grid's own overrides and the axes'.
        alphas.add(config.model.lrn_alpha)
        assert config.model.lrn_alpha == own.model.lrn_alpha  # The grid's LRN scaling stays.
        assert (config.train.num_epochs, config.model.lrn_beta) == (2.0, 0.5)  # Yours.
        config.train.num_epochs, config.model.lrn_beta = own.train.num_epochs, own.model.lrn_beta
        assert config.to_dict() == own.to_dict()  # Nothing else moved.
    assert len(alphas) > 1 and all(a > 1e-4 for a in alphas)  # Scaled, per strength.


@pytest.mark.parametrize('grid', ['default', 'groups', 'pool'])
def test_printed_commands_reproduce_each_point(grid, tmp_path, monkeypatch):
    monkeypatch.chdir(grid_lib.REPO)  # Commands name configs/ relative to the repository.
    config = ablations.get_config(grid)
    config.num_seeds = 2
    for point in grid_lib.expand(config):
        parsed, workdir = parse_command(grid_lib.command(config, point, tmp_path))
        assert parsed.to_dict() == grid_lib.point_config(config, point).to_dict()
        assert workdir == str(tmp_path / point.dirname)


@pytest.mark.slow  # The CLI in a subprocess.
def test_print_commands_cli_runs_nothing(tmp_path):
    import subprocess, sys
    out = subprocess.run([sys.executable, '-m', 'alexnet_jax.tools.sweep',
                          '--config=configs/ablations.py:pool', f'--workdir={tmp_path}',
                          '--print_commands'], capture_output=True, text=True, cwd=grid_lib.REPO,
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
    config.contrasts = ()  # Each value vs the first.
    config.num_seeds = 1
    config.threshold = 0.99  # Reached at once: exercises the steps-to-threshold column.
    return config


def test_sweep_runs_records_failures_resumes_and_reports(tmp_path):
    config = tiny_sweep()
    points = grid_lib.expand(config)
    rows = [sweep.run_point(config, p, tmp_path) for p in points]
    status = {r['point']: r['status'] for r in rows}
    assert status == {'relu': 'done', 'tanh': 'done', 'diverge': 'failed'}
    failed = next(r for r in rows if r['status'] == 'failed')
    assert 'NonFiniteLossError' in failed['reason']
    assert 'rerun the sweep with --retry_failed' in failed['reason']  # A plain rerun skips it.
    for r in rows[:2]:
        assert 0 <= r['test_top1_error'] <= 1 and r['steps_to_threshold'] == 2

    # Resume: finished and failed points are not trained again.
    stamps = {p: (tmp_path / p.dirname / 'metrics.jsonl').stat().st_mtime_ns for p in points}
    again = [sweep.run_point(config, p, tmp_path) for p in points]
    assert again == rows
    assert stamps == {p: (tmp_path / p.dirname / 'metrics.jsonl').stat().st_mtime_ns
                      for p in points}

    table = report.write(config, rows, tmp_path)
    relu_error = 100 * rows[0]['test_top1_error']
    assert f'| relu | 1 | 0 | {relu_error:.2f} |' in table  # n=1: a mean, no interval.
    assert '| diverge | 0 | 1 |' in table and 'NonFiniteLossError' in table
    assert (tmp_path / 'results.csv').read_text().count('\n') == 1 + len(points)
    # The test examples' hits (for the intervals) are each run's test top-1, example by example.
    for r in rows[:2]:
        assert len(r['test_correct']) == 20  # data.fake_eval_examples
        assert 1 - r['test_correct'].count('1') / 20 == pytest.approx(r['test_top1_error'])
    # curves.csv: every logged training step of every finished run, with the validation error
    # at the eval steps (3 and 6) and the wall seconds, in the order they were trained.
    import csv as csv_lib
    curves = list(csv_lib.DictReader((tmp_path / 'curves.csv').open()))
    assert list(curves[0]) == list(report.CURVE_COLUMNS)
    for name in ('relu', 'tanh'):
        mine = [c for c in curves if c['point'] == name]
        history = [h for h in metrics_history(tmp_path / name / 'seed0') if h['split'] == 'train']
        assert [int(c['step']) for c in mine] == [h['step'] for h in history] == [2, 3, 4, 6]
        assert [float(c['train_error']) for c in mine] == pytest.approx(
            [1 - h['top1'] for h in history])
        assert [c['val_error'] != '' for c in mine] == [False, True, False, True]
        walls = [float(c['wall_seconds']) for c in mine]
        assert walls == sorted(walls) and walls[0] > 0
        assert all(float(c['lr']) > 0 for c in mine)
    figures = report.plot_figures(config, rows, tmp_path)
    assert (tmp_path / 'default_training_error.png') in figures  # Named after the grid.
    assert all(f.stat().st_size > 1000 for f in figures)


def test_a_rerun_with_a_changed_definition_is_refused_and_more_seeds_share_the_recipe(tmp_path):
    config = tiny_sweep()
    config.axes = config.axes[:1]
    config.axes = (config.axes[0][:1],)  # relu only.
    [point] = grid_lib.expand(config)
    [row] = sweep.run_seeds(config, [point], tmp_path)
    assert row['status'] == 'done'
    results = (tmp_path / 'relu' / 'seed0' / 'results.json').read_text()
    changed = config.copy_and_resolve_references()
    changed.base_overrides = tuple(sorted({**dict(config.base_overrides),
                                           'train.num_steps': 3}.items()))
    for legacy in (False, True):  # point.json, or (a sweep from before it) seed0/config.json.
        if legacy:
            (tmp_path / 'relu' / 'point.json').unlink()
        with pytest.raises(grid_lib.DefinitionError, match=r'train\.num_steps: 6 -> 3'):
            sweep.run_seeds(changed, grid_lib.expand(changed), tmp_path)
    assert (tmp_path / 'relu' / 'seed0' / 'results.json').read_text() == results
    # Another seed of the same definition is trained with the same recipe; seed 0 is kept.
    config.num_seeds = 2
    rows = sweep.run_seeds(config, grid_lib.expand(config), tmp_path)
    assert [r['status'] for r in rows] == ['done', 'done']
    assert json.loads((tmp_path / 'relu' / 'seed1' / 'results.json').read_text())['steps'] == 6
    assert (tmp_path / 'relu' / 'seed0' / 'results.json').read_text() == results
    assert json.loads((tmp_path / 'relu' / 'point.json').read_text())['overrides'][
        'model.activation'] == 'relu'
    # A field the code added or removed since (only one side has it) is not a change of the user's.
    record = json.loads((tmp_path / 'relu' / 'point.json').read_text())
    del record['config']['train.num_epochs']
    (tmp_path / 'relu' / 'point.json').write_text(json.dumps(record))
    assert [r['status'] for r in sweep.run_seeds(config, grid_lib.expand(config), tmp_path)] == [
        'done', 'done']


@pytest.mark.slow  # One spawned seed worker (it imports jax and TensorFlow) and two tiny runs.
def test_a_machine_error_in_one_seed_keeps_the_seeds_that_finished_and_a_rerun_resumes(tmp_path):
    """Only a diverged run is a result: the machine failing (here seed 1 cannot write its
    config.json) stops the grid in one line, records no failed.json, keeps the seed that
    finished, and once fixed a plain rerun trains the rest."""
    from alexnet_jax import errors  # pylint: disable=import-outside-toplevel
    config = tiny_sweep()
    config.base_overrides = tuple(sorted({
        **dict(config.base_overrides), 'data.train_augment': 'small', 'data.pad': 4,
        'data.device_resident': 'always', 'seeds_mode': 'processes', 'seed_workers': 1}.items()))
    config.num_seeds = 2
    points = [p for p in grid_lib.expand(config) if p.name == 'relu']
    # Not the user's config but the machine: seed 1 cannot write its config.json, after the
    # one worker finished seed 0.
    (tmp_path / 'relu' / 'seed1' / 'config.json').mkdir(parents=True)
    with pytest.raises(errors.EnvironmentFailure) as e:
        sweep.run_seeds(config, points, tmp_path)
    assert str(e.value).startswith('relu: IsADirectoryError') and '\n' not in str(e.value)
    assert 'rerun to resume' in str(e.value)
    assert (tmp_path / 'relu' / 'seed0' / 'results.json').exists()
    assert not list(tmp_path.rglob('failed.json'))  # Nothing recorded as a result.
    (tmp_path / 'relu' / 'seed1' / 'config.json').rmdir()  # Fixed: a plain rerun resumes.
    stamp = (tmp_path / 'relu' / 'seed0' / 'results.json').stat().st_mtime_ns
    rows = sweep.run_seeds(config, points, tmp_path)
    assert [r['status'] for r in rows] == ['done', 'done']
    assert (tmp_path / 'relu' / 'seed0' / 'results.json').stat().st_mtime_ns == stamp


def _write_run(workdir, errors, log_at, every, steps_per_epoch):
    """metrics.jsonl as the Recorder writes it: at each step of `log_at`, the mean training
    error of the steps since the previous record; config.json with the log interval."""
    workdir.mkdir(parents=True)
    (workdir / 'config.json').write_text(json.dumps({'model': {}, 'data': {},
                                                     'train': {'log_every_steps': every}}))
    lines, previous = [], 0
    for step in log_at:
        lines.append(json.dumps({'step': step, 'epoch': step / steps_per_epoch, 'split': 'train',
                                 'loss': 1.0, 'top1': 1 - float(np.mean(errors[previous:step]))}))
        previous = step
    (workdir / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')


def test_epochs_to_threshold_do_not_depend_on_where_a_preemption_logged(tmp_path):
    """A preempted run writes one more record (its stop step) than an uninterrupted one; the
    steps and epochs to the threshold are the same (issue 21: they moved from 58 to 60). Here
    the stop step's batch is a lucky one (error 0), at each odd step before the crossing."""
    steps, every, per_epoch = 120, 2, 19
    errors = np.linspace(0.6, 0.1, steps)  # Crosses 25% at step ~84.
    logs = sorted(set(range(every, steps + 1, every)) | set(range(per_epoch, steps, per_epoch)))
    config = ablations.get_config('default')
    config.threshold = 0.25
    point = grid_lib.expand(config)[0]
    for stopped_at in range(61, 91, 2):
        lucky = errors.copy()
        lucky[stopped_at - 1] = 0.0
        for name, log_at in (('clean', logs), ('resumed', sorted(set(logs) | {stopped_at}))):
            _write_run(tmp_path / f'{name}{stopped_at}', lucky, log_at, every, per_epoch)
        clean, resumed = (grid_lib.result_row(config, point, tmp_path / f'{d}{stopped_at}')
                          for d in ('clean', 'resumed'))
        assert clean['steps_to_threshold'] != ''
        assert resumed['steps_to_threshold'] == clean['steps_to_threshold'], stopped_at
        assert resumed['epochs_to_threshold'] == pytest.approx(clean['epochs_to_threshold'])
    # The curve at step 82: the training error of the 2-step windows that end in the last
    # epoch, (63, 82], computed directly: steps 63..82 (the window of steps 63-64 ends inside).
    step, epoch, error = grid_lib.training_error_curve(tmp_path / 'resumed89')[40]
    assert (step, epoch) == (82, 82 / 19)
    assert error == pytest.approx(np.mean(errors[62:82]), abs=1e-9)
    # train.log_every_steps=0 (log only at the end, as validation allows): one window a record.
    _write_run(tmp_path / 'end_only', errors, [steps], 0, per_epoch)
    assert grid_lib.training_error_curve(tmp_path / 'end_only') == [
        (steps, steps / 19, pytest.approx(np.mean(errors)))]  # The record averages them all.


def metrics_history(workdir):
    return workdirs.read_metrics(workdir)


TEST_IMAGES = 400


def hits(error: float, seed: int, point: str) -> str:
    """A '0'/'1' test_correct string with round(error * TEST_IMAGES) misses at random places."""
    rng = np.random.default_rng([seed, sum(map(ord, point))])
    wrong = set(rng.choice(TEST_IMAGES, round(error * TEST_IMAGES), replace=False).tolist())
    return ''.join('0' if i in wrong else '1' for i in range(TEST_IMAGES))


def grid_rows(errors: dict, epochs: dict = None) -> list:
    """results rows as result_row writes them, from {point: {seed: error}} (errors rounded to
    a whole number of the TEST_IMAGES test images) and {point: {seed: epochs to 25%}}."""
    rows = []
    for point, by_seed in errors.items():
        for seed, error in by_seed.items():
            e = '' if epochs is None else epochs[point].get(seed, '')
            correct = hits(error, seed, point)
            rows.append({'point': point, 'seed': seed, 'status': 'done', 'reason': '',
                         'test_top1_error': correct.count('0') / TEST_IMAGES,
                         'test_top5_error': error / 2,
                         'steps_to_threshold': '' if e == '' else 10 * e,
                         'epochs_to_threshold': e, 'train_seconds': 1.0, 'epochs_trained': 20.0,
                         'epochs_to_50pct': '' if e == '' else e / 2, 'epochs_to_25pct': e,
                         'epochs_to_10pct': '', 'test_correct': correct})
    return rows


def lrn_on_off():
    """The default grid with LRN on / off only (its first value the baseline)."""
    config = ablations.get_config('default')
    config.axes = (config.axes[0], ablations._axis(('lrn', {'model.lrn': True}),
                                                   ('nolrn', {'model.lrn': False})))
    config.contrasts = ()
    return config


def test_effects_are_paired_by_seed_and_image_and_averaged_over_the_other_axes():
    config = lrn_on_off()
    rng = np.random.default_rng(0)
    base = {'relu_lrn': 0.10, 'relu_nolrn': 0.13, 'tanh_lrn': 0.20, 'tanh_nolrn': 0.21}
    errors = {p: {s: b + rng.normal(0, 0.01) for s in range(4)} for p, b in base.items()}
    del errors['tanh_nolrn'][2]  # Seed 2 is missing at one point: out of every nolrn pair.
    rows = grid_rows(errors)
    found = report.effects(config, report.summarize(config, rows))
    main = {e['key']: e for e in found if not e['within'] and e['metric'] == 'top1'}
    # Hand: per seed and image, the mean over relu/tanh of (nolrn - lrn) misses; its mean.
    miss = {(r['point'], r['seed']): np.array([c == '0' for c in r['test_correct']], float)
            for r in rows}
    diffs = np.stack([np.mean([miss[(f'{a}_nolrn', s)] - miss[(f'{a}_lrn', s)]
                               for a in ('relu', 'tanh')], axis=0) for s in (0, 1, 3)])
    est = main['nolrn']['estimate']
    assert est.n == 3 and est.value == pytest.approx(diffs.mean())
    assert est.lo < est.value < est.hi
    assert main['tanh']['estimate'].n == 3
    # Conditional effects: LRN off within relu keeps all 4 seeds.
    within = {(e['key'], e['within']): e for e in found if e['within'] and e['metric'] == 'top1'}
    relu = [miss[('relu_nolrn', s)] - miss[('relu_lrn', s)] for s in range(4)]
    assert within[('nolrn', 'relu')]['estimate'].value == pytest.approx(np.mean(relu))
    assert within[('nolrn', 'relu')]['estimate'].n == 4
    # Speed effects only within a combination of the other axes (none pooled), per threshold.
    speed = [e for e in found if e['metric'] != 'top1']
    assert speed and all(e['within'] for e in speed)
    assert {e['metric'] for e in speed} == {0.5, 0.25, 0.1}


def test_tables_show_intervals_censored_speeds_holm_and_the_mde(tmp_path):
    config = ablations.get_config('fig1')
    config.num_seeds = 8
    errors = {'relu': {s: 0.10 + 0.01 * (s % 3) for s in range(8)},
              'tanh': {s: 0.20 + 0.01 * (s % 2) for s in range(8)}}
    # tanh never reaches 25% in seeds 6 and 7: counted as slower, not dropped.
    epochs = {'relu': {s: 2.0 + 0.5 * s for s in range(8)},
              'tanh': {0: 12.0, 1: 15.0, 2: 16.0, 3: 14.0, 4: 13.0, 5: 17.0}}
    rows = grid_rows(errors, epochs)
    table = report.write(config, rows, tmp_path, notes=['Learning rates: relu 0.01.'])
    lines = table.splitlines()
    relu = next(l for l in lines if l.startswith('| relu | 8 | 0 |'))
    assert '(8/8)' in relu
    tanh = next(l for l in lines if l.startswith('| tanh | 8 | 0 |'))
    # Median of 12 .. 17, inf, inf (the lower middle one, 15); 6 of 8 reached.
    assert '| 15.00 [' in tanh and '(6/8)' in tanh
    assert 'Learning rates: relu 0.01.' in table
    assert 'Holm over the ' in table and 'MDE' in table and 'dropout active' in table
    line = next(l for l in lines if l.startswith('| tanh vs relu | all | test top-1')
                or l.startswith('| tanh vs relu | - | test top-1'))
    rounded = {p: {s: round(e * TEST_IMAGES) / TEST_IMAGES for s, e in v.items()}
               for p, v in errors.items()}
    diff = np.mean([rounded['tanh'][s] - rounded['relu'][s] for s in range(8)])
    assert f'| 8 | {100 * diff:+.2f} |' in line
    ratio = next(l for l in lines if 'epochs to 25%, tanh/relu' in l)
    # The median of the per-seed ratios (the lower middle one), a censored tanh run's inf.
    per_seed = [epochs['tanh'].get(s, np.inf) / epochs['relu'][s] for s in range(8)]
    assert f'| {np.sort(per_seed)[3]:.2f}x |' in ratio
    assert '| 0 / 2 |' in ratio and '~6x (CIFAR-10)' in ratio
    # Every tanh seed is slower (two of them censored): the sign test counts all eight.
    assert 'ablated slower' in ratio


def test_figures_from_rows_without_curves(tmp_path):
    config = lrn_on_off()
    config.num_seeds = 2
    errors = {p: {0: 0.1 + 0.01 * k, 1: 0.12 + 0.01 * k}
              for k, p in enumerate(['relu_lrn', 'relu_nolrn', 'tanh_lrn', 'tanh_nolrn'])}
    rows = grid_rows(errors)
    figures = report.plot_figures(config, rows, tmp_path)
    assert [f.name for f in figures] == ['default_training_error.png', 'ablation_deltas.png']
    assert all(f.stat().st_size > 1000 for f in figures)


@pytest.mark.parametrize('trials,rate,reached,edge', [
    # Fewest epochs wins; a search seed that misses the target counts at the run's length (10).
    ([(0.003, [None, None], [0.5, 0.6]), (0.01, [4.0, 5.0], [0.1, 0.1]),
      (0.03, [3.0, None], [0.1, 0.3]), (0.1, [6.0, 6.0], [0.1, 0.1])], 0.01, True, False),
    # A rate where one seed never gets there loses to a slower one that trains every seed ...
    ([(0.01, [4.0, 5.0], [0.1, 0.1]), (0.03, [2.0, None], [0.1, 0.3], 5.0),
      (0.1, [6.0, 6.0], [0.1, 0.1])], 0.01, True, True),
    # ... and where no rate trains every seed, it is censored, not ruled out: (2 + 5) / 2 < 4.5.
    ([(0.01, [4.0, None], [0.1, 0.3], 5.0), (0.03, [2.0, None], [0.1, 0.3], 5.0),
      (0.1, [6.0, None], [0.1, 0.3], 5.0)], 0.03, True, False),
    # A tie goes to the smaller rate; at the grid's edge the choice says so.
    ([(0.01, [3.0], [0.1]), (0.1, [3.0], [0.1])], 0.01, True, True),
    # Nothing reaches the target: the lowest final training error; failed runs never win.
    ([(0.01, [None], [0.6]), (0.03, [None], [0.4]), (0.1, [None], [None])], 0.03, False, False),
    ([(0.01, [None], [None])], None, False, False),
])
def test_lr_search_choice(trials, rate, reached, edge):
    found = [lr_search.Trial(r, e, f, ['done'] * len(e), *(length or (10.0,)))
             for r, e, f, *length in trials]
    choice = lr_search.choose(found, 0.25)
    assert (choice['rate'], choice['reached']) == (rate, reached)
    assert ('edge' in choice['why']) == edge


@pytest.mark.parametrize('epochs, chosen, extended', [
    ([9, 7, 5, 3], 0.3, 0.9),                  # Fastest at the top edge: try 0.9.
    ([3, 5, 7, 9], 0.01, 0.0033),              # At the bottom edge: try 0.0033.
    ([9, 3, 5, 7], 0.03, None),                # Bracketed.
    ([9, 7, 3, 3], 0.1, None),                 # (A tie goes to the smaller rate, inside.)
    ([3, 3, 5, 7], 0.01, None),                # Ties its neighbour: no trend past the edge.
    ([9, 7, 5, None], 0.1, None),              # The top rate failed: bracketed by a failure.
    ([5, None, None, None], 0.01, 0.001),      # Only the edge worked: a decade at most.
    ([None, None, None, None], None, None),    # Nothing to go on.
])
def test_a_choice_at_an_edge_extends_the_grid_at_its_ratio(epochs, chosen, extended):
    rates = [0.01, 0.03, 0.1, 0.3] if epochs[1:] != [None] * 3 else [0.01, 1.0, 3.0, 9.0]
    trials = [lr_search.Trial(r, [e], [None if e is None else 0.1], ['done'])
              for r, e in zip(rates, epochs)]
    assert lr_search.past_edge(trials, chosen) == extended


def test_the_search_extends_each_point_until_its_choice_is_bracketed(tmp_path):
    """A fake run whose speed peaks at rate 1.0 for relu and 0.02 for tanh, beyond both
    edges of the configured grid: each point's search walks out to bracket its own best."""
    config = ablations.get_config('fig1')
    config.lr_search_rates, config.lr_search_seeds, config.threshold = (0.03, 0.1, 0.3), 2, 0.25
    best = {'relu': 1.0, 'tanh': 0.02}
    ran = []

    def run_seeds(sweep, points, root):  # Writes what a run writes: its curve and results.
        for point in points:
            run_point(sweep, point, root)

    def run_point(sweep, point, root):
        if (root / point.dirname / 'results.json').exists():  # Finished: skipped, as sweep's.
            return
        ran.append(point.dirname)
        rate = dict(point.overrides)['optim.learning_rate']
        speed = 0.1 / (1 + np.log10(rate / best[point.labels[0]]) ** 2)
        workdir = root / point.dirname
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / 'config.json').write_text(json.dumps({'model': {}, 'data': {},
                                                         'train': {'log_every_steps': 1}}))
        (workdir / 'metrics.jsonl').write_text(''.join(
            json.dumps({'step': t, 'epoch': t / 10, 'split': 'train', 'loss': 1.0,
                        'top1': min(1.0, speed * t)}) + '\n' for t in range(1, 101)))
        (workdir / 'results.json').write_text(json.dumps({'test_top1': 0.9, 'test_top5': 1.0}))

    choices = lr_search.run(config, tmp_path, run_seeds)
    assert choices['relu']['rate'] == 0.9 and choices['tanh']['rate'] == 0.03
    saved = json.loads((tmp_path / 'lr_search.json').read_text())
    for name in ('relu', 'tanh'):
        tried = [t['rate'] for t in saved[name]['trials']]
        assert min(tried) < choices[name]['rate'] < max(tried), (name, tried)
        assert 'edge' not in choices[name]['why']
    assert [t['rate'] for t in saved['relu']['trials']] == [0.03, 0.1, 0.3, 0.9, 2.7]
    assert [t['rate'] for t in saved['tanh']['trials']] == [0.009, 0.03, 0.1, 0.3]
    assert len(ran) == 2 * 9  # Each run once: extending trains only the new rates.
    table = (tmp_path / 'lr_search.md').read_text()
    assert 'lr 0.009 | lr 0.03' in table and 'lr 2.7 | chosen' in table


def test_fig1_protocol_configs():
    """No regularisation, no augmentation, cuda-convnet's init, a rate search, for both grids."""
    for name in ('fig1', 'fig1_cifar10'):
        config = ablations.get_config(name)
        assert len(config.lr_search_rates) >= 4 and config.lr_search_seeds >= 1
        base = grid_lib.load_base_config(config.base)
        assert base.optim.weight_decay == 0 and base.model.dropout_rate == 0
        assert base.data.pad == 0 and not base.data.random_flip and base.data.pca_lighting == 0
        assert base.model.init_scheme == 'cuda_convnet' and base.model.architecture == 'fig1'
        assert base.optim.schedule == 'constant'
    assert not ablations.get_config('default').lr_search_rates


def test_cuda_convnet_init_draws_the_table_stddevs():
    import jax
    from alexnet_jax import models
    config = grid_lib.load_base_config('configs/alexnet.py:digits_fig1')
    params = jax.jit(models.create_model(config.model).init)(
        jax.random.key(0), np.zeros((1, 32, 32, 1), np.float32))['params']
    # cuda-convnet's layers-18pct.cfg: initW 0.0001 (conv1), 0.01 (conv2, conv3, fc10); biases 0.
    for layer, std in {'conv1': 1e-4, 'conv2': 1e-2, 'conv3': 1e-2, 'fc4': 1e-2}.items():
        kernel = np.asarray(params[layer]['kernel'])
        assert np.std(kernel) == pytest.approx(std, rel=0.1), layer
        assert abs(np.mean(kernel)) < 5 * std / np.sqrt(kernel.size)  # Zero mean, 5 SE.
        assert not np.any(np.asarray(params[layer]['bias']))
    alexnet = grid_lib.load_base_config('configs/alexnet.py:digits').model
    alexnet.init_scheme, alexnet.width = 'cuda_convnet', 0.05
    with pytest.raises(ValueError, match='fig1'):  # The table covers only Fig1Net's layers.
        jax.eval_shape(models.create_model(alexnet).init, jax.random.key(0),
                       np.zeros((1, 67, 67, 1), np.float32))


@pytest.mark.slow  # Builds 5-6 train states (the real path compiles each init): ~1 min busy.
@pytest.mark.parametrize('grid', ['default', 'fig1'])
def test_paired_points_share_init_dropout_keys_and_data_order(grid):
    """Common random numbers: seed s of points that differ in activation or LRN starts from the
    same weights and dropout key and sees the same batches (the real create-state path and
    train_iterator, 2 batches). default: relu/tanh x LRN on/off; fig1: relu/tanh."""
    import jax
    from alexnet_jax.data import input_pipeline
    from alexnet_jax import train
    config = ablations.get_config(grid)
    config.num_seeds = 2
    configs = {(p.name, p.seed): grid_lib.point_config(config, p) for p in grid_lib.expand(config)}

    def start(name, seed):
        c = configs[(name, seed)]
        c.model.width = min(c.model.width, 0.1)  # Small and fast; every point alike.
        state, dropout_key = train.initial_state(c, input_pipeline.get_info(c), 10, 20)
        it = input_pipeline.train_iterator(c)
        return state.params, jax.random.key_data(dropout_key), [next(it) for _ in range(2)]

    names = list(dict.fromkeys(name for name, _ in configs))
    (p0, k0, d0), *others = [start(name, 0) for name in names]
    for params, key, batches in others:
        assert jax.tree.structure(params) == jax.tree.structure(p0)
        jax.tree.map(np.testing.assert_array_equal, params, p0)
        np.testing.assert_array_equal(key, k0)
        for x, y in zip(batches, d0):
            np.testing.assert_array_equal(x['image'], y['image'])
            np.testing.assert_array_equal(x['label'], y['label'])
    # Another seed changes both (so the equalities above are not vacuous).
    p1, k1, d1 = start(names[0], 1)
    assert not np.array_equal(p0['conv1']['kernel'], p1['conv1']['kernel'])
    assert not np.array_equal(k0, k1)
    assert not np.array_equal(d0[0]['label'], d1[0]['label'])


def test_fig1_print_commands_search_first_then_the_chosen_rates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(grid_lib.REPO)
    config = ablations.get_config('fig1')
    config.num_seeds = 2
    points, search = grid_lib.expand(config), lr_search.all_search_points(config)
    sweep.print_commands(config, points, search, tmp_path)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 * len(config.lr_search_rates) * config.lr_search_seeds
    for line, point in zip(lines, search):
        parsed, workdir = parse_command(line)
        assert parsed.to_dict() == grid_lib.point_config(config, point).to_dict()
        assert parsed.optim.learning_rate == float(point.labels[-1][2:])
        assert parsed.seed >= lr_search.SEARCH_SEED0  # Disjoint from the grid's seeds.
        assert workdir == str(tmp_path / 'lr_search' / point.dirname)
    # Once the search is recorded, each grid point's seeds run at its chosen rate.
    found = {name: [lr_search.Trial(float(r), [1.0 if (name, r) in {('relu', 0.02), ('tanh', 0.1)}
                                               else None], [0.1], ['done'])
                    for r in config.lr_search_rates] for name in ('relu', 'tanh')}
    choices = {n: lr_search.choose(t, config.threshold) for n, t in found.items()}
    md = lr_search.write(config, found, choices, tmp_path)
    assert '| relu |' in md and '| 0.02 | fewest epochs' in md
    sweep.print_commands(config, points, search, tmp_path)
    grid_lines = capsys.readouterr().out.strip().splitlines()[len(lines):]
    rates = {(parse_command(l)[0].model.activation, parse_command(l)[0].seed):
             parse_command(l)[0].optim.learning_rate for l in grid_lines}
    assert rates == {('relu', 0): 0.02, ('relu', 1): 0.02, ('tanh', 0): 0.1, ('tanh', 1): 0.1}


@pytest.mark.slow  # Trains three tiny runs.
def test_lr_search_runs_resumes_and_applies_the_choice(tmp_path):
    config = tiny_sweep()
    config.axes = (ablations._axis(('relu', {'model.activation': 'relu'})),)
    config.lr_search_rates, config.lr_search_seeds = (0.01, 0.1, 1e30), 1
    choices = lr_search.run(config, tmp_path, sweep.run_seeds)
    search = tmp_path / 'lr_search'
    assert (search / 'relu_lr0.01' / 'seed1000' / 'results.json').exists()
    assert 'NonFiniteLossError' in (search / 'relu_lr1e+30' / 'seed1000' / 'failed.json').read_text()
    assert choices['relu']['rate'] == 0.01 and choices['relu']['reached']
    saved = json.loads((tmp_path / 'lr_search.json').read_text())
    assert saved['relu']['chosen']['rate'] == 0.01
    assert [t['status'] for t in saved['relu']['trials']] == [['done'], ['done'], ['failed']]
    stamp = (search / 'relu_lr0.01' / 'seed1000' / 'metrics.jsonl').stat().st_mtime_ns
    assert lr_search.run(config, tmp_path, sweep.run_seeds) == choices  # Resumed: nothing ran.
    assert (search / 'relu_lr0.01' / 'seed1000' / 'metrics.jsonl').stat().st_mtime_ns == stamp
    (point,) = lr_search.apply(grid_lib.expand(config), choices)
    assert dict(point.overrides)['optim.learning_rate'] == 0.01 and point.dirname == 'relu/seed0'
    row = sweep.run_point(config, point, tmp_path)
    assert row['status'] == 'done'
    assert json.loads((tmp_path / 'relu' / 'seed0' / 'config.json').read_text())['optim'][
        'learning_rate'] == 0.01


@pytest.mark.parametrize('field,value,message', [
    ('num_seeds', 0, 'config.num_seeds: must be an integer >= 1, got 0.'),
    ('first_seed', -1, 'config.first_seed: must be an integer >= 0, got -1.'),
    # --config.base_overrides=notatuple, as the flag parser hands it over:
    ('base_overrides', ('notatuple',), 'config.base_overrides: must be a tuple of (field, value)'),
    ('base_overrides', (('train.num_epochs',),), 'config.base_overrides: must be a tuple'),
    ('overrides', ('notatuple',), 'config.overrides: must be a tuple'),
])
def test_the_grids_own_fields_are_one_line_errors(field, value, message):
    """Once an IndexError (num_seeds=0) or a ValueError deep in the expansion (a string)."""
    config = ablations.get_config('pool')
    config[field] = value
    with pytest.raises(validation.ConfigError) as e:
        grid_lib.check_sweep(config)
    assert message in str(e.value) and '\n' not in str(e.value)
    grid_lib.check_sweep(ablations.get_config('pool'))  # The grids as shipped pass.


def test_a_changed_search_or_point_is_refused_before_the_search_rewrites_its_record(tmp_path):
    """A rerun with other lr_search_rates once ran the new search, rewrote lr_search.json/md,
    and only then refused the trained points: lr_search.md contradicted them."""
    config = ablations.get_config('fig1')
    config.num_seeds = 2
    found = {name: [lr_search.Trial(float(r), [1.0 if r == 0.01 else None], [0.1], ['done'])
                    for r in config.lr_search_rates] for name in ('relu', 'tanh')}
    choices = {n: lr_search.choose(t, config.threshold) for n, t in found.items()}
    lr_search.write(config, found, choices, tmp_path)
    points = grid_lib.expand(config)
    trained = lr_search.apply(points, choices)[0]
    grid_lib.check_definition(config, trained, tmp_path / trained.name)  # relu's point.json,
    (tmp_path / 'relu' / 'seed0').mkdir()  # and a seed that started.
    (tmp_path / 'relu' / 'seed0' / 'config.json').write_text('{}')
    lr_search.check_recorded(config, tmp_path, points)  # The same grid: nothing to refuse.
    before = (tmp_path / 'lr_search.md').read_text()
    other = ablations.get_config('fig1')
    other.num_seeds, other.lr_search_rates = 2, (0.01, 0.1)
    with pytest.raises(grid_lib.DefinitionError, match=r'was searched with rates \[0\.001'):
        lr_search.check_recorded(other, tmp_path, grid_lib.expand(other))
    changed = ablations.get_config('fig1')
    changed.num_seeds = 2
    changed.base_overrides = tuple(sorted({**dict(changed.base_overrides),
                                           'optim.momentum': 0.5}.items()))
    with pytest.raises(grid_lib.DefinitionError, match='optim.momentum: 0.9 -> 0.5'):
        lr_search.check_recorded(changed, tmp_path, grid_lib.expand(changed))
    assert (tmp_path / 'lr_search.md').read_text() == before


def test_a_point_json_left_by_a_stopped_rerun_does_not_refuse_the_corrected_one(tmp_path):
    """A sweep stopped by a user error after recording point.json, before any seed started:
    the corrected rerun is not 'trained with another definition'; once a seed has started, a
    changed definition is refused."""
    config = ablations.get_config('pool')
    point = grid_lib.expand(config)[0]
    wrong = ablations.get_config('pool')
    wrong.base_overrides = tuple(sorted({**dict(wrong.base_overrides),
                                         'train.num_epochs': 1e9}.items()))
    wrong_point = grid_lib.expand(wrong)[0]
    assert wrong_point.name == point.name
    grid_lib.check_definition(wrong, wrong_point, tmp_path / point.name)  # Then a user error.
    grid_lib.check_definition(config, point, tmp_path / point.name)  # Corrected: accepted,
    recorded = json.loads((tmp_path / point.name / 'point.json').read_text())
    assert recorded['config']['train.num_epochs'] == 12.0  # and recorded anew.
    (tmp_path / point.name / 'seed0').mkdir()
    (tmp_path / point.name / 'seed0' / 'config.json').write_text('{}')  # A seed started.
    with pytest.raises(grid_lib.DefinitionError, match='train.num_epochs'):
        grid_lib.check_definition(wrong, wrong_point, tmp_path / point.name)


def test_a_replication_cannot_reuse_the_search_seeds():
    config = ablations.get_config('fig1')
    config.first_seed = 999  # 999..1001 would include the search's 1000, 1001.
    with pytest.raises(validation.ConfigError, match='overlap the learning-rate search'):
        grid_lib.check_sweep(config)
    config.first_seed = 20
    grid_lib.check_sweep(config)


@pytest.mark.slow  # The CLI in subprocesses: the printed lines, run as a scheduler would.
def test_collect_reports_the_runs_of_the_printed_commands(tmp_path):
    import subprocess, sys
    from tests.helpers import subprocess_env
    config = tiny_sweep()
    config.axes = (config.axes[0][:2],)  # relu, tanh: no divergence.
    points = grid_lib.expand(config)
    lines = [grid_lib.command(config, p, tmp_path) for p in points]
    for line in lines:  # What --print_commands prints, one line per point and seed.
        args = shlex.split(line)[1:]
        # The test run's two devices: the points' programs are those the in-process sweeps
        # compiled (the persistent cache), not a one-device set compiled for this test alone.
        run = subprocess.run([sys.executable, *args], cwd=grid_lib.REPO, capture_output=True,
                             text=True, timeout=600, env=subprocess_env())
        assert run.returncode == 0, run.stderr[-2000:]
    rows = [grid_lib.result_row(config, p, tmp_path / p.dirname) for p in points]
    assert [r['status'] for r in rows] == ['done', 'done']
    sweep.collect(config, points, tmp_path)
    table = (tmp_path / 'results.md').read_text()
    for r in rows:
        assert f'| {r["point"]} | 1 | 0 | {100 * r["test_top1_error"]:.2f} |' in table
    assert (tmp_path / 'curves.csv').exists()
    assert (tmp_path / f'{config.grid}_training_error.png').exists()


@pytest.mark.slow  # Trains two tiny points.
def test_a_sweep_logs_its_progress_and_labels_each_run(tmp_path, caplog):
    # absl's logger at INFO: an earlier test in this process may have left it at WARNING.
    config = tiny_sweep()
    config.axes = (config.axes[0][:2],)  # relu, tanh.
    with caplog.at_level('INFO', logger='absl'):
        rows = sweep.run_grid(config, grid_lib.expand(config), tmp_path)
    assert [r['status'] for r in rows] == ['done', 'done']
    messages = [r.getMessage() for r in caplog.records]
    assert 'point 1/2 relu, seeds 0, ETA -' in messages  # Nothing timed yet.
    second = next(m for m in messages if m.startswith('point 2/2 tanh, seeds 0, ETA '))
    assert re.fullmatch(r'point 2/2 tanh, seeds 0, ETA \d+:\d\d:\d\d', second)
    for name in ('relu', 'tanh'):  # Every line of a run names its point and seed.
        assert any(m.startswith(f'{name} seed 0: step 6/6') for m in messages), name
    with caplog.at_level('INFO', logger='absl'):
        caplog.clear()
        sweep.run_grid(config, grid_lib.expand(config), tmp_path)
    assert 'point 2/2 tanh, seeds 0, ETA - (finished)' in [r.getMessage() for r in caplog.records]
