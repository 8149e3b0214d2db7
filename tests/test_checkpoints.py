"""Checkpoints with real orbax on disk: round trip, keep-K-plus-best, corruption fallback,
config mismatch, preemption signals."""

import glob
import importlib.util
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from alexnet_jax import checkpoints
from alexnet_jax import errors
from alexnet_jax import integrity
from alexnet_jax.checkpoints import (Checkpointer, ConfigMismatchError, CorruptCheckpointError,
                                     config_fingerprint)
from alexnet_jax.preemption import PreemptionGuard
from alexnet_jax import workdirs

REPO = pathlib.Path(__file__).resolve().parents[1]
FP = {'model': {'num_classes': 3, 'width': 1.0}, 'input_shape': [5, 5, 3]}


class Tiny(nn.Module):
    """Small, but its kernels (5 KB) are big enough that OCDBT stores them out of line in
    data files rather than inline in its b-tree, as for real models."""
    features: int = 3

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features)(nn.relu(nn.Dense(256)(x)))


def make_state(seed=0, features=3, tx=None):
    model = Tiny(features)
    params = model.init(jax.random.PRNGKey(seed), jnp.ones((1, 5)))['params']
    return train_state.TrainState.create(apply_fn=model.apply, params=params,
                                         tx=tx or optax.sgd(0.1, momentum=0.9))


def trained_state(seed=0, steps=2):
    """A state with non-zero momentum and step, so the opt_state round trip means something."""
    state = make_state(seed)
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (8, 5))
    for _ in range(steps):
        grads = jax.grad(lambda p: jnp.sum(state.apply_fn({'params': p}, x) ** 2))(state.params)
        state = state.apply_gradients(grads=grads)
    return jax.device_get(state)


def assert_states_equal(a, b):
    if isinstance(a, train_state.TrainState):   # apply_fn/tx are static, not saved
        a, b = (a.step, a.params, a.opt_state), (b.step, b.params, b.opt_state)
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def ckpt(workdir, **kw):
    kw.setdefault('config_fingerprint', FP)
    return Checkpointer(str(workdir), **kw)


def step_dir(workdir, step):
    return pathlib.Path(workdir) / 'checkpoints' / str(step)


def test_round_trip_exact(tmp_path):
    state = trained_state()
    meta = {'epoch': 1, 'data_position': 17, 'plateau': {'best': 0.5, 'bad_epochs': 2},
            'wall_time': np.float32(3.5)}  # numpy scalars are converted, not rejected
    with ckpt(tmp_path) as c:
        assert c.latest_step() is None and c.best_step() is None
        assert c.restore(make_state()) is None
        c.save(2, state, meta)
    with ckpt(tmp_path) as c:
        assert c.latest_step() == 2
        restored, restored_meta = c.restore(make_state(seed=7))
        info = checkpoints._read_info(c._mgr, 2)  # The one record of what the step fits.
    assert info['fingerprint'] == FP and info['topology'] == checkpoints.topology()
    assert isinstance(restored, train_state.TrainState)
    assert int(restored.step) == 2
    assert_states_equal(restored, state)
    assert restored_meta == {**meta, 'wall_time': 3.5}
    # The momentum buffer came back, not a fresh zero one.
    assert any(np.abs(np.asarray(t)).sum() > 0 for t in jax.tree.leaves(restored.opt_state))


def test_async_save_then_wait_is_restorable(tmp_path):
    state = trained_state()
    c = ckpt(tmp_path, async_save=True)
    c.save(5, state, {'epoch': 0})
    c.wait()
    other = ckpt(tmp_path)   # A second manager sees it on disk, independently of the first.
    restored, _ = other.restore(make_state())
    assert_states_equal(restored, state)
    other.close()
    c.close()


