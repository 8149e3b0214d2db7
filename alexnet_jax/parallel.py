"""Everything pmap-specific lives here: replicate, unreplicate, device batches, device prefetch.

The rest of the code calls these and `jax.pmap(..., axis_name=AXIS)`; moving to `jax.jit` with
`NamedSharding` means changing this module (and the two pmap calls), nothing else.
"""

import jax
from flax import jax_utils

AXIS = 'batch'  # The pmap axis name; gradients and batch statistics are pmean'd over it.


def local_device_count() -> int:
    return jax.local_device_count()


def replicate(tree):
    """Puts one copy of `tree` on every local device (leading axis = local devices)."""
    return jax_utils.replicate(tree)


def unreplicate(tree):
    """Takes device 0's copy of a replicated tree (e.g. before saving a checkpoint)."""
    return jax.device_get(jax_utils.unreplicate(tree))


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


def shard(batch, local_devices: int | None = None):
    """Reshapes a host batch [n, ...] to [local_devices, n // local_devices, ...]."""
    local_devices = jax.local_device_count() if local_devices is None else local_devices

    def _reshape(x):
        if x.shape[0] % local_devices:
            raise ValueError(f'A host batch of {x.shape[0]} does not split over '
                             f'{local_devices} local devices.')
        return x.reshape((local_devices, x.shape[0] // local_devices) + x.shape[1:])
    return jax.tree.map(_reshape, batch)


def prefetch_to_device(iterator, size: int = 2):
    """Keeps `size` device batches in flight, so the accelerator never waits for the host."""
    return jax_utils.prefetch_to_device(iterator, size)
