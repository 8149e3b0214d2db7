"""The device side of the input boundary: a uint8 batch -> the model's float input.

Batches cross from host to device as uint8 (4x fewer bytes than float32, no float work on the
host; DESIGN.md Sec. 8). Inside the jitted step, `normalize_batch` adds the per-image PCA
lighting offset (when the batch carries one) and normalises per channel. The host pipeline
(input_pipeline.py) and on-device data both produce the same batch dict and call this one
function, so there is one place where pixels become model inputs.
"""

import jax.numpy as jnp
import numpy as np


def mean_std(d, channels: int):
    """Per-channel (mean, std) float32 of config section `d` (config.data); 1-channel data uses
    the mean of the RGB entries (a gray image)."""
    mean, std = np.asarray(d.mean_rgb, np.float32), np.asarray(d.stddev_rgb, np.float32)
    if channels == 1:
        return mean.mean(keepdims=True), std.mean(keepdims=True)
    return mean, std


def normalize_batch(batch, mean, std, dtype=jnp.float32):
    """(batch['image'] (+ batch['lighting']) - mean) / std, cast to `dtype`.

    image: uint8 [..., H, W, C] (train [b, H, W, C], eval [b, H, W, C] or [b, crops, H, W, C]);
    lighting (optional): float32 [b, C], one RGB offset per image, broadcast over its pixels.
    """
    x = jnp.asarray(batch['image']).astype(jnp.float32)
    if 'lighting' in batch:
        lighting = jnp.asarray(batch['lighting'], jnp.float32)
        x = x + lighting.reshape(lighting.shape[:-1] + (1,) * (x.ndim - lighting.ndim)
                                 + lighting.shape[-1:])
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)
