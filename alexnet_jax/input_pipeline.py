"""From `config.data` to sharded numpy batches: [local_devices, per_device, ...].

Sources (`datasets/sources.py`): any TFDS set, 'digits' (embedded, built offline on first use),
'folder' (root/<split>/<class>/*.jpg through TFDS's ImageFolder), 'fake'.

Per host: train reads `tfds.even_splits(split, process_count, drop_remainder=True)[index]`, so
hosts never share an example and all see the same number; eval reads the even split *without*
dropping, pads every host to the same number of batches and marks padding with mask=False, so
each example is counted exactly once and pmapped collectives never wait for a missing batch.

Determinism and resume (per-epoch seeds plus skipping, no iterator state to save): the host's
raw (still encoded) records are shuffled once per epoch with seed (config.seed, epoch) and
numbered by their position in the infinite stream, i = epoch * n_host + position. Every random
augmentation of element i is a stateless op seeded by (config.seed, process_index, i). Batch k
is elements [k * host_batch, (k + 1) * host_batch). Resuming at step s therefore starts at epoch
s * host_batch // n_host and skips the rest of the offset *before* decoding: the cost is reading
at most one epoch of raw records (instant when cached in memory; for ImageNet read from disk,
up to a few minutes), and the batches are bit-identical to the uninterrupted run's.
The stream depends on (seed, process_count, local_devices, batch size): resume on the same
topology.
"""

import dataclasses
import functools
import math
import os
import sys
import time
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import augment, parallel, preprocess
from alexnet_jax.datasets import sources

try:  # TF only feeds the host; it must not grab GPU memory that JAX needs.
    tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # Already initialised (e.g. set by the caller): nothing to do.
    pass


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    num_examples: dict  # Split name -> examples (all hosts; unreadable folder images excluded).
    image_shape: tuple  # (H, W, C) the model sees.
    skipped_files: dict = dataclasses.field(default_factory=dict)  # Split -> unreadable files.


def get_info(config) -> DatasetInfo:
    """Facts about the configured data; builds digits on first use, clear error if unprepared."""
    d = config.data
    src = sources.get_source(d)
    _check_augment(d, src)
    splits = dict.fromkeys([d.train_split, d.eval_split, d.test_split])
    return DatasetInfo(
        num_classes=src.num_classes,
        num_examples={s: src.num_examples(s) for s in splits},
        image_shape=(d.image_size, d.image_size, src.channels),
        skipped_files={s: src.skipped(s) for s in splits if src.skipped(s)})


def steps_per_epoch(config) -> int:
    return get_info(config).num_examples[config.data.train_split] // config.train.batch_size


def _hosts(process_index, process_count, local_devices):
    return (jax.process_index() if process_index is None else process_index,
            jax.process_count() if process_count is None else process_count,
            jax.local_device_count() if local_devices is None else local_devices)


def train_iterator(config, *, start_step: int = 0, process_index=None, process_count=None,
                   local_devices=None) -> Iterator[dict]:
    """Infinite: batch start_step, start_step + 1, ... of this host's share of the stream."""
    ds = train_dataset(config, start_step, *_hosts(process_index, process_count, local_devices))
    return iter(tfds.as_numpy(ds))


def eval_iterator(config, split: str, *, process_index=None, process_count=None,
                  local_devices=None) -> Iterator[dict]:
    """One pass over this host's part of `split`, padded to the batch count of every host."""
    ds = eval_dataset(config, split, *_hosts(process_index, process_count, local_devices))
    return iter(tfds.as_numpy(ds))


# --- tf.data pipelines --------------------------------------------------------------------------

def train_dataset(config, start_step, process_index, process_count, local_devices):
    d = config.data
    src = sources.get_source(d)
    _check_augment(d, src)
    per_device = parallel.per_device_batch_size(config.train.batch_size, process_count,
                                                local_devices)
    host_batch = per_device * local_devices
    raw, n = src.read(d.train_split, process_index, process_count, drop_remainder=True)
    if n == 0:
        raise ValueError(f'Split {d.train_split!r} of {d.name} has '
                         f'{src.num_examples(d.train_split)} examples, too few for '
                         f'{process_count} host(s).')
    if src.cache:
        raw = raw.cache()
    first_epoch, offset = divmod(start_step * host_batch, n)
    buffer = min(d.shuffle_buffer, n)

    def epoch(e):  # This epoch's order depends only on (seed, epoch).
        return raw.shuffle(buffer, seed=e * 1_000_003 + config.seed).enumerate(start=e * n)

    ds = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(epoch).skip(offset)
    transform = _transform(d, src.channels, train=True)
    base = tf.constant([config.seed, process_index], tf.int64)

    def prepare(i, ex):
        seed = tf.random.experimental.stateless_fold_in(base, i)
        return {**transform(ex['image'], seed), 'label': tf.cast(ex['label'], tf.int32)}

    ds = ds.map(prepare, num_parallel_calls=d.num_parallel_calls)
    ds = ds.batch(host_batch, drop_remainder=True)
    return _finish(ds, local_devices)


