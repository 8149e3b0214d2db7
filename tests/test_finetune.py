"""Fine-tuning (config.init_from, config.freeze) and config.eval_only, on tiny fake-data runs:
a 10-class source run, fine-tuned into 5 classes with conv1-conv5 frozen."""

import logging
import pathlib

import jax

import numpy as np
import pytest

import launch
from configs import alexnet
from tests import helpers
from alexnet_jax import checkpoints
from alexnet_jax import finetune
from alexnet_jax.data import input_pipeline
from alexnet_jax import optim
from alexnet_jax import train
from alexnet_jax import validation
from alexnet_jax import workdirs

CONVS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')


def tiny_config(num_classes=10, **top_level):
    """The shared tiny run (tests/helpers.py), 2 steps, `num_classes`, top-level fields set."""
    c = helpers.tiny_config(num_steps=2, log_every_steps=2, eval_every_steps=0,
                            checkpoint_every_steps=0, async_checkpoints=False)
    c.model.num_classes = num_classes
    c.data.update(fake_num_classes=num_classes, fake_train_examples=32, fake_eval_examples=11)
    c.update(top_level)
    return c


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """A trained 10-class workdir: (directory, its results, its variables)."""
    workdir = tmp_path_factory.mktemp('source')
    results = train.train_and_evaluate(tiny_config(), str(workdir))
    return str(workdir), results, checkpoints.load_variables(workdir)[1]


def finetune_config(src, **top_level):
    config = tiny_config(num_classes=5, init_from=src, **top_level)
    config.model.width = 0.25  # Replaced by the source's (its config.json defines the net).
    config.model.dropout_rate = 0.0
    return config


def fresh_state(config):
    config = finetune.resolve_config(config)
    info = input_pipeline.get_info(config)
    return config, train.initial_state(config, info, 4, config.train.num_steps)[0]


def test_init_from_loads_matching_layers_and_reinitialises_the_head(source, caplog):
    src, _, want = source
    with caplog.at_level(logging.INFO, logger='absl'):
        config, fresh = fresh_state(finetune_config(src))
        state = finetune.load_into(fresh, src)
    assert config.model.width == 0.05 and config.model.num_classes == 5
    assert config.model.dropout_rate == 0.0  # The run's own choice survives.
    for layer in CONVS + ('fc6', 'fc7'):
        jax.tree.map(np.testing.assert_array_equal, state.params[layer], want['params'][layer])
    assert state.params['fc8']['kernel'].shape == (want['params']['fc8']['kernel'].shape[0], 5)
    jax.tree.map(np.testing.assert_array_equal, state.params['fc8'], fresh.params['fc8'])
    assert 're-initialising fc8' in caplog.text and 'width: 0.25 -> 0.05' in caplog.text


def test_frozen_layers_keep_no_optimizer_state():
    config = tiny_config(freeze=CONVS)
    config.optim.grad_clip_norm = 1.0  # The clip sits inside the freeze, like the decay.
    _, state = fresh_state(config)
    paths = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
    momentum = [p for p in paths if 'trace' in p]
    assert momentum and not [p for p in momentum if 'conv' in p]
    assert sorted({p.split("trace['")[1].split("'")[0] for p in momentum}) == ['fc6', 'fc7', 'fc8']
    assert float(optim.learning_rate(state.opt_state)) == pytest.approx(0.01)


def test_finetune_run_keeps_frozen_layers_bit_identical(source, tmp_path, monkeypatch):
    src, _, before = source
    config = finetune_config(src, freeze=('conv1,conv2', 'conv3', 'conv4', 'conv5'))
    assert config.optim.weight_decay > 0  # Decay would move the frozen kernels too.
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results['steps'] == 2
    _, after = checkpoints.load_variables(tmp_path)  # The run's own checkpoint and config.json.
    for layer in CONVS:
        jax.tree.map(np.testing.assert_array_equal, after['params'][layer],
                     before['params'][layer])
    for layer in ('fc6', 'fc7'):
        assert not np.array_equal(after['params'][layer]['kernel'],
                                  before['params'][layer]['kernel']), layer
    assert after['params']['fc8']['kernel'].shape[-1] == 5

    # A resumed (here: finished) run restores its own checkpoint and never reloads init_from.
    def no_reload(*_):
        raise AssertionError('init_from loaded into a resumed run')
    monkeypatch.setattr(finetune, 'load_into', no_reload)
    again = train.train_and_evaluate(config, str(tmp_path))
    assert again['test_top1'] == results['test_top1']


