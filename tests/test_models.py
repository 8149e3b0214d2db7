"""AlexNet module: shapes, counts, LRN, groups, activations, dropout, init, dtypes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import models
from alexnet_jax import validation
from configs import alexnet
from tests.helpers import expected_params

def abstract_variables(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))


def init(model, shape, seed=0):
    return model.init(jax.random.key(seed), jnp.zeros(shape))


def intermediates(model, variables, x, **kw):
    _, state = model.apply(variables, x, mutable=['intermediates'], **kw)
    return {k[:-len('_out')]: v[0] for k, v in state['intermediates'].items()
            if k.endswith('_out')}


def test_layer_shapes_at_227():
    model = models.AlexNet()
    variables = abstract_variables(model, (1, 227, 227, 3))
    shapes = jax.eval_shape(lambda v: intermediates(model, v, jnp.zeros((2, 227, 227, 3))),
                            variables)
    assert shapes['conv1'].shape == (2, 55, 55, 96)
    assert shapes['pool1'].shape == (2, 27, 27, 96)
    assert shapes['conv2'].shape == (2, 27, 27, 256)
    assert shapes['pool2'].shape == (2, 13, 13, 256)
    assert shapes['conv5'].shape == (2, 13, 13, 256)
    assert shapes['pool5'].shape == (2, 6, 6, 256)
    assert shapes['fc8'].shape == (2, 1000)


@pytest.mark.parametrize('groups', [1, 2])
def test_parameter_count_matches_independent_formula(groups):
    variables = abstract_variables(models.AlexNet(groups=groups), (1, 227, 227, 3))
    count = sum(x.size for x in jax.tree.leaves(variables['params']))
    assert count == expected_params(groups)


@pytest.mark.parametrize('width,groups', [(0.5, 1), (0.25, 2), (1.5, 2)])
def test_width_scales_every_hidden_layer(width, groups):
    variables = abstract_variables(models.AlexNet(width=width, groups=groups, num_classes=7),
                                   (1, 99, 99, 1))
    params = variables['params']
    for name, c_out in [('conv1', 96), ('conv3', 384), ('conv5', 256), ('fc6', 4096)]:
        got = params[name]['kernel'].shape[-1]
        assert abs(got - c_out * width) <= groups and got % groups == 0, (name, got)
    assert params['fc8']['kernel'].shape[-1] == 7


def lrn_numpy(a, k, n, alpha, beta, convention):
    """Direct transcription of the paper's formula over the last axis."""
    scale = alpha if convention == 'paper' else alpha / n
    N = a.shape[-1]
    out = np.empty_like(a)
    for i in range(N):
        lo, hi = max(0, i - n // 2), min(N - 1, i + n // 2)
        s = np.sum(a[..., lo:hi + 1] ** 2, axis=-1)
        out[..., i] = a[..., i] / (k + scale * s) ** beta
    return out


@pytest.mark.parametrize('convention', ['paper', 'caffe'])
@pytest.mark.parametrize('n,channels', [(5, 7), (3, 4), (5, 2)])
@pytest.mark.parametrize('beta', [0.75, 0.5, 0.6])  # 0.75/0.5 take the rsqrt path.
def test_lrn_matches_numpy_formula(convention, n, channels, beta):
    rng = np.random.default_rng(0)
    # Large activations so that the alpha term matters (edge channels included).
    a = rng.normal(scale=30.0, size=(2, 3, 3, channels)).astype(np.float64)
    k, alpha = 2.0, 1e-3
    want = lrn_numpy(a, k, n, alpha, beta, convention)
    got = models.local_response_norm(jnp.asarray(a, jnp.float32), k, n, alpha, beta, convention)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert not np.allclose(want, a / k ** beta)  # The normalisation term is not negligible.


@pytest.mark.parametrize('beta', [0.75, 0.6])
def test_lrn_gradient_matches_power_formula(beta):
    """The rsqrt form's gradient equals that of the textbook a / (k + alpha sum a^2) ** beta."""
    a = jnp.asarray(np.random.default_rng(2).normal(scale=30.0, size=(2, 3, 3, 6)), jnp.float32)

    def textbook(x):
        sums = sum(jnp.pad(x ** 2, ((0, 0),) * 3 + ((2, 2),))[..., i:i + 6] for i in range(5))
        return x / (2.0 + 1e-3 * sums) ** beta
    w = jnp.asarray(np.random.default_rng(3).normal(size=a.shape), jnp.float32)
    grad = lambda f: jax.grad(lambda x: jnp.sum(w * f(x)))(a)  # noqa: E731
    got = grad(lambda x: models.local_response_norm(x, 2.0, 5, 1e-3, beta))
    np.testing.assert_allclose(got, grad(textbook), rtol=1e-4, atol=1e-6)


def window_matrix(channels, n):
    """W[i, j] = 1 where channel j is in channel i's window: the window sum is a @ W.T."""
    i = np.arange(channels)
    return (np.abs(i[:, None] - i[None, :]) <= n // 2).astype(np.float64)


@pytest.mark.parametrize('shape,n', [((2, 3, 3, 7), 5), ((4, 2), 3), ((1, 2, 2, 3), 5),
                                     ((2, 5, 1), 1)])
def test_window_sum_and_its_derivatives_match_the_window_matrix(shape, n):
    """Forwards, forward-mode and reverse-mode each equal multiplying by the window matrix."""
    rng = np.random.default_rng(4)
    a, t, g = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
    w = window_matrix(shape[-1], n)
    out, tangent = jax.jvp(lambda x: models.window_sum(x, n), (jnp.asarray(a),), (jnp.asarray(t),))
    np.testing.assert_allclose(out, a @ w.T, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tangent, t @ w.T, rtol=1e-6, atol=1e-6)
    _, vjp = jax.vjp(lambda x: models.window_sum(x, n), jnp.asarray(a))
    np.testing.assert_allclose(vjp(jnp.asarray(g))[0], g @ w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('beta', [0.75, 0.5, 0.6])
def test_lrn_jacobians_match_textbook_formula_both_modes(beta):
    """Forward- and reverse-mode Jacobians (and so Hessian-vector products) of the LRN equal
    those of the textbook a / (k + alpha sum a^2) ** beta, written with plain jnp ops."""
    a = jnp.asarray(np.random.default_rng(5).normal(scale=30.0, size=(1, 2, 1, 6)), jnp.float32)

    def textbook(x):
        sums = sum(jnp.pad(x ** 2, ((0, 0),) * 3 + ((2, 2),))[..., i:i + 6] for i in range(5))
        return x / (2.0 + 1e-3 * sums) ** beta
    lrn = lambda x: models.local_response_norm(x, 2.0, 5, 1e-3, beta)  # noqa: E731
    want = jax.jacfwd(textbook)(a)
    for jacobian in (jax.jacfwd, jax.jacrev):
        np.testing.assert_allclose(jacobian(lrn)(a), want, rtol=1e-4, atol=1e-6)
    hvp = lambda f: jax.jvp(jax.grad(lambda x: jnp.sum(f(x) ** 2)), (a,), (a,))[1]  # noqa: E731
    np.testing.assert_allclose(hvp(lrn), hvp(textbook), rtol=1e-3, atol=1e-5)


def test_lrn_matches_tensorflow():
    a = np.random.default_rng(1).normal(scale=20.0, size=(2, 5, 5, 16)).astype(np.float32)
    want = tf.nn.local_response_normalization(a, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
    got = models.local_response_norm(jnp.asarray(a), 2.0, 5, 1e-4, 0.75, 'paper')
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5)


def test_lrn_rejects_even_size_and_unknown_convention():
    x = jnp.ones((1, 2, 2, 4))
    with pytest.raises(ValueError, match='odd'):
        models.local_response_norm(x, n=4)
    with pytest.raises(ValueError, match='config.model.lrn_convention'):
        models.local_response_norm(x, convention='torch')


@pytest.mark.parametrize('field,value', [('architecture', 'vgg'), ('activation', 'swish'),
                                         ('lrn_convention', 'torch'), ('init_scheme', 'kaiming')])
def test_model_names_are_checked_where_defined(field, value):
    """One check per name: create_model (and validation, early) raise the same ConfigError."""
    config = alexnet.get_config('digits')
    config.model[field] = value
    for check in (models.create_model, validation.validate_model):
        with pytest.raises(validation.ConfigError, match=f'config.model.{field}: {value!r}'):
            check(config.model)


def test_groups_block_cross_group_connections():
    """Perturb the first group's input of conv2: the second group's outputs must not move."""
    model = models.AlexNet(groups=2, width=0.25, num_classes=3, activation='tanh')
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 67, 67, 3)), jnp.float32)
    variables = init(model, x.shape)
    in_half = variables['params']['conv2']['kernel'].shape[2]  # Inputs per group.

    def perturb_group0(next_fun, args, kwargs, context):
        if context.module.name == 'conv2' and context.method_name == '__call__':
            (inp,) = args
            args = (inp.at[..., :in_half].add(1.0),)
        return next_fun(*args, **kwargs)

    base = intermediates(model, variables, x)['conv2']
    with nn.intercept_methods(perturb_group0):
        moved = intermediates(model, variables, x)['conv2']
    out_half = base.shape[-1] // 2
    np.testing.assert_array_equal(moved[..., out_half:], base[..., out_half:])
    assert np.abs(moved[..., :out_half] - base[..., :out_half]).max() > 1e-3
    # conv3 sees both groups, as in the paper: its kernel spans all of conv2's outputs.
    assert variables['params']['conv3']['kernel'].shape[2] == base.shape[-1]


