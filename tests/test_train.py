"""The train loop, run for real on tiny fake data (2 simulated CPU devices, see conftest)."""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import checkpoints
from alexnet_jax.data import input_pipeline
from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax.data import preprocess
from alexnet_jax import train
from alexnet_jax import workdirs
from tests.helpers import assert_trees_close, device_config, saved_state, shard, tiny_config


def test_one_real_step_writes_everything(tmp_path):
    config = tiny_config(num_steps=1, plot=True)
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results['steps'] == 1 and np.isfinite(results['test_loss'])
    assert 0 <= results['test_top1'] <= results['test_top5'] <= 1
    assert json.loads((tmp_path / 'results.json').read_text()) == results
    records = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert {r['split'] for r in records} == {'train', 'val', 'test', 'diagnostics'}
    assert {'loss', 'top1', 'top5', 'lr', 'steps_per_second', 'images_per_second',
            'wall_seconds'} <= set(next(r for r in records if r['split'] == 'train'))
    assert (tmp_path / 'learning_curves.png').stat().st_size > 0
    assert saved_state(config, str(tmp_path))[0].step == 1


def _run_steps(config, devices, batches):
    """The real pmapped train_step on `devices`; each global batch split over them."""
    info = input_pipeline.get_info(config)
    state, key = train.initial_state(config, info, 10, 10)
    state = parallel.replicate(state, devices)
    mean, std = preprocess.mean_std(config.data, info.image_shape[-1])
    step = jax.pmap(functools.partial(train.train_step, dropout_key=key, mean=mean, std=std),
                    axis_name=parallel.AXIS, devices=devices)
    for batch in batches:
        state, metrics = step(state, shard(batch, len(devices)))
    return parallel.unreplicate(state), parallel.unreplicate(metrics)


def test_two_devices_equal_one_device():
    config = tiny_config()
    config.model.dropout_rate = 0.0
    rng = np.random.RandomState(0)
    batches = [{'image': rng.randn(8, 67, 67, 3).astype(np.float32),
                'label': rng.randint(0, 10, 8).astype(np.int32)} for _ in range(3)]
    one, m1 = _run_steps(config, jax.devices()[:1], batches)
    two, m2 = _run_steps(config, jax.devices()[:2], batches)
    assert_trees_close(one.params, two.params, atol=1e-6)
    np.testing.assert_allclose(m1['loss'], m2['loss'], rtol=1e-5)


def test_dropout_masks_differ_per_device_and_step():
    key = jax.random.key(0)
    x = jnp.ones((2, 4, 64))  # The same input on both devices.

    @functools.partial(jax.pmap, axis_name=parallel.AXIS)
    def masks(x, step):
        rng = train.dropout_rng(key, step)
        return models.nn.Dropout(0.5, deterministic=False).apply({}, x, rngs={'dropout': rng})
    step0 = np.asarray(masks(x, jnp.zeros(2, jnp.int32))) > 0
    step1 = np.asarray(masks(x, jnp.ones(2, jnp.int32))) > 0
    assert (step0[0] != step0[1]).any(), 'both devices drew the same dropout mask'
    assert (step0[0] != step1[0]).any(), 'two steps drew the same dropout mask'
    np.testing.assert_array_equal(step0, np.asarray(masks(x, jnp.zeros(2, jnp.int32))) > 0)


def test_step_compiles_once(tmp_path, monkeypatch):
    traces = []
    real_step = train.train_step

    def counting_step(*args, **kwargs):  # Runs once per compilation (trace), not per step.
        traces.append(1)
        return real_step(*args, **kwargs)
    monkeypatch.setattr(train, 'train_step', counting_step)
    config = tiny_config(num_steps=12, log_every_steps=1, eval_every_steps=4,
                         checkpoint_every_steps=5)
    train.train_and_evaluate(config, str(tmp_path))
    assert len(traces) == 1


def test_resume_finished_run_only_reevaluates_and_mismatch_is_clear(tiny_run, tmp_path):
    config = tiny_config()
    shutil.copytree(tiny_run[0], tmp_path, dirs_exist_ok=True)  # A finished run of `config`.
    first = tiny_run[1]
    lines = (tmp_path / 'metrics.jsonl').read_text().count('"split": "train"')
    again = train.train_and_evaluate(config, str(tmp_path))
    assert again['test_top1'] == first['test_top1'] and again['steps'] == first['steps']
    assert (tmp_path / 'metrics.jsonl').read_text().count('"split": "train"') == lines
    other = tiny_config()
    other.model.width = 0.1
    with pytest.raises(checkpoints.ConfigMismatchError, match='width'):
        train.train_and_evaluate(other, str(tmp_path))