@pytest.mark.parametrize('freeze, ok', [(('conv1', 'fc8'), True), (('conv1,conv2',), True),
                                        (('conv9',), False), (('conv1', 'fc9'), False)])
def test_freeze_names_are_checked(freeze, ok):
    # Once, against the model's real params, when the run builds its optimizer state.
    config = tiny_config(freeze=freeze)
    validation.validate_config(config)
    info = input_pipeline.get_info(config)
    if ok:
        train.initial_state(config, info, 4, 2)
        return
    with pytest.raises(validation.ConfigError, match=r"config\.freeze: .*not a layer.*'conv1'"):
        train.initial_state(config, info, 4, 2)


def _tree(conv_shape=(3, 3, 3, 8), head_classes=10):
    return {'conv1': {'kernel': np.ones(conv_shape, np.float32), 'bias': np.ones(8, np.float32)},
            'fc8': {'kernel': np.ones((8, head_classes), np.float32),
                    'bias': np.ones(head_classes, np.float32)}}


def test_only_the_head_may_differ():
    target = jax.tree.map(np.zeros_like, _tree(head_classes=5))
    merged, loaded, reinit = finetune.merge(target, _tree(), head='fc8')
    assert loaded == ['conv1'] and reinit == ['fc8']
    assert merged['conv1']['kernel'].sum() == 3 * 3 * 3 * 8 and merged['fc8']['kernel'].sum() == 0
    with pytest.raises(validation.ConfigError,
                       match=r"layer 'conv1': conv1/kernel \(3, 3, 3, 8\) in DIR vs \(3, 3, 1, 8\)"):
        finetune.merge(_tree(conv_shape=(3, 3, 1, 8)), _tree(), head='fc8')
    with pytest.raises(validation.ConfigError, match=r"\['bn_conv1'\] only here"):
        finetune.merge(dict(_tree(), bn_conv1={'scale': np.ones(8)}), _tree(), head='fc8')


@pytest.mark.parametrize('make, said', [
    (None, 'does not exist'),  # Once "has no config.json", as if it were there.
    (pathlib.Path.mkdir, 'has no config.json')])
def test_bad_init_from_is_clear(tmp_path, make, said):
    if make:
        make(tmp_path / 'nowhere')
    with pytest.raises(validation.ConfigError, match=f'config.init_from: .*nowhere {said}'):
        finetune.resolve_config(tiny_config(init_from=str(tmp_path / 'nowhere')))


def test_eval_only_evaluates_the_workdir(source):
    src, trained, _ = source
    results = launch.run(tiny_config(eval_only=True), src)  # The entry point routes eval_only.
    assert results['split'] == 'validation' and results['num_examples'] == 11
    assert results['center']['top1'] == pytest.approx(trained['test_top1'], abs=1e-9)
    assert results['center']['loss'] == pytest.approx(trained['test_loss'], rel=1e-5)
    with pytest.raises(validation.ConfigError, match='eval_only'):
        launch.run(tiny_config(eval_only=True), src + '-empty')


def test_eval_only_of_several_seeds_evaluates_each_seed_dir(tmp_path):
    config = tiny_config(num_seeds=2, seeds_mode='sequential')
    trained = launch.run(config, str(tmp_path))
    config.eval_only = True
    results = launch.run(config, str(tmp_path))
    assert sorted(results) == [0, 1]
    for seed, r in results.items():
        assert r['center']['top1'] == pytest.approx(trained[seed]['test_top1'], abs=1e-9)
        assert (tmp_path / f'seed{seed}' / 'eval' / 'results.json').is_file()
    with pytest.raises(workdirs.WorkdirError, match=r'holds the seeds of a run \(seed0, '
                       r'seed1\); pass one of them, e.g. .*/seed0'):
        checkpoints.load_variables(str(tmp_path))


@pytest.mark.parametrize('name', sorted(optim.OPTIMIZERS))
def test_every_optimizer_leaves_frozen_layers_alone(name):
    o = alexnet.get_config().optim
    o.update(optimizer=name, weight_decay=0.1, grad_clip_norm=1.0)
    params = _tree()
    tx = optim.create_optimizer(o, 10, 100, freeze=('conv1',))
    state = tx.init(params)
    grads = jax.tree.map(np.ones_like, params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        assert not any(np.any(u) for u in jax.tree.leaves(updates['conv1']))
        assert all(np.any(u) for u in jax.tree.leaves(updates['fc8']))
    shapes = {np.shape(x) for x in jax.tree.leaves(state)}
    assert (3, 3, 3, 8) not in shapes and (8, 10) in shapes  # fc8's momentum/moments only.
