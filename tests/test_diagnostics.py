"""What shows that an ablation's switch acted: diagnostics against numpy, in the loop's records,
and the published grids' settings (Fig. 1's net and input, an LRN that normalises)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import diagnostics
from alexnet_jax import models
from alexnet_jax import train
from alexnet_jax.data import input_pipeline
from alexnet_jax.data import preprocess
from alexnet_jax.tools import grid as grid_lib
from alexnet_jax import workdirs
from configs import ablations


def test_units_ever_active_count_dead_relu_channels():
    """conv2's channels 0-3 of 8 get a bias of -1e3: never active, half of them dead."""
    model = models.Fig1Net(width=0.25, init_scheme='he')
    images = np.random.default_rng(0).normal(size=(16, 32, 32, 1)).astype(np.float32)
    params = jax.tree.map(np.array, model.init(jax.random.key(0), images)['params'])
    params['conv2']['bias'][:4] = -1e3
    model_config = {'lrn_k': 2.0, 'lrn_beta': 0.75}
    out = diagnostics.measure(model.apply, params, {}, images, _Fields(model_config))
    assert out['conv2/active'] == 0.5
    assert out['conv1/active'] == 1.0
    _, inter = model.apply({'params': params}, images, mutable=['intermediates'])
    conv3 = np.asarray(inter['intermediates']['conv3_out'][0])
    assert out['conv3/rms'] == pytest.approx(np.sqrt(np.mean(conv3 ** 2)), rel=1e-5)
    assert not any('divisor' in k for k in out)  # No LRN in this net.


class _Fields(dict):
    __getattr__ = dict.__getitem__


@pytest.mark.parametrize('scale', [1.0, 127.5])
def test_lrn_divisor_percentiles_match_numpy(scale):
    """The sown divisor's percentiles, against the paper's formula on conv1's output; at pixel
    scale 1 it is k^beta to 0.1% (LRN inactive), at 0-255-like scale it is not."""
    model = models.AlexNet(num_classes=10, width=0.1, init_scheme='he')
    images = scale * np.random.default_rng(1).normal(size=(4, 67, 67, 3)).astype(np.float32)
    params = model.init(jax.random.key(0), images)['params']
    cfg = _Fields({'lrn_k': 2.0, 'lrn_beta': 0.75})
    out = diagnostics.measure(model.apply, params, {}, images, cfg)
    _, inter = model.apply({'params': params}, images, mutable=['intermediates'])
    a = np.asarray(inter['intermediates']['conv1_out'][0], np.float64)
    padded = np.pad(a ** 2, [(0, 0)] * 3 + [(2, 2)])
    sums = sum(padded[..., j:j + a.shape[-1]] for j in range(5))
    divisor = (2.0 + 1e-4 * sums) ** 0.75
    for p in diagnostics.PERCENTILES:
        assert out[f'lrn1/divisor_p{p}'] == pytest.approx(np.percentile(divisor, p), rel=1e-4)
    assert out['lrn1/p99_over_k_beta'] == pytest.approx(np.percentile(divisor, 99) / 2 ** 0.75,
                                                        rel=1e-4)
    assert out['lrn1/spread'] == pytest.approx(np.percentile(divisor, 99)
                                               / np.percentile(divisor, 1), rel=1e-4)
    assert diagnostics.lrn_inactive(out) == (scale == 1.0)


@pytest.mark.parametrize('stats,inactive', [
    ({'lrn1/spread': 1.005, 'lrn1/p99_over_k_beta': 3.0}, True),  # Uniformly raised: a rescale.
    ({'lrn1/spread': 1.2, 'lrn1/p99_over_k_beta': 1.2}, False),
    ({'lrn1/spread': 1.2, 'lrn2/spread': 1.001}, False),  # One layer normalises.
    ({'lrn1/p99_over_k_beta': 1.005}, True),  # An older record: p99 / k^beta.
    ({'conv1/rms': 1.0}, False),  # No LRN layer.
])
def test_lrn_inactive_reads_the_spread(stats, inactive):
    assert diagnostics.lrn_inactive(stats) == inactive


