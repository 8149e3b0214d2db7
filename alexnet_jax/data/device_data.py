"""Small data sets on the device: read once, resized once to uint8, batches gathered in the step.

When the training split fits (`data.device_resident`: 'auto' below `data.device_max_bytes` of
uint8 pixels at the net's input size with the `small` transform, 'always', 'never'), this
host's share of it is read once (through `sources`, as the tf.data path reads it), resized to
uint8 [n, H, W, C] and placed on every local device. Each train step then builds its own batch
inside the jitted step, with no host work and no host-to-device copy:

  stream position p = step * host_batch + slot * per_device + j   (slot: this device's place
                                                                   among the host's devices)
  example          = permutation(fold_in(order_key, p // n))[p % n]   (reshuffled every epoch)
  crop offset, flip ~ fold_in(augment_key, p)                       (one key per example)

so the batch and its augmentation are a pure function of (seed, process, step): a resumed run
gets the uninterrupted run's batches, and seed k of a vectorised run gets standalone seed k's.
The stream has the tf.data path's semantics (each host its own even split, each device its
slice of the host batch, epochs reshuffled, batches spanning epoch ends) but not its
bit-identical order. The augmentation is `augment.small_train`'s on the same uint8 pixels, so
both give the same pixels for the same draws. Evaluation stays on tf.data (once per epoch, not
worth a second copy on the device).
"""

import dataclasses

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import parallel
from alexnet_jax.data import preprocess

ORDER, AUGMENT = 1, 2        # Sub-key tags of a run's data key.
CROP, FLIP = preprocess.CROP, preprocess.FLIP  # Of one example's key (as on the host).


@dataclasses.dataclass(frozen=True)
class Spec:
    """The static facts the step needs (hashable: part of the compiled step)."""
    num_examples: int   # This host's examples (n).
    host_batch: int
    per_device: int
    pad: int
    flip: bool


def train_bytes(config, info) -> int:
    """uint8 bytes of this host's training split at the net's input size (one device's copy)."""
    n = info.num_examples[config.data.train_split] // jax.process_count()
    return n * int(np.prod(info.image_shape))


def enabled(config, info) -> bool:
    """Whether the training split lives on the device (validation checks 'always' is possible)."""
    d = config.data
    mode = d.get('device_resident', 'never')
    return mode == 'always' or (mode == 'auto' and d.train_augment == 'small'
                                and train_bytes(config, info) <= d.device_max_bytes)


def make_spec(config, num_examples: int, local_devices: int | None = None,
              process_count: int | None = None) -> Spec:
    """The step's Spec for a training split of `num_examples` (all hosts)."""
    local_devices = jax.local_device_count() if local_devices is None else local_devices
    process_count = jax.process_count() if process_count is None else process_count
    d = config.data
    per_device = parallel.per_device_batch_size(config.train.batch_size, process_count,
                                                local_devices)
    n = num_examples // process_count  # Each host's even share (sources.host_range).
    host_batch = per_device * local_devices
    if host_batch > n:
        raise ValueError(f'config.train.batch_size={config.train.batch_size} needs more than the '
                         f'{n} training examples of a host; lower it.')
    return Spec(num_examples=n, host_batch=host_batch, per_device=per_device, pad=int(d.pad),
                flip=bool(d.random_flip))


_loaded = {}  # The last data set this process read: a sweep worker's runs share it (seed_workers.py).


def load(config, process_index: int | None = None, process_count: int | None = None) -> dict:
    """This host's training split, resized once: {'image': uint8 [n, H, W, C], 'label': int32 [n]}
    (read-only arrays; a process's next run with the same data section reuses them)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    key = (config.data.to_json_best_effort(sort_keys=True), process_index, process_count)
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = _read(config.data, process_index, process_count)
        for array in _loaded[key].values():
            array.flags.writeable = False
    return _loaded[key]


def _read(d, process_index: int, process_count: int) -> dict:
    # TensorFlow only here, where the data are read: the step's side imports without it.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from alexnet_jax.data import augment  # pylint: disable=import-outside-toplevel
    from alexnet_jax.data import sources  # pylint: disable=import-outside-toplevel
    src = sources.get_source(d)
    raw, n = src.read(d.train_split, process_index, process_count, drop_remainder=True)

    @tf.autograph.experimental.do_not_convert  # (Why: alexnet_jax/data/__init__.py.)
    def resize(ex):  # The `small` transform's resize (uint8).
        return {'image': augment.small_eval(ex['image'], size=d.image_size, channels=src.channels),
                'label': tf.cast(ex['label'], tf.int32)}
    ds = raw.map(resize, num_parallel_calls=tf.data.AUTOTUNE).batch(max(n, 1))
    return next(ds.as_numpy_iterator())


def place(data: dict, devices=None) -> dict:
    """The data set on every local device, plus each device's `slot` (its place among them)."""
    devices = jax.local_devices() if devices is None else devices
    out = parallel.replicate(data, devices)
    slots = np.arange(len(devices), dtype=np.int32)  # One per device, placed as pmap places.
    out['slot'] = jax.pmap(lambda x: x, devices=devices)(slots)
    return out


def data_key(seed: int, process_index: int | None = None):
    """The key of a run's data order and augmentation (independent of params and dropout)."""
    process_index = jax.process_index() if process_index is None else process_index
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0x0DA7A), process_index)


def positions(step, slot, spec: Spec):
    """Stream positions of this device's examples for 0-based step `step`: int32 [per_device]."""
    start = step * spec.host_batch + slot * spec.per_device
    return start + jnp.arange(spec.per_device, dtype=jnp.int32)


def example_indices(key, pos, spec: Spec):
    """Rows of the data set at stream positions `pos` (consecutive: at most 2 epochs)."""
    n = spec.num_examples
    epoch, offset = pos // n, pos % n
    first = epoch[0]
    order = jax.random.fold_in(key, ORDER)
    perm0 = jax.random.permutation(jax.random.fold_in(order, first), n)
    perm1 = jax.random.permutation(jax.random.fold_in(order, first + 1), n)
    return jnp.where(epoch == first, perm0[offset], perm1[offset])


def draws(key, pos, pad: int):
    """Per example: crop offsets [b, 2] (dy, dx) uniform in {0..2 pad}, flips [b] with p = 1/2."""
    keys = jax.vmap(lambda p: jax.random.fold_in(jax.random.fold_in(key, AUGMENT), p))(pos)
    offsets = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, CROP), (2,), 0,
                                                    2 * pad + 1))(keys)
    flips = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, FLIP)) < 0.5)(keys)
    return offsets, flips


def pad_crop_flip(images, offsets, flips, pad: int, flip: bool):
    """uint8 [b, H, W, C]: zero-pad by `pad`, crop H x W at offsets [b, 2], mirror where flips."""
    if pad:
        h, w, c = images.shape[1:]
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        images = jax.vmap(lambda x, o: lax.dynamic_slice(x, (o[0], o[1], 0), (h, w, c)))(
            padded, offsets)
    if flip:
        images = jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)
    return images


def train_batch(data: dict, key, step, spec: Spec) -> dict:
    """This device's uint8 batch of 0-based step `step` (called inside the pmapped step)."""
    pos = positions(step, data['slot'], spec)
    rows = example_indices(key, pos, spec)
    offsets, flips = draws(key, pos, spec.pad)
    images = pad_crop_flip(data['image'][rows], offsets, flips, spec.pad, spec.flip)
    return {'image': images, 'label': data['label'][rows]}
