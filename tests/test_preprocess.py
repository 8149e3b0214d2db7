"""The input boundary: uint8 batches normalised on the device give what today's float path gives.

"Today's float path" is the host computation the pipeline did before batches became uint8:
float32 pixels + the PCA lighting offset, minus the mean, times 1/std, written here in numpy.
The project's steps get the uint8 batch and normalise inside; the float batch goes through the
same steps with the identity normalisation (mean 0, std 1).
"""

import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from configs import alexnet  # noqa: E402
from alexnet_jax.data import input_pipeline as ip  # noqa: E402
from alexnet_jax import parallel
from alexnet_jax.data import preprocess
from alexnet_jax import evaluation  # noqa: E402
from alexnet_jax import train  # noqa: E402

MEAN, STD = (123.68, 116.78, 103.94), (58.4, 57.1, 57.4)


def float_path(batch, mean=MEAN, std=STD):
    """The host's float32 normalisation of the old pipeline, in numpy."""
    x = batch['image'].astype(np.float32)
    if 'lighting' in batch:
        light = batch['lighting'].astype(np.float32)
        x = x + light.reshape(light.shape[:-1] + (1,) * (x.ndim - light.ndim) + light.shape[-1:])
    x = (x - np.float32(mean)) * (np.float32(1) / np.float32(std))
    return {**{k: v for k, v in batch.items() if k not in ('image', 'lighting')}, 'image': x}


@pytest.mark.parametrize('shape,lighting', [
    ((2, 5, 4, 3), True),         # train, one offset per image
    ((2, 5, 4, 3), False),        # eval center
    ((2, 10, 5, 4, 3), False),    # eval ten crops
    ((3, 2, 5, 4, 3), True),      # [devices, per_device, ...] outside pmap
])
def test_normalize_batch_matches_numpy(shape, lighting):
    rng = np.random.default_rng(0)
    batch = {'image': rng.integers(0, 256, shape, dtype=np.uint8)}
    if lighting:
        batch['lighting'] = rng.normal(0, 20, shape[:-3] + (3,)).astype(np.float32)
    out = np.asarray(jax.jit(preprocess.normalize_batch)(batch, np.array(MEAN), np.array(STD)))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, float_path(batch)['image'], rtol=1e-6, atol=1e-6)


def test_normalize_batch_casts_to_the_model_dtype():
    batch = {'image': np.full((1, 2, 2, 3), 200, np.uint8)}
    out = preprocess.normalize_batch(batch, np.array(MEAN), np.array(STD), jax.numpy.bfloat16)
    assert out.dtype == jax.numpy.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32),
                               float_path(batch)['image'], rtol=1e-2)


def test_gray_data_uses_the_mean_of_the_rgb_entries():
    c = alexnet.get_config('digits')
    c.data.mean_rgb, c.data.stddev_rgb = (10.0, 20.0, 60.0), (1.0, 2.0, 6.0)
    mean, std = preprocess.mean_std(c.data, 1)
    np.testing.assert_allclose(mean, [30.0])
    np.testing.assert_allclose(std, [3.0])


def fake_rgb_config(eval_crops='center'):
    """ImageNet's transforms (paper crop, PCA lighting) on tiny fake RGB images."""
    c = alexnet.get_config()
    d = c.data
    d.name, d.fake_shape, d.fake_num_classes = 'fake', (80, 90, 3), 10
    d.fake_train_examples, d.fake_eval_examples = 16, 6
    d.image_size, d.resize_size, d.eval_crops = 67, 76, eval_crops
    d.mean_rgb, d.stddev_rgb = MEAN, STD
    c.model.num_classes, c.model.width, c.model.init_scheme = 10, 0.25, 'he'
    c.train.batch_size, c.train.eval_batch_size = 4, 4
    return c


@pytest.fixture(scope='module')
def setup():
    c = fake_rgb_config()
    info = ip.get_info(c)
    state, key = train.initial_state(c, info, 10, 10)
    return c, info, state, key


@pytest.mark.slow  # Compiles two train steps (~1 min on 2 busy cores).
def test_train_step_on_uint8_with_lighting_equals_the_float_path(setup):
    c, info, state, key = setup
    batch = next(ip.train_iterator(c, process_index=0, process_count=1, local_devices=2))
    assert batch['image'].dtype == np.uint8 and batch['lighting'].shape == (2, 2, 3)
    assert np.abs(batch['lighting']).max() > 0.1  # Lighting is on: the test would see it.
    mean, std = preprocess.mean_std(c.data, 3)
    u8_state, u8 = train.make_train_step(key, mean=mean, std=std)(parallel.replicate(state),
                                                                  batch)
    f_state, f = train.make_train_step(key, mean=0.0, std=1.0)(parallel.replicate(state),
                                                               float_path(batch))
    np.testing.assert_allclose(u8['loss'], f['loss'], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(u8_state.params), jax.tree.leaves(f_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # Compiles eval steps and the net.
@pytest.mark.parametrize('crops', ['center', 'ten'])
def test_eval_on_uint8_equals_the_float_path(setup, crops):
    c, info, state, _ = setup
    c = fake_rgb_config(crops)
    batches = list(ip.eval_iterator(c, 'validation', process_index=0, process_count=1,
                                    local_devices=2))
    batch = batches[0]
    assert batch['image'].dtype == np.uint8 and 'lighting' not in batch
    assert batch['image'].shape[2:] == ((76, 76, 3) if crops == 'ten' else (67, 67, 3))
    mean, std = preprocess.mean_std(c.data, 3)
    rstate = parallel.replicate(state)
    u8 = evaluation.make_eval_step(mean, std, 67)(rstate, batch)
    if crops == 'ten':  # Today's path: the host cut the 10 crops (numpy here) in float32.
        squares = batch['image']
        m, e = (76 - 67) // 2, 76 - 67
        views = [squares[:, :, y:y + 67, x:x + 67] for y, x in
                 [(m, m), (0, 0), (0, e), (e, 0), (e, e)]]
        views += [v[:, :, :, ::-1] for v in views]
        batch = {**batch, 'image': np.stack(views, axis=2)}
    f = evaluation.make_eval_step(0.0, 1.0, 67)(rstate, float_path(batch))
    for k in ('loss', 'top1', 'top5', 'count'):
        np.testing.assert_allclose(u8[k], f[k], rtol=1e-5)
    # The logits themselves, image by image, as the model sees them.
    variables = {'params': state.params}
    images = batch['image'].reshape((-1,) + batch['image'].shape[-3:])
    on_device = jax.jit(lambda im: state.apply_fn(
        variables, preprocess.normalize_batch({'image': im}, mean, std), train=False))(images)
    host = state.apply_fn(variables, float_path({'image': images})['image'], train=False)
    np.testing.assert_allclose(on_device, host, rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(host)).max() > 1e-3  # Non-trivial logits.


def test_identity_normalisation_passes_float_batches_unchanged():
    """A float batch through mean 0 / std 1 is the identity: features/benchmarks rely on it."""
    x = np.random.default_rng(1).normal(size=(2, 3, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(preprocess.normalize_batch({'image': x}, 0.0, 1.0), x)

