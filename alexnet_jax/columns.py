"""The paper's two-GPU net as real model parallelism: config.model_parallel=2.

The devices form a (data x model) `Mesh`; each pair along the model axis holds the two columns,
each device one column's kernels and neurons (conv1-conv5 by output maps, fc6-fc8 by output
units: every kernel and bias split on its last axis). A device computes its own column and
gathers the other column's maps only where the paper's GPUs talked: before conv3, fc6, fc7 and
fc8 (`column`, run under `jax.shard_map`). LRN across all maps (Caffe's, the one-device net's)
borrows the n // 2 edge maps of the neighbouring column; `model.lrn_per_column` normalises each
column alone (cuda-convnet's two-GPU net) and exchanges nothing.

Only the forward pass is per device. The loss, the gradients and the optimizer are the same
code as the data-parallel step (`train.train_step`, `evaluation.eval_step`), traced in the
global view of `jax.jit`: differentiating through the shard_map turns each gather into its
reduce-scatter, and the mean over the batch averages the gradients over the data axis only.

The state keeps the one-device `groups=2` net's pytree and shapes (checkpoints are
interchangeable); `replicate` places it on the mesh and `unreplicate` brings it back, the
counterparts of parallel.py's for the loop.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax.data import device_data
from alexnet_jax import errors
from alexnet_jax import evaluation
from alexnet_jax import models
from alexnet_jax import seeds as seeds_lib
from alexnet_jax.parallel import AXIS

MODEL = 'model'  # The mesh axis of the columns; AXIS ('batch') is the data axis.
COLUMNS = 2
GATHER_BEFORE = ('conv3', 'fc6', 'fc7', 'fc8')  # Where the paper's GPUs communicate.


def mesh(devices=None) -> jax.sharding.Mesh:
    """(data x model) over all devices; a model pair is two devices of one process."""
    devices = jax.devices() if devices is None else devices
    local = jax.local_device_count()
    errors.check(len(devices) % COLUMNS == 0 and local % COLUMNS == 0, 'model_parallel',
                 f'needs an even number of devices on every host, got {local} local device(s); '
                 'use --config.model_parallel=1.')
    return jax.sharding.Mesh(np.asarray(devices).reshape(-1, COLUMNS), (AXIS, MODEL))


def _is_column(path) -> bool:
    """Kernels and biases (and the optimizer's copies of them) split on their last axis."""
    return any(getattr(k, 'key', None) in ('kernel', 'bias') for k in path)


def _spec(path, x) -> P:
    return P(*(None,) * (np.ndim(x) - 1), MODEL) if _is_column(path) else P()


def _gather(x):
    """The other column's maps (units) beside this one's, in the one-device channel order."""
    return lax.all_gather(x, MODEL, axis=x.ndim - 1, tiled=True)


def _lrn(net: models.AlexNet, x):
    """LRN of this column's maps: alone (per column), or as part of all the maps, with the
    neighbouring columns' n // 2 edge maps as the window's halo (zeros at the net's edges)."""
    k, beta = net.lrn_k, net.lrn_beta
    if net.lrn_divisor == 'constant':
        return (x * k ** -beta).astype(x.dtype)
    lrn = functools.partial(models.local_response_norm, k=k, n=net.lrn_n, alpha=net.lrn_alpha,
                            beta=beta, convention=net.lrn_convention)
    if net.lrn_per_column:
        return lrn(x)
    h, c = net.lrn_n // 2, x.shape[-1]
    if h == 0:
        return lrn(x)
    left = lax.ppermute(x[..., -h:], MODEL, [(i, i + 1) for i in range(COLUMNS - 1)])
    right = lax.ppermute(x[..., :h], MODEL, [(i + 1, i) for i in range(COLUMNS - 1)])
    return lrn(jnp.concatenate([left, x, right], axis=-1))[..., h:h + c]


def column(net: models.AlexNet, params, images, rng):
    """One device's column of AlexNet: `params` holds this column's half of every kernel and
    bias, `images` this device's share of the batch; returns this column's half of the logits.
    rng: the step's dropout key (None: no dropout), drawn per device."""
    dtype = jnp.dtype(net.dtype)
    act = models.ACTIVATIONS[net.activation]
    if rng is not None:
        rng = jax.random.fold_in(rng, lax.axis_index(AXIS) * COLUMNS + lax.axis_index(MODEL))

    def layer(name, x, op):
        if name in GATHER_BEFORE:
            x = _gather(x)
        p = params[name]
        return op(x, p['kernel'].astype(dtype)) + p['bias'].astype(dtype)

    x = images.astype(dtype)
    for name, _, _, stride, padding, _ in models.CONV_SPECS:
        x = act(layer(name, x, functools.partial(
            lax.conv_general_dilated, window_strides=(stride, stride),
            padding=((padding, padding),) * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))))
        if net.lrn and name in ('conv1', 'conv2'):
            x = _lrn(net, x)
        if name in ('conv1', 'conv2', 'conv5'):
            x = nn.max_pool(x, (net.pool_window,) * 2, strides=(net.pool_stride,) * 2)
    dense = lambda x, kernel: x.reshape(x.shape[0], -1) @ kernel  # NHWC flatten, as AlexNet.
    for i, name in enumerate(('fc6', 'fc7')):
        x = act(layer(name, x, dense))
        if rng is not None and net.dropout_rate > 0:
            keep = jax.random.bernoulli(jax.random.fold_in(rng, i), 1 - net.dropout_rate,
                                        x.shape)
            x = jnp.where(keep, x / (1 - net.dropout_rate), 0).astype(x.dtype)
    return layer('fc8', x, dense)


