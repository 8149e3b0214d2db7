"""Optimizers and schedules against independent numpy transcriptions of their formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import alexnet
from alexnet_jax import optim
from alexnet_jax import validation


def optim_config(**overrides):
    o = alexnet.get_config().optim
    o.update(overrides)
    return o


def params():
    return {'conv1': {'kernel': jnp.array([[0.5, -1.0]]), 'bias': jnp.array([1.0, 2.0])}}


def test_sgd_is_the_papers_update_rule():
    """v <- 0.9 v - 5e-4 eps w - eps g ; w <- w + v, on kernels; biases: no decay."""
    o = optim_config()
    tx = optim.create_optimizer(o, steps_per_epoch=10, num_steps=100)
    p = params()
    state = tx.init(p)
    w, b = np.array([[0.5, -1.0]]), np.array([1.0, 2.0])
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    rng = np.random.RandomState(0)
    for step, lr in enumerate([0.01, 0.01, 0.001, 0.001]):
        if step == 2:
            state = optim.set_learning_rate(state, np.float32(lr))  # A plateau drop mid-run.
        gw, gb = rng.randn(*w.shape), rng.randn(*b.shape)
        updates, state = tx.update({'conv1': {'kernel': jnp.array(gw), 'bias': jnp.array(gb)}},
                                   state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
        vw = 0.9 * vw - 5e-4 * lr * w - lr * gw
        vb = 0.9 * vb - lr * gb
        w, b = w + vw, b + vb
        np.testing.assert_allclose(p['conv1']['kernel'], w, rtol=1e-5)
        np.testing.assert_allclose(p['conv1']['bias'], b, rtol=1e-5)
        assert float(optim.learning_rate(state)) == pytest.approx(lr)


@pytest.mark.parametrize('pattern, decays_bias', [('kernel', False), ('kernel|bias', True),
                                                   ('', False)])
def test_weight_decay_mask(pattern, decays_bias):
    o = optim_config(weight_decay_mask=pattern, momentum=0.0, weight_decay=0.1)
    tx = optim.create_optimizer(o, 10, 100)
    p = params()
    zeros = jax.tree.map(jnp.zeros_like, p)
    updates, _ = tx.update(zeros, tx.init(p), p)
    assert bool(jnp.any(updates['conv1']['bias'] != 0)) == decays_bias
    assert bool(jnp.any(updates['conv1']['kernel'] != 0)) == bool(pattern)


@pytest.mark.parametrize('overrides, steps, expected', [
    (dict(schedule='constant'), [0, 50, 99], [0.01, 0.01, 0.01]),
    (dict(schedule='plateau'), [0, 99], [0.01, 0.01]),
    (dict(schedule='step', decay_every_steps=30), [0, 29, 30, 61], [0.01, 0.01, 0.001, 0.0001]),
    (dict(schedule='step', decay_every_steps=None, decay_every_epochs=3.0), [29, 30],
     [0.01, 0.001]),
    (dict(schedule='warmup_cosine', warmup_epochs=1.0), [0, 5, 10, 55, 100],
     [0.0, 0.005, 0.01, 0.005, 0.0]),
])
def test_schedules(overrides, steps, expected):
    o = optim_config(**overrides)
    schedule = optim.create_schedule(o, steps_per_epoch=10, num_steps=100)
    got = [schedule(s) if callable(schedule) else schedule for s in steps]
    np.testing.assert_allclose(np.array(got, np.float64), expected, atol=1e-7, rtol=1e-5)


def test_learning_rate_in_state_follows_schedule():
    tx = optim.create_optimizer(optim_config(schedule='step', decay_every_steps=2), 10, 100)
    p = params()
    state = tx.init(p)
    lrs = []
    for _ in range(4):  # After an update, the state holds the rate that update used.
        _, state = tx.update(jax.tree.map(jnp.ones_like, p), state, p)
        lrs.append(float(optim.learning_rate(state)))
    np.testing.assert_allclose(lrs, [0.01, 0.01, 0.001, 0.001], rtol=1e-5)


@pytest.mark.parametrize('errors, patience, expected_reductions', [
    ([0.5, 0.4, 0.3], 1, 0),             # Improving: no drop.
    ([0.5, 0.5], 1, 1),                  # No improvement once: drop (patience 1).
    ([0.5, 0.5, 0.4, 0.45], 2, 0),       # One bad eval, then better, then one bad.
    ([0.5, 0.6, 0.6], 2, 1),
    ([0.5] * 10, 1, 3),                  # At most max_reductions (the paper's three).
])
def test_plateau(errors, patience, expected_reductions):
    p = optim.Plateau.from_config(optim_config(plateau_patience=patience))
    for e in errors:
        p.update(e)
    assert p.reductions == expected_reductions
    assert p.scale == pytest.approx(0.1 ** expected_reductions)
    resumed = optim.Plateau.from_config(optim_config(plateau_patience=patience), p.state())
    assert resumed.state() == p.state()


@pytest.mark.parametrize('name', ['sgd', 'adam', 'adamw'])
def test_optimizers_step(name):
    tx = optim.create_optimizer(optim_config(optimizer=name, grad_clip_norm=1.0), 10, 100)
    p = params()
    state = tx.init(p)
    updates, state = tx.update(jax.tree.map(jnp.ones_like, p), state, p)
    assert all(bool(jnp.all(u < 0)) for u in jax.tree.leaves(updates))
    assert float(optim.learning_rate(state)) == pytest.approx(0.01)


@pytest.mark.parametrize('field, value, message, checked_by', [
    # Names: checked once, by the optimizer that reads them (optim.create_optimizer).
    ('optimizer', 'lbfgs', 'config.optim.optimizer', 'optim'),
    ('schedule', 'cos', 'config.optim.schedule', 'optim'),
    ('learning_rate', 0.0, 'config.optim.learning_rate', 'validation'),
    ('momentum', 1.0, 'config.optim.momentum', 'validation'),
    ('warmup_steps', 10, 'warmup_steps or warmup_epochs', 'validation'),
])
def test_bad_optim_config(field, value, message, checked_by):
    config = alexnet.get_config()
    config.optim[field] = value
    check = {'validation': validation.validate_config,
             'optim': lambda c: optim.create_optimizer(c.optim, 10, 100)}[checked_by]
    with pytest.raises(validation.ConfigError, match=message.replace('.', r'\.')):
        check(config)