@pytest.mark.parametrize('make_key', [jax.random.PRNGKey, jax.random.key])
def test_round_trip_plain_pytree_with_rng_key(tmp_path, make_key):
    """Raw uint32 keys and new-style typed keys both come back as they went in."""
    state = {'rng': make_key(3), 'w': np.arange(6, dtype=np.float32).reshape(2, 3), 'step': 4}
    with ckpt(tmp_path, best_metric=None, async_save=False) as c:
        c.save(4, state, {})
        restored, _ = c.restore({'rng': make_key(0), 'w': np.zeros((2, 3), np.float32), 'step': 0})
    assert restored['step'] == 4
    np.testing.assert_array_equal(restored['w'], state['w'])
    assert restored['rng'].dtype == state['rng'].dtype
    np.testing.assert_array_equal(jax.random.key_data(restored['rng']), jax.random.key_data(state['rng']))


def test_saving_a_step_twice_is_a_noop(tmp_path):
    with ckpt(tmp_path) as c:
        c.save(3, trained_state(), {'n': 1})
        c.save(3, make_state(), {'n': 2})   # e.g. the final save right after a periodic one
        c.wait()
        assert c.all_steps() == [3]
        assert c.restore(make_state())[1] == {'n': 1}


@pytest.mark.parametrize('best_mode, metric, scores, expected', [
    # keep=2: the last two plus the best by val_top1 (step 2), saves without metrics too.
    ('max', 'val_top1', {1: 0.5, 2: 0.9, 3: 0.4, 4: None, 5: 0.2, 6: None}, ([2, 5, 6], 2)),
    ('min', 'val_loss', {1: 3.0, 2: 1.0, 3: 2.0, 4: 4.0, 5: 5.0}, ([2, 4, 5], 2)),
    # Best is among the last K: nothing extra kept.
    ('max', 'val_top1', {1: 0.1, 2: 0.2, 3: 0.3}, ([2, 3], 3)),
])
def test_keeps_last_k_plus_best(tmp_path, best_mode, metric, scores, expected):
    state = make_state()
    with ckpt(tmp_path, keep=2, best_metric=metric, best_mode=best_mode) as c:
        for step, score in scores.items():
            c.save(step, state, {}, metrics=None if score is None else {metric: score, 'other': 1})
        c.wait()
        assert c.all_steps() == expected[0]
        assert c.best_step() == expected[1]
    on_disk = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
    assert on_disk == expected[0]
    with ckpt(tmp_path, keep=2, best_metric=metric, best_mode=best_mode) as c:  # read back from disk
        assert c.best_step() == expected[1]