@pytest.mark.parametrize('groups,stride,padding', [(2, 1, 2), (4, 2, 1)])
def test_grouped_conv_equals_a_feature_group_convolution(groups, stride, padding):
    """models.grouped_conv (one convolution per group, as the paper's two GPUs) against XLA's
    own feature_group_count convolution: outputs and both gradients."""
    rng = np.random.default_rng(groups)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(5, 5, 8 // groups, 12)), jnp.float32)
    kw = dict(window_strides=(stride, stride), padding=[(padding, padding)] * 2,
              dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)
    ours, ours_vjp = jax.vjp(lambda a, b: models.grouped_conv(a, b, **kw), x, w)
    xla, xla_vjp = jax.vjp(lambda a, b: jax.lax.conv_general_dilated(a, b, **kw), x, w)
    np.testing.assert_allclose(ours, xla, rtol=1e-5, atol=1e-5)
    cot = jnp.asarray(rng.normal(size=xla.shape), jnp.float32)
    for a, b in zip(ours_vjp(cot), xla_vjp(cot)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('activation', ['relu', 'tanh'])
def test_activation_switch(activation):
    model = models.AlexNet(activation=activation, width=0.25, num_classes=3, lrn=False,
                           init_scheme='he')
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 67, 67, 3)), jnp.float32)
    conv1 = intermediates(model, init(model, x.shape), x)['conv1']
    if activation == 'relu':
        assert conv1.min() == 0.0 and conv1.max() > 1.0
    else:
        assert conv1.min() < 0.0 and np.abs(conv1).max() < 1.0