def test_the_constant_control_only_rescales():
    """lrn_divisor='constant': LRN's output is its input times k^-beta, nothing else."""
    x = np.random.default_rng(2).normal(size=(2, 67, 67, 3)).astype(np.float32) * 100
    outputs = {}
    for divisor in ('local', 'constant'):
        model = models.AlexNet(num_classes=10, width=0.1, lrn_divisor=divisor)
        variables = model.init(jax.random.key(0), x)  # Same key: the same weights.
        _, state = model.apply(variables, x, mutable=['intermediates'])
        outputs[divisor] = {k: np.asarray(v[0]) for k, v in state['intermediates'].items()}
    const = outputs['constant']
    np.testing.assert_allclose(const['lrn1_out'], const['conv1_out'] * 2.0 ** -0.75, rtol=1e-6)
    assert 'lrn1_divisor' not in const  # No divisor: nothing to measure.
    local = outputs['local']
    np.testing.assert_allclose(local['lrn1_out'], models.local_response_norm(local['conv1_out']),
                               rtol=1e-5)
    assert not np.allclose(local['lrn1_out'], const['lrn1_out'], rtol=1e-2)  # It normalises.


def _lrn_outputs(model, variables, x, mutable=('intermediates',)):
    out, state = model.apply(variables, x, mutable=list(mutable))
    return {k: np.asarray(v[0]) for k, v in state['intermediates'].items()}, state


def test_the_matched_control_has_lrns_scale_and_freezes_it():
    """lrn_divisor='matched': conv1's output over one scalar, RMS(x) / RMS(LRN(x)) of the batch
    (numpy) until the first training batch freezes it in batch_stats; the logits then have
    LRN's scale, and a later batch is divided by the frozen number, not its own."""
    rng = np.random.default_rng(3)
    x, other = (rng.normal(size=(2, 67, 67, 3)).astype(np.float32) * s for s in (100, 30))
    local = models.AlexNet(num_classes=10, width=0.1, init_scheme='he')
    matched = models.AlexNet(num_classes=10, width=0.1, init_scheme='he', lrn_divisor='matched')
    params = local.init(jax.random.key(0), x)['params']
    lrn_out, _ = _lrn_outputs(local, {'params': params}, x)
    stats0 = matched.init(jax.random.key(0), x)['batch_stats']
    assert float(stats0['lrn1_matched']) == 0.0  # Not measured yet.
    out, _ = _lrn_outputs(matched, {'params': params, 'batch_stats': stats0}, x)
    conv1 = out['conv1_out'].astype(np.float64)
    rms = lambda t: np.sqrt(np.mean(np.square(t)))
    expected = rms(conv1) / rms(models.local_response_norm(jnp.asarray(conv1)))
    assert float(out['lrn1_constant']) == pytest.approx(expected, rel=1e-4)
    np.testing.assert_allclose(out['lrn1_out'], conv1 / expected, rtol=1e-4)
    assert rms(out['lrn1_out']) == pytest.approx(rms(lrn_out['lrn1_out']), rel=1e-4)
    assert 0.7 <= rms(out['fc8_out']) / rms(lrn_out['fc8_out']) <= 1.4
    assert 'lrn1_divisor' not in out  # A constant: no divisor spread to measure.
    _, state = _lrn_outputs(matched, {'params': params, 'batch_stats': stats0}, x,
                            ('intermediates', 'batch_stats'))
    frozen = state['batch_stats']
    assert float(frozen['lrn1_matched']) == pytest.approx(expected, rel=1e-4)
    later, _ = _lrn_outputs(matched, {'params': params, 'batch_stats': frozen}, other)
    np.testing.assert_allclose(later['lrn1_out'], later['conv1_out'] / expected, rtol=1e-4)
    again, state = _lrn_outputs(matched, {'params': params, 'batch_stats': frozen}, other,
                                ('intermediates', 'batch_stats'))
    assert float(state['batch_stats']['lrn1_matched']) == pytest.approx(expected, rel=1e-6)


def test_the_loop_records_diagnostics_and_each_test_example(tiny_run):
    workdir, results = tiny_run
    diag = results['diagnostics']
    assert set(diag) == {'init', 'final'}
    for when in diag.values():
        assert 0 < when['conv1/active'] <= 1 and when['conv1/rms'] > 0
        assert when['lrn1/divisor_p1'] <= when['lrn1/divisor_p50'] <= when['lrn1/divisor_p99']
    assert diag['init'] != diag['final']  # Measured on the weights at init and at the end.
    records = [h for h in workdirs.read_metrics(workdir) if h['split'] == 'diagnostics']
    assert [h['step'] for h in records] == [0, results['steps']]
    on_disk = json.loads((workdir / 'results.json').read_text())
    assert on_disk['diagnostics'] == diag
    hits = on_disk['test_correct']
    assert len(hits) == 20 and set(hits) <= {'0', '1'}  # data.fake_eval_examples
    assert hits.count('1') / 20 == pytest.approx(on_disk['test_top1'])