def eval_dataset(config, split, process_index, process_count, local_devices):
    # Memoised: a cached source is read from memory on every later evaluation.
    return _eval_dataset(_Key(config), split, process_index, process_count, local_devices)


@functools.lru_cache(maxsize=16)
def _eval_dataset(key, split, process_index, process_count, local_devices):
    config = key.config
    d = config.data
    src = sources.get_source(d)
    per_device = parallel.per_device_batch_size(config.train.eval_batch_size, process_count,
                                                local_devices)
    host_batch = per_device * local_devices
    total = src.num_examples(split)
    if total == 0:
        raise ValueError(f'Split {split!r} of {d.name} is empty.')
    raw, n = src.read(split, process_index, process_count, drop_remainder=False)
    if src.cache:
        raw = raw.cache()
    batches = math.ceil(math.ceil(total / process_count) / host_batch)  # Same on every host.
    transform = _transform(d, src.channels, train=False)
    ds = raw.map(lambda ex: {**transform(ex['image'], None),
                             'label': tf.cast(ex['label'], tf.int32), 'mask': True},
                 num_parallel_calls=d.num_parallel_calls)
    padding = tf.data.Dataset.from_tensors(
        tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec))
    ds = ds.concatenate(padding.repeat(batches * host_batch - n)).batch(host_batch)
    return _finish(ds, local_devices)


class _Key:
    """A config, hashable by its JSON (for memoising eval datasets)."""

    def __init__(self, config):
        self.config, self._json = config, config.to_json_best_effort(sort_keys=True)

    def __hash__(self):
        return hash(self._json)

    def __eq__(self, other):
        return self._json == other._json


def _finish(ds, local_devices):
    """[host_batch, ...] -> [local_devices, per_device, ...], prefetched, deterministic."""
    def shard(batch):
        return tf.nest.map_structure(
            lambda x: tf.reshape(x, tf.concat([[local_devices, -1], tf.shape(x)[1:]], 0)), batch)
    ds = ds.map(shard).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1  # Parallelism comes from the map.
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options)


def _check_augment(d, src):
    shape = getattr(src, 'image_shape', None)
    if d.train_augment != 'small' and shape and shape[0] and shape[0] < d.image_size:
        raise ValueError(
            f"config.data.train_augment={d.train_augment!r} crops {d.image_size}-pixel patches "
            f'out of {d.resize_size}-pixel rescaled images, but {d.name} images are '
            f"{shape[0]}x{shape[1]}; use --config.data.train_augment=small (resize to "
            f'image_size, pad-and-crop, flip).')


_mean_std = preprocess.mean_std  # The model's normalisation (applied on the device).


def _transform(d, channels, train):
    """(encoded or uint8 image, seed) -> {'image': uint8 [H, W, C] (eval 10 crops:
    [10, H, W, C])} plus, for the ImageNet train transforms with data.pca_lighting > 0,
    'lighting': the float32 [C] PCA offset that `preprocess.normalize_batch` adds on the device."""
    size, small = d.image_size, d.train_augment == 'small'
    if train and small:
        fn = functools.partial(augment.small_train, size=size, pad=d.pad, mirror=d.random_flip,
                               channels=channels)
    elif train and d.train_augment == 'inception':
        fn = functools.partial(augment.inception_train, crop_size=size,
                               area_range=tuple(d.crop_area_range),
                               aspect_range=tuple(d.aspect_ratio_range), mirror=d.random_flip,
                               channels=channels)
    elif train:
        fn = functools.partial(augment.paper_train, resize_size=d.resize_size, crop_size=size,
                               mirror=d.random_flip, channels=channels)
    elif small:
        fn = functools.partial(augment.small_eval, size=size, pad=d.pad, crops=d.eval_crops,
                               channels=channels)
    else:
        fn = functools.partial(augment.paper_eval, resize_size=d.resize_size, crop_size=size,
                               crops=d.eval_crops, channels=channels)
    if not train:
        return lambda image, seed: {'image': fn(image)}
    if small or not d.pca_lighting or channels != 3:
        return lambda image, seed: {'image': fn(image, seed)}
    return lambda image, seed: {'image': fn(image, seed),
                                'lighting': augment.random_lighting(seed, d.pca_lighting)}


