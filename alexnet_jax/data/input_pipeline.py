"""From `config.data` to sharded numpy batches [local_devices, per_device, ...] (sources.py).

Per host: train reads `tfds.even_splits(split, process_count, drop_remainder=True)[index]`, so
hosts never share an example and all see the same number; eval reads the even split *without*
dropping, pads every host to the same number of batches and marks padding with mask=False, so
each example is counted exactly once and pmapped collectives never wait for a missing batch.

Determinism and resume, with no iterator state to save: the host's raw (still encoded) records
are shuffled once per epoch with seed (config.seed, epoch) and numbered by their position in the
infinite stream, i = epoch * n_host + position; every random augmentation of element i is
seeded by (config.seed, process_index, i); batch k is elements [k * host_batch, (k + 1) *
host_batch). Resuming at step s starts at epoch s * host_batch // n_host and skips the rest
*before* decoding (at most one epoch of raw reads: instant when cached in memory, minutes for
ImageNet on disk), and the batches are bit-identical to the uninterrupted run's. The stream
depends on (seed, process_count, batch size), not on the local device count: each device takes
its slice of the same host batch (a changed topology is logged on resume, checkpoints.py).
"""

import dataclasses
import functools
import math
from typing import Iterator

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.data import augment
from alexnet_jax.data import device_data
from alexnet_jax.data import preprocess
from alexnet_jax import parallel
from alexnet_jax import validation
from alexnet_jax.data import sources

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


@dataclasses.dataclass(frozen=True)
class Facts:
    """What a run asks of its data, built once (`facts`) and passed down, so nothing else in
    the loop opens the source or reads the data section for them."""
    info: DatasetInfo
    steps_per_epoch: int
    spec: device_data.Spec | None  # The device-resident training set's; None: tf.data batches.
    mean: np.ndarray  # Per-channel normalisation (preprocess.mean_std) of the step's input,
    # or [H, W, C]: the training split's mean image (data.mean_image).
    std: np.ndarray

    @property
    def on_device(self) -> bool:
        return self.spec is not None


def facts(config) -> Facts:
    """The Facts of config.data at config.train.batch_size on this process's devices, once the
    config's classes and batch are checked against the data (`check_data_fits`)."""
    info = get_info(config)
    check_data_fits(config, info)
    d, n = config.data, info.num_examples[config.data.train_split]
    spec = device_data.make_spec(config, n) if device_data.enabled(config, info) else None
    mean, std = preprocess.mean_std(d, info.image_shape[-1])
    if d.get('mean_image', False):
        validation.check(spec is not None and jax.process_count() == 1, 'data.mean_image',
                         'needs the training split held on the device, on one host: set '
                         'data.device_resident=always or data.mean_image=False.')
        mean = device_data.load(config)['image'].mean(axis=0, dtype=np.float64).astype(np.float32)
    return Facts(info, n // config.train.batch_size, spec, mean, std)


def check_data_fits(config, info) -> None:
    """The config's classes and batch against the data, once for all seeds."""
    d, batch = config.data, config.train.batch_size
    if info.num_classes < 2:
        logging.warning('%s has %d class: the loss is 0 from the first step and there is nothing '
                        'to learn; check the data (a folder needs one subfolder per class).',
                        d.name, info.num_classes)
    validation.check_classes(config, info.num_classes,
                             f'set --config.model.num_classes={info.num_classes}')
    n = info.num_examples[d.train_split]
    validation.check(batch <= n, 'train.batch_size',
                     f'{batch} is larger than the {n} examples of split {d.train_split!r} of '
                     f'{d.name!r}; set --config.train.batch_size to at most {n}.')


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
        raise sources.DataError(f'Split {d.train_split!r} of {d.name} has '
                                f'{src.num_examples(d.train_split)} examples, too few for '
                                f'{process_count} host(s).')
    if src.cache:
        raw = raw.cache()
    first_epoch, offset = divmod(start_step * host_batch, n)
    buffer = min(d.shuffle_buffer, n)

    @tf.autograph.experimental.do_not_convert  # (Why: alexnet_jax/data/__init__.py.)
    def epoch(e):  # This epoch's order depends only on (seed, epoch).
        return raw.shuffle(buffer, seed=e * 1_000_003 + config.seed).enumerate(start=e * n)

    ds = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(epoch).skip(offset)
    transform = _transform(d, src.channels, train=True)
    base = tf.constant([config.seed, process_index], tf.int64)

    @tf.autograph.experimental.do_not_convert
    def prepare(i, ex):
        seed = tf.random.experimental.stateless_fold_in(base, i)
        return {**transform(ex['image'], seed), 'label': tf.cast(ex['label'], tf.int32)}

    ds = ds.map(prepare, num_parallel_calls=d.num_parallel_calls)
    ds = ds.batch(host_batch, drop_remainder=True)
    return _finish(ds, local_devices)


def eval_dataset(config, split, process_index, process_count, local_devices):
    # Memoised: a cached source is read from memory on every later evaluation.
    key = sources.Hashed(config, config.to_json_best_effort(sort_keys=True))
    return _eval_dataset(key, split, process_index, process_count, local_devices)


@functools.lru_cache(maxsize=16)
def _eval_dataset(key, split, process_index, process_count, local_devices):
    config = key.value
    d = config.data
    src = sources.get_source(d)
    per_device = parallel.per_device_batch_size(config.train.eval_batch_size, process_count,
                                                local_devices)
    host_batch = per_device * local_devices
    total = src.num_examples(split)
    if total == 0:
        raise sources.DataError(f'Split {split!r} of {d.name} is empty; set '
                                f'config.data.eval_split/test_split to a split with examples.')
    raw, n = src.read(split, process_index, process_count, drop_remainder=False)
    if src.cache:
        raw = raw.cache()
    batches = math.ceil(math.ceil(total / process_count) / host_batch)  # Same on every host.
    transform = _transform(d, src.channels, train=False)
    ds = raw.map(tf.autograph.experimental.do_not_convert(
        lambda ex: {**transform(ex['image'], None), 'label': tf.cast(ex['label'], tf.int32),
                    'mask': True}), num_parallel_calls=d.num_parallel_calls)
    padding = tf.data.Dataset.from_tensors(
        tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec))
    ds = ds.concatenate(padding.repeat(batches * host_batch - n)).batch(host_batch)
    return _finish(ds, local_devices)


def _finish(ds, local_devices):
    """[host_batch, ...] -> [local_devices, per_device, ...], prefetched, deterministic."""
    @tf.autograph.experimental.do_not_convert
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
        raise sources.DataError(
            f"config.data.train_augment={d.train_augment!r} crops {d.image_size}-pixel patches "
            f'out of {d.resize_size}-pixel rescaled images, but {d.name} images are '
            f"{shape[0]}x{shape[1]}; use --config.data.train_augment=small (resize to "
            f'image_size, pad-and-crop, flip).')


def _transform(d, channels, train):
    """(encoded or uint8 image, seed) -> {'image': uint8 [H, W, C] (eval 10 crops: the square
    [S, S, C] they are cut from on the device, `preprocess.ten_crops`)} plus, for the ImageNet
    train transforms with data.pca_lighting > 0, 'lighting': the float32 [C] PCA offset that
    `preprocess.normalize_batch` adds on the device."""
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