def forward(net: models.AlexNet, mesh_: jax.sharding.Mesh, params, images, rng=None):
    """The whole net's logits [batch, classes] (global view) from `column` on every device."""
    specs = jax.tree_util.tree_map_with_path(_spec, params)
    seeded = rng is not None
    fn = jax.shard_map(
        lambda p, x, *r: column(net, p, x, r[0] if seeded else None), mesh=mesh_,
        in_specs=(specs, P(AXIS)) + ((P(),) if seeded else ()), out_specs=P(AXIS, MODEL))
    return fn(params, images, *((rng,) if seeded else ())).astype(jnp.float32)


class Columns:
    """The training loop's side of the mesh: `replicate`/`unreplicate` (parallel.py's, for a
    state split by columns), the step runner and the eval step, one seed at a time. Metrics
    and sums come back with a leading axis of one, as the pmapped steps' per-device axis."""

    def __init__(self, net: models.AlexNet, devices=None):
        self.net, self.mesh = net, mesh(devices)

    def apply(self, variables, images, train: bool = False, rngs=None, mutable=False):
        """The model's logits in `net.apply`'s signature, what the shared steps call."""
        logits = forward(self.net, self.mesh, variables['params'], images,
                         rngs['dropout'] if train else None)
        return (logits, {}) if mutable else logits

    def replicate(self, tree, devices=None):
        """A host tree (a state, keys, data) on the mesh: kernels, biases and their optimizer
        slots split by columns, the rest on every device."""
        del devices  # The mesh's.

        def put(path, x):
            if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(put(path, jax.random.key_data(x)),
                                                impl=jax.random.key_impl(x))
            x = np.asarray(x)
            if _is_column(path):
                errors.check(x.shape[-1] % COLUMNS == 0, 'model.width',
                             f'gives {jax.tree_util.keystr(path)} {x.shape[-1]} units, which do '
                             'not split into two columns; choose a width with even layer sizes.')
            return jax.make_array_from_callback(
                x.shape, NamedSharding(self.mesh, _spec(path, x)), lambda index: x[index])
        return jax.tree_util.tree_map_with_path(put, tree)

    @staticmethod
    def unreplicate(tree):
        """The whole tree on the host, from this process's devices (each holds a model pair)."""
        def host(x):
            if not isinstance(x, jax.Array):
                return np.asarray(x)
            out = np.empty(x.shape, x.dtype)
            for shard in x.addressable_shards:
                out[shard.index] = np.asarray(shard.data)
            return out
        return jax.tree.map(host, tree)

    def batch(self, host):
        """A host batch as input_pipeline makes it, [local devices, per device, ...], as one
        array of the global batch split over the data axis."""
        sharding = NamedSharding(self.mesh, P(AXIS))
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
            sharding, np.reshape(x, (-1,) + np.shape(x)[2:])), host)

    def _jit(self, one, trains: bool):
        """`one(state, ...)` of one seed (-> (state, metrics) if it `trains`, else sums), run
        with this net's apply and compiled for the loop's seed axis on the state (and the keys,
        if it trains); the metrics or sums get the leading axis of one too."""
        def run(state, *args):
            out = one(state.replace(apply_fn=self.apply), *args)
            return (out[0].replace(apply_fn=state.apply_fn), out[1]) if trains else out
        seeded = seeds_lib.over_seeds(run, 'single', num_seeded=2 if trains else 1)
        lead = functools.partial(jax.tree.map, lambda x: x[None])

        def step(*args):
            out = seeded(*args)
            return (out[0], lead(out[1])) if trains else lead(out)
        return jax.jit(step)

    def make_train_step(self, train_step, mean, std, gather=None):
        """(state, keys, batch) -> (state, metrics) of one seed (with the loop's seed axis),
        compiled: `train_step(state, batch, dropout_key=, mean=, std=, axis_name=None)`
        (train.train_step). gather(state, keys): the batch, from device-resident data (the
        `batch` argument is then not passed)."""
        def one(state, keys, *batch):
            batch = gather(state, keys) if gather else batch[0]
            return train_step(state, batch, dropout_key=keys['dropout'], mean=mean, std=std,
                              axis_name=None)
        return self._jit(one, trains=True)

    def step_runner(self, config, data, keys, start_step: int, train_step):
        """state -> (state, metrics) of the next step, as train.step_runner's (one seed)."""
        errors.check(len(keys['dropout']) == 1, 'seeds_mode',
                     "must be 'sequential' or 'processes' with model_parallel=2 (one seed a run).")
        keys = self.replicate(keys)
        if data.on_device:  # The whole batch of a step, as all pmap slots together gather it.
            errors.check(jax.process_count() == 1, 'data.device_resident',
                         "must be 'never' with model_parallel=2 on several hosts.")
            spec = dataclasses.replace(data.spec, per_device=data.spec.host_batch)
            resident = self.replicate(dict(device_data.load(config), slot=np.int32(0)))
            step = self.make_train_step(train_step, data.mean, data.std, gather=(
                lambda state, keys: device_data.train_batch(resident, keys['data'], state.step,
                                                            spec)))
            return lambda state: step(state, keys)
        from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
        batches = map(self.batch, input_pipeline.train_iterator(config, start_step=start_step))
        step = self.make_train_step(train_step, data.mean, data.std)
        return lambda state: step(state, keys, next(batches))

    def make_eval_step(self, mean, std, crop_size, devices=None, seeds: int = 0,
                       per_example: bool = False, **step_args):
        """evaluation.make_eval_step's counterpart (one seed); `step_args` go to eval_step."""
        del devices, seeds
        step = self._jit(lambda state, batch: evaluation.eval_step(
            state, batch, mean=mean, std=std, crop_size=crop_size, per_example=per_example,
            axis_name=None, **step_args), False)
        return lambda state, batch: step(state, self.batch(batch))