def _garble(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, min(len(data), len(data) // 2 + 16)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _garble_all(d):
    for p in d.iterdir():
        _garble(p)


CORRUPTIONS = {
    # orbax itself restores a flipped data byte without complaint: our crc32 catches it.
    'garbled array data': lambda d: _garble_all(d / 'state' / 'ocdbt.process_0' / 'd'),
    'deleted array data': lambda d: [p.unlink() for p in (d / 'state' / 'ocdbt.process_0' / 'd').iterdir()],
    'truncated meta json': lambda d: (d / 'meta' / 'metadata').write_text('{"epoch": '),
    'deleted state metadata': lambda d: (d / 'state' / '_METADATA').unlink(),
    'empty step dir': lambda d: [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in d.iterdir()],
}


# orbax leaves un-awaited read coroutines behind when a read fails; harmless here.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('corruption', list(CORRUPTIONS))
def test_corrupt_newest_falls_back_to_previous(tmp_path, caplog, corruption):
    old, new = trained_state(steps=1), trained_state(steps=2)
    with ckpt(tmp_path) as c:
        c.save(10, old, {'step': 10})
        c.save(20, new, {'step': 20})
    CORRUPTIONS[corruption](step_dir(tmp_path, 20))
    with caplog.at_level(logging.WARNING), ckpt(tmp_path) as c:
        restored, meta = c.restore(make_state())
        assert meta == {'step': 10}
        assert_states_equal(restored, old)
        warnings = ' '.join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
        assert str(step_dir(tmp_path, 20)) in warnings and 'falling back to step 10' in warnings
        # The corrupt step is moved aside (kept for inspection), so the resumed run can save
        # step 20 again.
        assert c.all_steps() == [10]
        assert len(list((tmp_path / 'checkpoints_corrupt').iterdir())) == 1
        c.save(20, new, {'step': 20})
    with ckpt(tmp_path) as c:
        assert c.restore(make_state())[1] == {'step': 20}


def test_every_checkpoint_corrupt_is_an_error(tmp_path):
    with ckpt(tmp_path) as c:
        c.save(1, trained_state(), {})
    CORRUPTIONS['garbled array data'](step_dir(tmp_path, 1))
    with ckpt(tmp_path) as c, pytest.raises(CorruptCheckpointError, match=r'step 1: .*checksum(.|\n)*new --workdir'):
        c.restore(make_state())


KILLED_SAVE = textwrap.dedent('''
    import os, signal, sys
    import numpy as np
    from alexnet_jax.checkpoints import Checkpointer
    c = Checkpointer(sys.argv[1], config_fingerprint={fp!r}, async_save=True)
    c.save(1, {{'w': np.full((4,), 1.0, np.float32)}}, {{'step': 1}})
    c.wait()
    c.save(2, {{'w': np.random.rand(16_000_000).astype(np.float32)}}, {{'step': 2}})
    os.kill(os.getpid(), signal.SIGKILL)   # Killed while the async save of step 2 runs.
''')


@pytest.mark.slow  # kill -9 of a subprocess mid-save.
def test_killed_save_leaves_tmp_dir_that_is_ignored(tmp_path, caplog):
    proc = subprocess.run([sys.executable, '-c', KILLED_SAVE.format(fp=FP), str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = glob.glob(str(tmp_path / 'checkpoints' / '2.orbax-checkpoint-tmp*'))
    assert leftovers, 'orbax writes into a tmp dir and renames it when complete'
    assert not step_dir(tmp_path, 2).exists()
    with caplog.at_level(logging.WARNING), ckpt(tmp_path) as c:
        restored, meta = c.restore({'w': np.zeros((4,), np.float32)})
        assert meta == {'step': 1}
        np.testing.assert_array_equal(restored['w'], np.ones(4, np.float32))
        assert any('2.orbax-checkpoint-tmp' in r.getMessage() for r in caplog.records)
        c.save(2, {'w': np.zeros((4,), np.float32)}, {'step': 2})   # The same step saves fine.
    assert not glob.glob(str(tmp_path / 'checkpoints' / '*.orbax-checkpoint-tmp*'))


def test_different_model_config_is_rejected(tmp_path):
    with ckpt(tmp_path) as c:
        c.save(1, make_state(), {})
    other = {'model': {'num_classes': 3, 'width': 0.5}, 'input_shape': [5, 5, 3]}
    with ckpt(tmp_path, config_fingerprint=other) as c:
        with pytest.raises(ConfigMismatchError, match=r"model\.width: workdir has 1\.0, config has 0\.5"
                           r"(.|\n)*new --workdir"):
            c.restore(make_state())
        with pytest.raises(ConfigMismatchError):   # Nor may it write into that workdir.
            c.save(2, make_state(), {})


@pytest.mark.parametrize('target, expected', [
    (lambda: make_state(features=7), r'params/Dense_0/kernel: shape \(256, 3\) in the checkpoint, \(256, 7\)'),
    (lambda: make_state(tx=optax.adam(1e-3)), r'opt_state/.*(missing|not in the model)'),
])
def test_different_shapes_are_rejected(tmp_path, target, expected):
    """Same fingerprint, different state (e.g. a code change): named, not a silent mismatch."""
    with ckpt(tmp_path) as c:
        c.save(1, make_state(), {})
    with ckpt(tmp_path) as c, pytest.raises(ConfigMismatchError, match=expected):
        c.restore(target())


def _load_config(arg):
    spec = importlib.util.spec_from_file_location('alexnet_config', REPO / 'configs' / 'alexnet.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_config_fingerprint_covers_model_and_input():
    paper, digits = config_fingerprint(_load_config(None)), config_fingerprint(_load_config('digits'))
    assert paper['input_shape'] == [227, 227, 3] and digits['input_shape'] == [67, 67, 3]
    assert paper['model']['num_classes'] == 1000 and digits['model']['width'] == 0.25
    assert config_fingerprint(_load_config('digits')) == digits   # deterministic, JSON-ready


def test_multihost_local_workdir_warns(monkeypatch, caplog):
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    with caplog.at_level(logging.WARNING):
        checkpoints._warn_if_local_multihost('/tmp/run')
        checkpoints._warn_if_local_multihost('gs://bucket/run')
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and 'every host must see' in messages[0]


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_preemption_guard_sets_flag_and_restores_handlers(sig):
    before = {s: signal.getsignal(s) for s in PreemptionGuard.SIGNALS}
    with PreemptionGuard() as guard:
        assert guard.requested is False
        os.kill(os.getpid(), sig)
        assert guard.requested is True and guard.signal_name == signal.Signals(sig).name
        os.kill(os.getpid(), signal.SIGTERM)   # Repeated SIGTERM: still just pending.
        assert guard.any_requested() is True
    assert {s: signal.getsignal(s) for s in PreemptionGuard.SIGNALS} == before


def test_second_sigint_aborts():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGINT)
            assert guard.requested
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) == before


def test_first_async_save_that_fails_raises_in_save(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # A relative directory: orbax's async write refuses it.
    with Checkpointer('rel', config_fingerprint=FP, async_save=True) as c:
        with pytest.raises(ValueError, match='absolute'):
            c.save(1, {'w': np.ones(4, np.float32)}, {})


@pytest.mark.parametrize('setup, message', [
    ('file', 'is not a directory'),
    ('file_parent', 'is not a directory'),
    ('held', 'in use by another run'),
])
def test_workdir_lock_refuses_files_and_a_second_run(tmp_path, setup, message):
    workdir = tmp_path / 'run'
    held = None
    if setup == 'file':
        workdir.write_text('x')
    elif setup == 'file_parent':
        (tmp_path / 'f').write_text('x')
        workdir = tmp_path / 'f' / 'run'
    else:
        held = workdirs.lock(str(workdir))
    try:
        with pytest.raises(workdirs.WorkdirError, match=message):
            workdirs.lock(str(workdir))
    finally:
        if held is not None:
            held.release()
    if held is not None:  # Released: the next run takes it.
        workdirs.lock(str(workdir)).release()


LOCK_AND_SLEEP = textwrap.dedent('''
    import sys, time
    from alexnet_jax import workdirs
    lock = workdirs.lock(sys.argv[1])
    print('locked', flush=True)
    time.sleep(600)
''')


@pytest.mark.slow
def test_a_killed_run_does_not_leave_its_workdir_locked(tmp_path):
    proc = subprocess.Popen([sys.executable, '-c', LOCK_AND_SLEEP, str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'locked'
        with pytest.raises(workdirs.WorkdirError, match='in use'):
            workdirs.lock(str(tmp_path))
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs.
        proc.wait()
    workdirs.lock(str(tmp_path)).release()
    assert list(tmp_path.iterdir()) == []  # The lock wrote nothing into the workdir.


@pytest.mark.parametrize('field, value, allowed', [
    ('train.batch_size', 16, False), ('seed', 1, False), ('data.train_split', 'test', False),
    ('train.num_steps', 99, True), ('optim.learning_rate', 0.5, True),
    ('train.checkpoint_every_steps', 7, True),
    # Once accepted silently, with config.json rewritten to the new values (issue 30):
    ('optim.momentum', 0.0, False), ('optim.nesterov', True, False),
    ('data.mean_rgb', (0.0, 0.0, 0.0), False), ('data.random_flip', True, False),
    ('data.device_resident', 'never', False),
    # Once refused with the optimizer state's tree paths (opt_state/hyperparams_states/...).
    ('optim.schedule', 'constant', False), ('optim.grad_clip_norm', 1.0, False),
])
def test_resume_rule_names_the_changed_field(field, value, allowed):
    saved = {'fingerprint': config_fingerprint(_load_config('digits'))}
    config = _load_config('digits')
    section, _, name = field.rpartition('.')
    (config[section] if section else config)[name] = value
    if allowed:
        checkpoints.check_fits(saved, config_fingerprint(config), '/w')
    else:
        shown = list(value) if isinstance(value, tuple) else value  # As JSON records it.
        with pytest.raises(ConfigMismatchError, match=re.escape(f'config.{field}={shown!r}')):
            checkpoints.check_fits(saved, config_fingerprint(config), '/w')


@pytest.mark.parametrize('was, line', [
    (None, None), ({'processes': 1, 'devices': 2}, None),
    ({'processes': 1, 'devices': 4}, 'the same batches; dropout masks'),
    ({'processes': 2, 'devices': 2}, 'the batches differ too'),
])
def test_a_resume_on_other_devices_is_logged_in_one_line(caplog, monkeypatch, was, line):
    monkeypatch.setattr(checkpoints, '_TOPOLOGY_LOGGED', set())  # As in a fresh process.
    config = _load_config('digits')
    info = {'fingerprint': config_fingerprint(config), **({'topology': was} if was else {})}
    assert checkpoints.topology() == {'processes': 1, 'devices': 2}  # conftest's 2 devices.
    with caplog.at_level('WARNING'):
        checkpoints.check_fits(info, config_fingerprint(config), '/w')
    logged = [r.getMessage() for r in caplog.records if 'Resuming' in r.getMessage()]
    if line is None:
        assert not logged
    else:
        assert len(logged) == 1 and line in logged[0] and '/ 2 device(s), trained on' in logged[0]


def test_a_checkpoint_from_before_the_one_record_keeps_its_resume_rule(tmp_path, caplog):
    """Steps saved before checkpoint_info held the stream fields kept them (and the topology)
    in meta: a resume still refuses a changed stream and logs another device count."""
    config = _load_config('digits')
    fingerprint = config_fingerprint(config)
    meta = {'fixed': fingerprint.pop('stream'), 'topology': {'processes': 1, 'devices': 4}}
    with ckpt(tmp_path, config_fingerprint=fingerprint) as c:
        c.save(1, make_state(), meta)
    info_file = step_dir(tmp_path, 1) / 'checkpoint_info' / 'metadata'
    old = json.loads(info_file.read_text())
    del old['topology']  # The record as it was: no stream fields, no topology.
    info_file.write_text(json.dumps(old))
    config.train.batch_size = 16
    with ckpt(tmp_path, config_fingerprint=config_fingerprint(config)) as c:
        with pytest.raises(ConfigMismatchError, match=r'config\.train\.batch_size=16'):
            c.restore(make_state())
    config.train.batch_size = meta['fixed']['train.batch_size']
    with caplog.at_level('WARNING'), ckpt(tmp_path, config_fingerprint=config_fingerprint(
            config)) as c:
        assert c.restore(make_state()) is not None
    assert any('trained on 1 / 4' in r.getMessage() for r in caplog.records)


def test_leaf_paths_keep_their_format():
    """checkpoint_info names leaves as existing workdirs store them: renaming them would make
    every old checkpoint fail its shape check."""
    class Node:  # A pytree node registered without keys: its children are numbered.
        def __init__(self, a, b):
            self.a, self.b = a, b
    jax.tree_util.register_pytree_node(Node, lambda n: ((n.a, n.b), None), lambda _, c: Node(*c))
    state = make_state(tx=optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, 0.9)))
    tree = {'ts': state, 'key': jax.random.key(1), 'l': [np.zeros(1), (np.zeros(2),)],
            'n': Node(np.zeros(3), 4)}
    described = integrity.describe(jax.device_get(tree), checksums=True)
    layers = ['Dense_0/bias', 'Dense_0/kernel', 'Dense_1/bias', 'Dense_1/kernel']
    assert sorted(described) == sorted(
        ['key', 'l/0', 'l/1/0', 'n/0', 'n/1', 'ts/step']
        + [f'ts/params/{p}' for p in layers] + [f'ts/opt_state/1/0/trace/{p}' for p in layers])
    assert described['key'] == {'shape': [2], 'dtype': 'uint32', 'crc32': zlib.crc32(
        np.asarray(jax.random.key_data(jax.random.key(1))).tobytes())}
    assert described['ts/params/Dense_0/kernel']['shape'] == [256, 3]  # Created first.


def _workdir_without_checkpoint(path):
    path.mkdir()
    (path / 'config.json').write_text('{"model": {"num_classes": 3}, "data": {}, "train": {}}')


def _garbled_params(path):
    _workdir_without_checkpoint(path)
    with ckpt(path, best_metric=None, async_save=False) as c:
        # Params only (as a conversion saves them): every garbled byte is in what is read.
        # With a whole TrainState the flipped bytes may land in optimizer state, whose place
        # in orbax's data files varies from save to save.
        c.save(4, {'params': trained_state().params}, {})
    CORRUPTIONS['garbled array data'](step_dir(path, 4))


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('setup, error, message', [
    (lambda p: None, workdirs.WorkdirError, 'does not exist'),
    (lambda p: p.mkdir(), workdirs.WorkdirError, 'has no config.json'),
    (_workdir_without_checkpoint, workdirs.WorkdirError, 'has no checkpoint in'),
    (_garbled_params, CorruptCheckpointError, r'step 4 .* is corrupt \(checksum mismatch'),
])
def test_load_variables_names_the_directory(tmp_path, setup, error, message):
    """Tools get one user error naming DIR, never a half-read net; DIR is left as it was."""
    setup(tmp_path / 'w')
    before = sorted(str(p) for p in tmp_path.rglob('*'))
    with pytest.raises(error, match=message) as e:
        checkpoints.load_variables(tmp_path / 'w')
    assert str(tmp_path / 'w') in str(e.value) and isinstance(e.value, errors.UserError)
    assert sorted(str(p) for p in tmp_path.rglob('*')) == before


def test_load_variables_reads_params_of_a_train_state(tmp_path):
    """Only params (no opt_state) of a training workdir's given step, as saved."""
    _workdir_without_checkpoint(tmp_path / 'w')
    states = {1: trained_state(steps=1), 2: trained_state(steps=2)}
    with ckpt(tmp_path / 'w', best_metric=None, async_save=False) as c:
        for step, state in states.items():
            c.save(step, state, {})
    for step in (None, 1):
        config, variables = checkpoints.load_variables(tmp_path / 'w', step)
        assert config.model.num_classes == 3 and set(variables) == {'params'}
        assert_states_equal(variables['params'], jax.device_get(states[step or 2].params))


def test_several_causes_and_the_fix_read_as_one_line():
    """A CLI prints a user error on one line: the causes once ran into the fix there."""
    saved = {'fingerprint': config_fingerprint(_load_config('digits'))}
    config = _load_config('digits')
    config.optim.momentum, config.seed = 0.5, 3
    with pytest.raises(ConfigMismatchError) as e:
        checkpoints.check_fits(saved, config_fingerprint(config), '/w')
    message = str(e.value)
    assert '\n' not in message
    assert message.startswith('/w does not fit this config: config.optim.momentum=0.5 (it was')
    assert '; config.seed=3 (it was trained with 0)' in message
    assert message.endswith('depend on it. Set those values back to resume, or use a new '
                            '--workdir for this config.')


def test_the_topology_line_is_logged_once_for_all_seeds(caplog, monkeypatch):
    monkeypatch.setattr(checkpoints, '_TOPOLOGY_LOGGED', set())
    config = _load_config('digits')
    info = {'fingerprint': config_fingerprint(config), 'topology': {'processes': 1, 'devices': 1}}
    with caplog.at_level('WARNING'):
        for seed in range(3):
            checkpoints.check_fits(info, config_fingerprint(config), f'/w/seed{seed}')
    assert sum('Resuming' in r.getMessage() for r in caplog.records) == 1


def test_an_unreachable_url_workdir_is_one_line(monkeypatch):
    """What etils' GCS backend raises without a network (no request is made here)."""
    from etils import epath  # pylint: disable=import-outside-toplevel

    def unreachable(self, *args, **kwargs):
        raise OSError("Error executing an HTTP request: libcurl code 6 meaning 'Could not resolve "
                      "hostname'\n\t when reading metadata of " + str(self))
    monkeypatch.setattr(epath.Path, 'mkdir', unreachable)
    with pytest.raises(workdirs.WorkdirError) as e:
        workdirs.lock('gs://bucket/run')
    message = str(e.value)
    assert '\n' not in message and message.startswith('--workdir=gs://bucket/run cannot be reached')
    assert "Could not resolve hostname'" in message and 'use a local path' in message