# --- benchmark ----------------------------------------------------------------------------------

def write_jpeg_folder(root, num_images, num_classes=10, size=256, seed=0):
    """num_images 256x256 JPEGs (smooth random colour fields + noise, ~ImageNet-like sizes)."""
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        low = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
        image = tf.image.resize(low[None], [size, size], method='bicubic')[0]
        image = image + rng.normal(0, 12, (size, size, 3)).astype(np.float32)
        data = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality=90)
        path = os.path.join(root, 'train', f'class{i % num_classes:03d}', f'{i:06d}.jpg')
        tf.io.gfile.makedirs(os.path.dirname(path))
        tf.io.write_file(path, data)


def _rate(iterator, examples_per_batch, seconds, warmup=3):
    for _ in range(warmup):
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += examples_per_batch
    return count / (time.perf_counter() - start)


def bench(config, num_images=1024, seconds=20.0):
    """Prints train (paper transform) and eval 10-crop images/s on 256x256 JPEGs in a temp dir."""
    import tempfile
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as root:
        write_jpeg_folder(root, num_images)
        config = config.copy_and_resolve_references()
        config.data.name, config.data.folder_root = 'folder', root
        config.data.train_split = config.data.eval_split = 'train'
        config.data.cache = 'never'  # Every image is read and decoded each time.
        batch = config.train.batch_size
        train = train_iterator(config, process_index=0, process_count=1, local_devices=1)
        rate = _rate(train, batch, seconds)
        print(f'train ({config.data.train_augment} transform, {config.data.image_size}px, '
              f'batch {batch}): {rate:.0f} images/s = {rate / cores:.0f} images/s/core '
              f'on {cores} cores')
        config.data.eval_crops = 'ten'
        start, count = time.perf_counter(), 0
        for b in eval_iterator(config, 'train', process_index=0, process_count=1,
                               local_devices=1):
            count += int(b['mask'].sum())
        rate = count / (time.perf_counter() - start)
        print(f'eval (10 crops, {config.data.image_size}px): {rate:.0f} images/s = '
              f'{rate / cores:.0f} images/s/core on {cores} cores')


def bench_model(config, batch=32, steps=3):
    """Prints what one forward+backward pass of the configured net consumes (images/s)."""
    import jax.numpy as jnp
    from alexnet_jax import models
    model = models.AlexNet(**config.model)
    size = config.data.image_size
    x = jnp.zeros((batch, size, size, 3), jnp.float32)
    params = model.init(jax.random.key(0), x[:1])
    rng = {'dropout': jax.random.key(1)}

    @jax.jit
    def grad(params, x):
        return jax.grad(lambda p: model.apply(p, x, train=True, rngs=rng).sum())(params)
    jax.block_until_ready(grad(params, x))
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(grad(params, x))
    rate = batch * steps / (time.perf_counter() - start)
    print(f'model forward+backward on {jax.devices()[0].platform} ({size}px, batch {batch}): '
          f'{rate:.1f} images/s')


def main(argv):
    del argv
    from absl import flags
    if not flags.FLAGS.bench:
        sys.exit('Nothing to do: pass --bench (and optionally --config=configs/alexnet.py:...).')
    bench(flags.FLAGS.config, seconds=flags.FLAGS.bench_seconds)
    if flags.FLAGS.bench_model:
        bench_model(flags.FLAGS.config)


if __name__ == '__main__':
    from absl import app, flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file('config', 'configs/alexnet.py', 'Config (data section used).')
    flags.DEFINE_bool('bench', False, 'Measure the train and eval pipelines on temp JPEGs.')
    flags.DEFINE_float('bench_seconds', 20.0, 'Seconds to time the train pipeline.')
    flags.DEFINE_bool('bench_model', True, 'Also time the net\'s forward+backward pass.')
    app.run(main)
