"""Device-resident data: the on-device `small` augmentation against the tf.data transform, the
per-epoch order, determinism per (seed, step), and exact resume of a run that trains on it."""

import functools
import shutil

import jax
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax.data import augment
from alexnet_jax.data import device_data
from alexnet_jax.data import input_pipeline
from alexnet_jax import parallel
from alexnet_jax import train
from tests.helpers import assert_trees_close, device_config, saved_state


@pytest.mark.parametrize('dy,dx,flip', [(0, 0, False), (8, 3, True), (4, 4, False), (2, 7, True)])
def test_pad_crop_flip_equals_tf_ops(dy, dx, flip):
    image = np.random.default_rng(0).integers(0, 256, (11, 9, 3), dtype=np.uint8)
    want = augment.flip(augment.pad_and_crop(tf.constant(image), 4, dy, dx), tf.constant(flip))
    got = device_data.pad_crop_flip(image[None], np.array([[dy, dx]]), np.array([flip]), 4, True)
    np.testing.assert_array_equal(np.asarray(got)[0], want.numpy())


def test_augmentation_draws_match_tf_transform_in_distribution():
    pad, n = 3, 6000
    offsets, flips = device_data.draws(jax.random.key(0), np.arange(n, dtype=np.int32), pad)
    offsets, flips = np.asarray(offsets), np.asarray(flips)
    # The tf.data `small` transform's own draws (augment.random_pad_and_crop / random_flip).
    def tf_draws(i):  # Seeded per example as input_pipeline.train_dataset seeds them.
        s = tf.random.experimental.stateless_fold_in(tf.constant([0, 0], tf.int64), i)
        return (tf.random.stateless_uniform([2], augment.subseed(s, augment.CROP), 0,
                                            2 * pad + 1, dtype=tf.int32),
                tf.random.stateless_uniform([], augment.subseed(s, augment.FLIP)) < 0.5)
    tf_off, tf_flip = next(tf.data.Dataset.range(n).map(tf_draws).batch(n).as_numpy_iterator())
    k = 2 * pad + 1
    sigma = np.sqrt((1 / k) * (1 - 1 / k) / n)
    for off in (offsets, tf_off):
        assert off.min() == 0 and off.max() == 2 * pad
        for axis in (0, 1):
            freq = np.bincount(off[:, axis], minlength=k) / n
            np.testing.assert_allclose(freq, 1 / k, atol=4 * sigma)
        assert abs(np.corrcoef(off[:, 0], off[:, 1])[0, 1]) < 0.05  # dy, dx independent.
    for f in (flips, tf_flip):
        assert abs(f.mean() - 0.5) < 4 * np.sqrt(0.25 / n)


def _device_batches(config, seed, steps, devices):
    """Host batches (device slices concatenated) of `steps` (0-based) from the pmapped gather."""
    loaded = device_data.load(config)
    spec = device_data.make_spec(config, len(loaded['label']), local_devices=len(devices),
                                 process_count=1)
    data = device_data.place(loaded, devices)
    key = parallel.replicate(device_data.data_key(seed), devices)
    gather = jax.pmap(functools.partial(device_data.train_batch, spec=spec), in_axes=(0, 0, None),
                      axis_name=parallel.AXIS, devices=devices)
    out = []
    for s in steps:
        b = jax.device_get(gather(data, key, s))
        out.append({k: v.reshape((-1,) + v.shape[2:]) for k, v in b.items()})
    return out, data


def test_each_epoch_visits_every_example_once_split_over_devices():
    config = device_config(batch_size=8)  # n = 40: 5 steps per epoch.
    config.data.update(pad=0, random_flip=False)  # Images then identify their rows.
    devices = jax.local_devices()[:2]
    batches, data = _device_batches(config, 0, range(10), devices)
    images = np.asarray(data['image'])[0].reshape(40, -1)
    rows = [[int(np.flatnonzero((images == im.reshape(-1)).all(1))[0]) for im in b['image']]
            for b in batches]
    epochs = [sum(rows[e * 5:(e + 1) * 5], []) for e in (0, 1)]
    for e in epochs:
        assert sorted(e) == list(range(40))
    assert epochs[0] != epochs[1]  # Reshuffled.
    labels = np.asarray(data['label'])[0]
    np.testing.assert_array_equal(batches[3]['label'], labels[rows[3]])


