"""Everything pmap-specific lives here: replicate, unreplicate, device batches, device prefetch.

The rest of the code calls these and `jax.pmap(..., axis_name=AXIS)`; moving to `jax.jit` with
`NamedSharding` means changing this module (and the two pmap calls), nothing else.
"""

import os

import jax
from flax import jax_utils
import numpy as np

AXIS = 'batch'  # The pmap axis name; gradients and batch statistics are pmean'd over it.


def replicate(tree, devices=None):
    """One copy of `tree` on every local device (or `devices`), stacked on the host: on the
    device that compiles a program per leaf shape (seconds of every run's start on CPU)."""
    return jax_utils.replicate(jax.tree.map(_on_host, tree), devices, axis_name=AXIS)


def unreplicate(tree):
    """Device 0's copy of a replicated tree, indexed on the host (on the device that would
    compile a program per leaf shape; flax's get_metrics squeezes on the device)."""
    def first(x):
        if not isinstance(x, jax.Array):
            return np.asarray(x)[0]
        shard = x.addressable_shards[0].data  # One replica: shape [1, ...], or the whole array.
        one = _on_host(shard)
        return one[0] if shard.shape == x.shape else one.reshape(x.shape[1:])
    return jax.tree.map(first, tree)


def _on_host(x):
    """A jax.Array as numpy; PRNG key arrays (no numpy form) and non-arrays unchanged."""
    if isinstance(x, jax.Array) and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(x)
    return x


def per_device_batch_size(global_batch_size: int, process_count: int | None = None,
                          local_devices: int | None = None) -> int:
    """The per-device batch for a global batch, or a clear error if it does not divide."""
    process_count = jax.process_count() if process_count is None else process_count
    local_devices = jax.local_device_count() if local_devices is None else local_devices
    devices = process_count * local_devices
    if global_batch_size % devices:
        raise ValueError(
            f'config.train.batch_size={global_batch_size} does not divide by the '
            f'{devices} devices ({process_count} host(s) x {local_devices} local device(s)); '
            f'use a multiple of {devices}, e.g. {max(devices, global_batch_size // devices * devices)}.')
    return global_batch_size // devices


def prefetch_to_device(iterator, size: int = 2):
    """Keeps `size` device batches in flight, so the accelerator never waits for the host."""
    return jax_utils.prefetch_to_device(iterator, size, axis_name=AXIS)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """`jax.distributed.initialize` for multi-process runs (explicit flags, or a TPU pod,
    SLURM or Open MPI job with several tasks); a no-op for one process. CPUs talk over gloo."""
    env = os.environ
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    cluster = (int(env.get('SLURM_NTASKS', '1')) > 1 or ',' in env.get('TPU_WORKER_HOSTNAMES', '')
               or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1)
    if not (explicit or cluster):
        return
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    if explicit:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    else:
        jax.distributed.initialize()