def test_dropout_only_in_training():
    model = models.AlexNet(width=0.25, num_classes=5, init_scheme='he')
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 67, 67, 3)), jnp.float32)
    variables = init(model, x.shape)
    eval_a = model.apply(variables, x, train=False)
    eval_b = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train = lambda seed: model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    assert not np.allclose(train(0), train(1))
    assert not np.allclose(train(0), eval_a)
    no_dropout = models.AlexNet(width=0.25, num_classes=5, init_scheme='he', dropout_rate=0.0)
    np.testing.assert_allclose(no_dropout.apply(variables, x, train=True), eval_a, rtol=1e-6)


def test_paper_init_statistics():
    params = init(models.AlexNet(width=0.5), (1, 67, 67, 3))['params']
    for name, p in params.items():
        kernel = np.asarray(p['kernel'])
        assert abs(kernel.std() - 0.01) < 0.001, name
        assert abs(kernel.mean()) < 0.001, name
        want_bias = 1.0 if name in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8') else 0.0
        np.testing.assert_array_equal(p['bias'], want_bias, err_msg=name)


def test_he_init_scales_with_fan_in():
    params = init(models.AlexNet(width=0.5, init_scheme='he'), (1, 67, 67, 3))['params']
    fan_in = np.prod(params['conv3']['kernel'].shape[:-1])
    assert abs(np.std(params['conv3']['kernel']) - np.sqrt(2 / fan_in)) < 0.1 * np.sqrt(2 / fan_in)
    np.testing.assert_array_equal(params['conv2']['bias'], 0.0)


@pytest.mark.parametrize('size,pool', [(66, (3, 2)), (38, (2, 2))])
def test_too_small_input_is_a_clear_error(size, pool):
    model = models.AlexNet(width=0.25, pool_window=pool[0], pool_stride=pool[1])
    minimum = size + 1
    with pytest.raises(ValueError, match=f'{size}x{size} is too small.*minimum is {minimum}x'):
        init(model, (1, size, size, 3))
    init(model, (1, minimum, minimum, 3))  # The minimum itself works.


def test_non_overlapping_pooling_ablation_shapes():
    model = models.AlexNet(pool_window=2, pool_stride=2, width=0.25)
    shapes = jax.eval_shape(
        lambda v: intermediates(model, v, jnp.zeros((1, 227, 227, 3))),
        abstract_variables(model, (1, 227, 227, 3)))
    assert shapes['pool1'].shape[1:3] == (27, 27)
    assert shapes['pool5'].shape[1:3] == (6, 6)


def test_bf16_forward_is_finite_and_close_to_fp32():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 67, 67, 3)), jnp.float32)
    fp32 = models.AlexNet(width=0.25, num_classes=10, init_scheme='he')
    bf16 = models.AlexNet(width=0.25, num_classes=10, init_scheme='he', dtype='bfloat16')
    variables = init(fp32, x.shape)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(init(bf16, x.shape)))
    want, got = fp32.apply(variables, x), bf16.apply(variables, x)
    assert got.dtype == jnp.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())
    assert intermediates(bf16, variables, x)['conv3'].dtype == jnp.bfloat16


def test_batch_norm_variant_keeps_running_statistics():
    model = models.AlexNet(width=0.25, num_classes=4, lrn=False, batch_norm=True)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 67, 67, 3)), jnp.float32)
    variables = init(model, x.shape)
    assert 'bn_conv1' in variables['batch_stats']
    _, updated = model.apply(variables, x, train=True, mutable=['batch_stats'],
                             rngs={'dropout': jax.random.key(0)})
    before = variables['batch_stats']['bn_conv1']['mean']
    assert not np.allclose(updated['batch_stats']['bn_conv1']['mean'], before)
