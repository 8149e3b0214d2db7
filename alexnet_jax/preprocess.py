"""The device side of the input boundary: uint8 batches -> the model's float input.

Minimal version from the issue-14 branch (the issue-15 helper owns this module; the shared
design in notes/common.md specifies it): x = image.astype(float32) (+ lighting); (x - mean) / std;
cast to the model dtype.
"""

import jax.numpy as jnp


def normalize_batch(batch, mean, std, dtype):
    x = batch['image'].astype(jnp.float32)
    if 'lighting' in batch:
        x = x + batch['lighting'][..., None, None, :]
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)