@pytest.mark.parametrize('variant,channels', [('digits_fig1', 1), ('fig1_cifar10', 3)])
def test_fig1_builds_the_published_net(variant, channels):
    """Fig1Net's 32/32/64 kernels, read from the module the config builds."""
    config = grid_lib.load_base_config(f'configs/alexnet.py:{variant}')
    model = models.create_model(config.model)
    params = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, channels)))['params']
    assert [params[f'conv{i}']['kernel'].shape[-1] for i in (1, 2, 3)] == [32, 32, 64]
    assert params['conv1']['kernel'].shape[-2] == channels


def test_fig1_input_is_centred_on_the_training_split(digits_dir):
    """digits_fig1 subtracts the training images' per-pixel mean image as the net is fed them
    (each pixel of the normalised training split averages 0); the scalar mean stays an option
    (data.mean_image=False), the split's mean pixel."""
    from alexnet_jax.data import device_data  # pylint: disable=import-outside-toplevel
    config = grid_lib.load_base_config('configs/alexnet.py:digits_fig1')
    config.data.data_dir = digits_dir
    images = device_data.load(config)['image'].astype(np.float64)
    assert images.shape[1:] == (32, 32, 1)
    data = input_pipeline.facts(config)
    assert data.mean.shape == (32, 32, 1) and float(data.std[0]) == 1.0
    centred = np.asarray(preprocess.normalize_batch({'image': images}, data.mean, data.std))
    np.testing.assert_allclose(centred.mean(axis=0), 0.0, atol=1e-3)
    assert float(np.abs(data.mean - images.mean()).max()) > 10  # Not a constant.
    # The He grid divides the centred pixels by their standard deviation: unit variance.
    he_grid = ablations.get_config('fig1_he_init')
    he_config = grid_lib.point_config(he_grid, grid_lib.expand(he_grid)[0])
    he_config.data.data_dir = digits_dir
    he_data = input_pipeline.facts(he_config)
    he_input = np.asarray(preprocess.normalize_batch({'image': images}, he_data.mean, he_data.std))
    assert float(he_input.std()) == pytest.approx(1.0, abs=2e-3)
    config.data.mean_image = False
    mean, _ = preprocess.mean_std(config.data, 1)
    assert float(mean[0]) == pytest.approx(images.mean(), abs=0.01)


@pytest.mark.slow  # Two real train states on the digits.
def test_the_default_grid_lrn_normalises_and_the_demo_lrn_does_not(digits_dir):
    """At init, on the first evaluation batch: the default grid's LRN divisor spreads >= 5%
    above k^beta; the demo's (alpha 1e-4 on [-1, 1] pixels) stays within 1% of it."""
    sweep = ablations.get_config('default')
    point = next(p for p in grid_lib.expand(sweep) if p.name == 'relu_lrnhi')
    grid_config = grid_lib.point_config(sweep, point)
    demo = grid_lib.load_base_config('configs/alexnet.py:digits')
    measured = []
    for config in (grid_config, demo):
        config.data.data_dir = digits_dir
        info = input_pipeline.get_info(config)
        state, _ = train.initial_state(config, info, 19, 228)
        mean, std = preprocess.mean_std(config.data, 1)
        images = diagnostics.first_eval_images(config, mean, std)
        measured.append(diagnostics.measure(state.apply_fn, state.params, state.batch_stats,
                                            images, config.model))
    grid_stats, demo_stats = measured
    assert grid_stats['lrn1/p99_over_k_beta'] >= 1.05 and grid_stats['lrn1/spread'] >= 1.05
    assert not diagnostics.lrn_inactive(grid_stats)
    assert diagnostics.lrn_inactive(demo_stats)


def test_a_mean_image_needs_the_training_split_on_the_device(digits_dir):
    config = grid_lib.load_base_config('configs/alexnet.py:digits_fig1')
    config.data.data_dir = digits_dir
    config.data.device_resident = 'never'
    from alexnet_jax import errors  # pylint: disable=import-outside-toplevel
    with pytest.raises(errors.ConfigError, match='data.mean_image.*device_resident=always'):
        input_pipeline.facts(config)