def test_nan_stops_with_last_good_checkpoint(tmp_path, monkeypatch):
    real = input_pipeline.train_iterator

    def poisoned(config, *, start_step=0, **kw):
        for step, batch in enumerate(real(config, start_step=start_step, **kw), start_step + 1):
            if step == 5:  # Step 5's batch: loss NaN; checkpoint 3 is the last good one.
                # Batches are uint8 (no NaN): a float32 NaN image (normalize_batch takes it).
                batch = dict(batch, image=np.full(batch['image'].shape, np.nan, np.float32))
            yield batch
    monkeypatch.setattr(input_pipeline, 'train_iterator', poisoned)
    config = tiny_config(num_steps=9, log_every_steps=3)
    with pytest.raises(FloatingPointError, match='step 5'):
        train.train_and_evaluate(config, str(tmp_path))
    state, _ = saved_state(config, str(tmp_path))
    assert int(state.step) == 3
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_corrupt_latest_checkpoint_falls_back(tiny_run, tmp_path):
    config = tiny_config(num_steps=6, checkpoint_every_steps=3)
    clean, expected = tiny_run  # The uninterrupted run of `config`.
    shutil.copytree(clean, tmp_path / 'run')
    latest = tmp_path / 'run' / 'checkpoints' / '6' / 'state'
    for f in latest.rglob('*'):
        if f.is_file() and f.stat().st_size > 64:
            f.write_bytes(b'\0' * f.stat().st_size)  # Same size, garbage bytes.
    (tmp_path / 'run' / 'results.json').unlink()
    again = train.train_and_evaluate(config, str(tmp_path / 'run'))  # Resumes from step 3.
    assert again['test_loss'] == pytest.approx(expected['test_loss'], abs=1e-6)
    assert_trees_close(saved_state(config, str(tmp_path / 'run'))[0].params,
                       saved_state(config, str(clean))[0].params)


def test_a_finished_rerun_leaves_no_failed_record(tmp_path):
    """failed.json of an earlier attempt (say a divergence at a higher rate) does not stay
    beside the results.json of the run that then finished."""
    (tmp_path / 'failed.json').write_text('{"reason": "NonFiniteLossError: loss is nan"}\n')
    results = train.train_and_evaluate(tiny_config(num_steps=2), str(tmp_path))
    assert results['steps'] == 2 and (tmp_path / 'results.json').exists()
    assert not (tmp_path / 'failed.json').exists()


def test_one_seed_and_several_seeds_never_share_a_workdir(tmp_path):
    """A one-seed rerun of a 2-seed workdir once trained a fresh run beside seed0/ and seed1/
    (and the reverse was accepted too)."""
    for k in (0, 1):
        (tmp_path / 'many' / f'seed{k}').mkdir(parents=True)
        (tmp_path / 'many' / f'seed{k}' / 'config.json').write_text('{"num_seeds": 1}')
    with pytest.raises(workdirs.LayoutError, match='--config.num_seeds=2') as e:
        train.train_and_evaluate(tiny_config(), str(tmp_path / 'many'))
    assert '\n' not in str(e.value) and 'seed0, seed1' in str(e.value)
    (tmp_path / 'one').mkdir()
    (tmp_path / 'one' / 'config.json').write_text(
        '{"num_seeds": 1, "model": {}, "data": {}, "train": {}}')
    several = tiny_config()
    several.num_seeds = 2
    with pytest.raises(workdirs.LayoutError, match='holds a one-seed run'):
        train.train_and_evaluate(several, str(tmp_path / 'one'))
    assert sorted(p.name for p in (tmp_path / 'one').iterdir()) == ['config.json']


def test_a_finished_run_rerun_shorter_says_which_step_it_tested(tiny_run, tmp_path):
    """Rerun with fewer steps, a finished run tests its last weights (step 6) and says so: its
    results.json once said "steps": 3."""
    workdir = tmp_path / 'run'
    shutil.copytree(tiny_run[0], workdir)
    results = train.train_and_evaluate(tiny_config(num_steps=3), str(workdir))
    assert results['steps'] == 6
    assert results['test_top1'] == pytest.approx(tiny_run[1]['test_top1'])


