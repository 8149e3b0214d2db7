"""Model parallelism (config.model_parallel=2, alexnet_jax/columns.py): the two columns on two
devices compute the one-device groups=2 net exactly, train like it and share its checkpoints."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import columns
from alexnet_jax.data import input_pipeline
from alexnet_jax import evaluation
from alexnet_jax import models
from alexnet_jax import optim
from alexnet_jax import train
from alexnet_jax import validation
from alexnet_jax import workdirs
from alexnet_jax.errors import UserError
from tests.helpers import (ROOT, TINY, assert_trees_close, device_config, launch, saved_state,
                           subprocess_env, tiny_config)

# Even layer sizes at this width (conv1 6 maps, fc6/fc7 256 units), so each column gets half.
WIDTH = 0.0625


def net(**fields):
    return models.AlexNet(num_classes=10, width=WIDTH, groups=2, **fields)


def check_equal(lrn_per_column: bool = False, devices=None) -> None:
    """Logits, loss and gradients of the model-parallel net on `devices` (default all; a data x
    model mesh) against the one-device groups=2 net's, same parameters; raises if they differ
    by >1e-5."""
    model = net(lrn_per_column=lrn_per_column)
    images = jax.random.normal(jax.random.key(1), (8, 67, 67, 3))
    labels = jnp.arange(8) % 10
    params = model.init(jax.random.key(0), images)['params']
    mesh = columns.mesh(devices)

    def loss(p, logits_fn):
        logits = logits_fn(p)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    one = jax.value_and_grad(loss, has_aux=True)(params, lambda p: model.apply({'params': p},
                                                                               images))
    split = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(
        params, lambda p: columns.forward(model, mesh, p, images))
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(split)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('lrn_per_column', [False, True])
def test_two_devices_equal_one_device_net(lrn_per_column):
    check_equal(lrn_per_column)  # conftest's two devices: one model pair.


@pytest.mark.slow  # A subprocess on 8 simulated devices: a mesh of 4 (2 model pairs), then of 8.
def test_more_devices_equal_one_device_net():
    code = ('import jax\nfrom tests.test_columns import check_equal\n'
            'assert jax.device_count() == 8\n'
            'check_equal(devices=jax.devices()[:4])\ncheck_equal()\n')
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT, timeout=600,
                   env=subprocess_env(8))


def _lrn(x, n=5, k=2.0, alpha=1e-4, beta=0.75):
    """The paper's LRN in numpy, across the last axis."""
    sq = np.pad(np.square(x), [(0, 0)] * (x.ndim - 1) + [(n // 2, n // 2)])
    window = sum(sq[..., i:i + x.shape[-1]] for i in range(n))
    return x / (k + alpha * window) ** beta


def test_lrn_per_column_normalises_each_half_alone():
    """Per column: each half's LRN alone; across: the whole; they differ only at the boundary."""
    images = jax.random.normal(jax.random.key(2), (2, 67, 67, 3)) * 50
    outs = {}
    for per_column in (False, True):
        model = net(lrn_per_column=per_column, lrn_alpha=1e-2)
        params = model.init(jax.random.key(0), images)['params']
        _, inter = model.apply({'params': params}, images, mutable=['intermediates'])
        conv1 = np.asarray(inter['intermediates']['conv1_out'][0], np.float64)
        outs[per_column] = np.asarray(inter['intermediates']['lrn1_out'][0])
    half = conv1.shape[-1] // 2
    np.testing.assert_allclose(outs[True], np.concatenate(
        [_lrn(conv1[..., :half], alpha=1e-2), _lrn(conv1[..., half:], alpha=1e-2)], -1),
        rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs[False], _lrn(conv1, alpha=1e-2), rtol=1e-5, atol=1e-6)
    differs = np.abs(outs[True] - outs[False]).max(axis=(0, 1, 2)) > 1e-6
    assert differs[half - 2:half + 2].all() and not differs[:half - 2].any()


def _config(mp: int, num_steps: int = 4, **model):
    c = tiny_config(num_steps=num_steps, eval_every_steps=2, checkpoint_every_steps=2,
                    log_every_steps=1)
    c.model.update(width=WIDTH, groups=2, dropout_rate=0.0, **model)
    c.model_parallel = mp
    return c


def _train_losses(workdir) -> list:
    return [r['loss'] for r in workdirs.read_metrics(workdir) if r['split'] == 'train']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """4 steps of the same config, data parallel and model parallel (dropout off: its masks
    are per device), checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp('columns')
    return {mp: (root / f'mp{mp}', train.train_and_evaluate(_config(mp), str(root / f'mp{mp}')))
            for mp in (1, 2)}


def test_short_run_matches_data_parallel_step_for_step(runs):
    (dp, dp_results), (mp, mp_results) = runs[1], runs[2]
    np.testing.assert_allclose(_train_losses(mp), _train_losses(dp), rtol=1e-5)
    assert len(_train_losses(mp)) == 4
    assert_trees_close(saved_state(_config(2), mp)[0].params,
                       saved_state(_config(1), dp)[0].params, atol=1e-5)
    assert mp_results['test_loss'] == pytest.approx(dp_results['test_loss'], rel=1e-5)


@pytest.mark.parametrize('first,then', [(2, 1), (1, 2)])
def test_checkpoint_resumes_across_the_switch(runs, tmp_path, first, then):
    """Step 2 of one run, resumed to step 4 with the other setting, ends where the
    uninterrupted data-parallel run does."""
    workdir = tmp_path / 'run'
    train.train_and_evaluate(_config(first, num_steps=2), str(workdir))
    train.train_and_evaluate(_config(then), str(workdir))
    assert_trees_close(saved_state(_config(then), workdir)[0].params,
                       saved_state(_config(1), runs[1][0])[0].params, atol=1e-5)


@pytest.mark.slow  # launch.py on one device.
def test_model_parallel_checkpoint_resumes_on_one_device(runs, tmp_path):
    workdir = tmp_path / 'run'
    train.train_and_evaluate(_config(2, num_steps=2), str(workdir))
    flags_ = [f for f in TINY if not f.startswith('--config.model.width')] + [
        f'--config.model.width={WIDTH}', '--config.model.groups=2',
        '--config.model.dropout_rate=0.0', '--config.train.num_steps=4',
        '--config.train.eval_every_steps=2', '--config.train.checkpoint_every_steps=2',
        '--config.train.log_every_steps=1', f'--workdir={workdir}']
    code, _, err = launch(*flags_, devices=1)
    assert code == 0, err[-3000:]
    assert_trees_close(saved_state(_config(1), workdir)[0].params,
                       saved_state(_config(1), runs[1][0])[0].params, atol=1e-5)


def test_evaluate_tool_reads_a_model_parallel_checkpoint(runs, tmp_path):
    mp, results = runs[2]
    out = evaluation.evaluate_checkpoint(mp, crops='center', output=tmp_path / 'eval.json')
    assert out['center']['top1'] == pytest.approx(results['test_top1'])
    assert out['center']['loss'] == pytest.approx(results['test_loss'], rel=1e-5)


@pytest.mark.parametrize('field,value', [
    ('model.groups', 1), ('model.architecture', 'torchvision'), ('model.batch_norm', True),
    ('model.num_classes', 7), ('seeds_mode', 'vmap'), ('model_parallel', 3),
    ('model.lrn_divisor', 'matched')])
def test_combinations_that_do_not_apply_are_refused(field, value):
    c = _config(2)
    c.num_seeds = 2
    c.seeds_mode = 'sequential'
    section, _, name = field.rpartition('.')
    (c[section] if section else c)[name] = value
    with pytest.raises(UserError, match=field.replace('.', r'\.')):
        validation.validate_config(c)


def test_device_resident_run_matches_data_parallel(tmp_path):
    """The step gathers the whole batch from the data on the devices, as pmap's slots do."""
    out = {}
    for mp in (1, 2):
        c = device_config(num_steps=3, eval_every_steps=0, checkpoint_every_steps=3)
        c.model.update(width=WIDTH, groups=2, dropout_rate=0.0)
        c.model_parallel = mp
        train.train_and_evaluate(c, str(tmp_path / f'mp{mp}'))
        out[mp] = saved_state(c, tmp_path / f'mp{mp}')[0].params
    assert_trees_close(out[2], out[1], atol=1e-5)


def test_plateau_lowers_the_rate_where_the_state_lives():
    """The paper's schedule writes the new rate into the state on the mesh, placed as before."""
    c = _config(2)
    state, _ = train.initial_state(c, input_pipeline.get_info(c), 10, 100)
    cols = columns.Columns(models.create_model(c.model))
    state = cols.replicate(train.stack_seeds([state]))
    plateau = optim.Plateau.from_config(c.optim)
    plateau.update(0.5)  # The best error so far; the next, worse, lowers the rate.
    lowered = optim.update_plateaus([plateau], [True], state, [{'top1': 0.1}], c.optim, 10,
                                    cols.replicate)
    before, after = optim.learning_rate(state.opt_state), optim.learning_rate(lowered.opt_state)
    assert after.sharding == before.sharding and after.shape == before.shape
    np.testing.assert_allclose(np.asarray(after), np.asarray(before) * c.optim.plateau_factor)