def test_batches_are_a_function_of_seed_and_step():
    config = device_config(batch_size=8)
    config.train.batch_size = 12  # 40 = 3 x 12 + 4: batch 3 spans the epoch boundary.
    devices = jax.local_devices()[:2]
    a, _ = _device_batches(config, 0, [0, 3, 7], devices)
    b, _ = _device_batches(config, 0, [7, 3], devices)  # Other order, fresh call.
    c, _ = _device_batches(config, 1, [3], devices)
    for x, y in ((a[1], b[1]), (a[2], b[0])):
        np.testing.assert_array_equal(x['image'], y['image'])
        np.testing.assert_array_equal(x['label'], y['label'])
    assert not np.array_equal(a[1]['image'], c[0]['image'])


def test_global_batches_do_not_depend_on_the_device_count():
    """Each device gathers its slots of the same global batch: 1, 2 or 4 devices, same images."""
    config = device_config(batch_size=8)
    data = dict(device_data.load(config))
    key = device_data.data_key(0)

    def global_batch(devices, step):
        spec = device_data.make_spec(config, len(data['label']), local_devices=devices,
                                     process_count=1)
        parts = [device_data.train_batch(dict(data, slot=np.int32(slot)), key, step, spec)
                 for slot in range(devices)]
        return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    for step in (0, 4, 9):  # 5 steps an epoch: 9 is in the second.
        one = global_batch(1, step)
        for devices in (2, 4):
            other = global_batch(devices, step)
            np.testing.assert_array_equal(one['image'], other['image'])
            np.testing.assert_array_equal(one['label'], other['label'])


def test_load_equals_the_tf_data_eval_images():
    config = device_config()
    config.data.image_size = 67
    config.data.fake_shape = (70, 70, 3)  # Resized to 67 by both paths.
    config.data.eval_split = config.data.train_split
    loaded = device_data.load(config, 0, 1)
    batches = list(input_pipeline.eval_iterator(config, config.data.train_split, process_index=0,
                                                process_count=1, local_devices=1))
    images = np.concatenate([b['image'][0][b['mask'][0]] for b in batches])  # uint8 batches.
    np.testing.assert_array_equal(loaded['image'], images)
    assert loaded['image'].dtype == np.uint8 and loaded['image'].shape == (40, 67, 67, 3)
    # A process's next run with the same data section reuses the read (a sweep worker's seeds).
    assert device_data.load(config.copy_and_resolve_references(), 0, 1) is loaded
    assert not loaded['image'].flags.writeable
    config.data.fake_shape = (71, 71, 3)
    assert device_data.load(config, 0, 1) is not loaded


def test_auto_uses_the_device_below_the_threshold():
    config = device_config()
    config.data.device_resident = 'auto'
    info = input_pipeline.get_info(config)
    assert device_data.enabled(config, info)
    config.data.device_max_bytes = device_data.train_bytes(config, info) - 1
    assert not device_data.enabled(config, info)
    config.data.update(device_max_bytes=1 << 30, train_augment='paper', fake_shape=(70, 70, 3))
    assert not device_data.enabled(config, info)


@pytest.mark.slow  # Two short training runs.
def test_resume_with_device_data_is_exact(tmp_path):
    config = device_config(num_steps=6, checkpoint_every_steps=3)
    clean = train.train_and_evaluate(config, str(tmp_path / 'clean'))
    shutil.copytree(tmp_path / 'clean', tmp_path / 'run')  # The same run, trained once.
    shutil.rmtree(tmp_path / 'run' / 'checkpoints' / '6')  # As if killed after step 3's save.
    (tmp_path / 'run' / 'results.json').unlink()
    again = train.train_and_evaluate(config, str(tmp_path / 'run'))  # Steps 4..6 again.
    assert again['test_loss'] == pytest.approx(clean['test_loss'], abs=1e-6)
    state, _ = saved_state(config, str(tmp_path / 'run'))
    assert int(state.step) == 6
    assert_trees_close(state.params, saved_state(config, str(tmp_path / 'clean'))[0].params)