def test_the_nan_advice_names_the_loss_of_the_checkpoint_it_points_at():
    class Recorder:
        history = [{'split': 'train', 'step': 2, 'loss': 2.3}, {'split': 'train', 'step': 4,
                                                                  'loss': 5.9e5}]
    losses = {'loss': np.array([np.nan]), 'top1': np.array([0.1])}
    with pytest.raises(train.NonFiniteLossError) as e:
        train.log_train(Recorder(), 5, losses, last_saved=4)
    assert 'The last checkpoint (step 4, training loss 5.9e+05) is finite' in str(e.value)
    assert 'new --workdir' in str(e.value)


def test_data_with_one_class_is_warned_about(caplog):
    import types  # pylint: disable=import-outside-toplevel
    config = tiny_config()
    info = types.SimpleNamespace(num_classes=1, num_examples={'train': 64})
    config.model.num_classes = 1
    with caplog.at_level('WARNING'):
        input_pipeline.check_data_fits(config, info)
    assert any('has 1 class' in r.getMessage() for r in caplog.records)



def test_a_reshaped_schedule_is_announced_on_resume(tmp_path, caplog):
    """A cosine schedule restarted by a longer run (or another peak rate) once went unsaid."""
    config = tiny_config(num_steps=4, checkpoint_every_steps=4, eval_every_steps=0)
    config.optim.update(schedule='warmup_cosine', warmup_steps=1)
    train.train_and_evaluate(config, str(tmp_path))
    longer = tiny_config(num_steps=8, checkpoint_every_steps=4, eval_every_steps=0)
    longer.optim.update(schedule='warmup_cosine', warmup_steps=1)
    with caplog.at_level('WARNING'):
        train.train_and_evaluate(longer, str(tmp_path))
    announced = [r.getMessage() for r in caplog.records if 'schedule changed' in r.getMessage()]
    assert len(announced) == 1 and 'step 4 trained at' in announced[0]
    caplog.clear()
    same = tiny_config(num_steps=8, checkpoint_every_steps=4, eval_every_steps=0)
    same.optim.update(schedule='warmup_cosine', warmup_steps=1)
    with caplog.at_level('WARNING'):  # Finished at 8 with this schedule: nothing to announce.
        train.train_and_evaluate(same, str(tmp_path))
    assert not any('schedule changed' in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize('field, value, change, warned', [
    # Once recorded as the value of the whole run, with a warning only.
    ('optim.learning_rate', 0.005, True, 'Learning rate'),
    # Once silent: keep-best and the plateau schedule read the new split.
    ('data.eval_split', 'test', True, 'config.data.eval_split'),
    # Once ignored without a word, and written into config.json as if it had been loaded.
    ('init_from', 'TINY_RUN', False, 'config.init_from='),
])
def test_a_resume_records_what_it_changed_from_its_step(tiny_run, tmp_path, caplog, field, value,
                                                        change, warned):
    shutil.copytree(tiny_run[0], tmp_path, dirs_exist_ok=True)  # A finished 6-step run.
    first = json.loads((tmp_path / 'config.json').read_text())
    config = tiny_config()
    section, _, name = field.rpartition('.')
    value = str(tiny_run[0]) if value == 'TINY_RUN' else value
    (config[section] if section else config)[name] = value
    for _ in range(2):  # A second resume with the same config changes nothing more.
        with caplog.at_level('WARNING'):
            train.train_and_evaluate(config, str(tmp_path))
        assert any(warned in r.getMessage() for r in caplog.records), caplog.text
        record = json.loads((tmp_path / 'config.json').read_text())
        if change:
            assert record.pop('changes') == [{'from_step': 7, 'field': field,
                                             'was': json.loads(json.dumps(
                                                 first[section][name])), 'now': value}]
            record[section][name] = first[section][name]
        assert record == first  # init_from: the run's own, not the ignored one.


@pytest.mark.slow  # Two short training runs on device-resident data.
def test_a_resume_that_would_move_the_data_stream_is_refused(tmp_path):
    """data.device_resident='auto' resolved at each start: a resume with a lower
    data.device_max_bytes once went on with tf.data batches, exit 0, and another loss."""
    config = device_config(num_steps=2, checkpoint_every_steps=2, eval_every_steps=0)
    config.data.device_resident = 'auto'
    train.train_and_evaluate(config, str(tmp_path))
    config.train.num_steps = 4
    config.data.device_max_bytes = 1000
    with pytest.raises(checkpoints.ConfigMismatchError,
                       match="'auto' resolves to tf.data batches here, the run so far trained on "
                             "device-resident data"):
        train.train_and_evaluate(config, str(tmp_path))
    config.data.device_max_bytes = 1 << 30  # Back on the device: it resumes.
    assert train.train_and_evaluate(config, str(tmp_path))['steps'] == 4
