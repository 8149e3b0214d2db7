"""The device side of the input boundary: a uint8 batch -> the model's float input.

Batches cross from host to device as uint8 (4x fewer bytes than float32, no float work on the
host). The host pipeline and on-device data produce the same batch dict and
call `normalize_batch` inside the jitted step: one place where pixels become model inputs.
"""

import jax.numpy as jnp
import numpy as np

# Sub-key tags of one example's random key, the same on the host (augment.py) and the device
# (device_data.py): a crop, a flip and a lighting draw are fold_in(example key, tag).
CROP, FLIP, LIGHTING = 1, 2, 3


# The data fields that belong to a net's weights: they were trained with this input, so a
# fine-tuning run (finetune.py) and a features extraction (tools/features.py) take them from it.
PREPROCESSING = ('image_size', 'resize_size', 'mean_rgb', 'stddev_rgb')


def mean_std(d, channels: int):
    """Per-channel (mean, std) float32 of config section `d` (config.data); 1-channel data uses
    the mean of the RGB entries (a gray image)."""
    mean, std = np.asarray(d.mean_rgb, np.float32), np.asarray(d.stddev_rgb, np.float32)
    if channels == 1:
        return mean.mean(keepdims=True), std.mean(keepdims=True)
    return mean, std


def ten_crops(images, crop_size: int, mirror: bool = True):
    """The paper's 10 crops of uint8 squares [b, S, S, C] -> [b, 10, crop, crop, C]: center, the
    4 corners (top-left, top-right, bottom-left, bottom-right), then the same 5 mirrored. The
    host ships the square (S = data.resize_size) and the crops are cut here, on the device.
    mirror=False (data trained without flips, config.data.random_flip: a mirrored digit is
    another symbol): the 5 unmirrored crops alone."""
    h, w, c = images.shape[-3], images.shape[-2], crop_size
    corners = [((h - c) // 2, (w - c) // 2), (0, 0), (0, w - c), (h - c, 0), (h - c, w - c)]
    crops = [images[..., y:y + c, x:x + c, :] for y, x in corners]
    if mirror:
        crops += [jnp.flip(x, axis=-2) for x in crops]
    return jnp.stack(crops, axis=-4)


def eval_images(batch, crop_size: int, mirror: bool = True):
    """An eval batch's uint8 images as [b, crops, H, W, C] or [b, H, W, C]: squares larger than
    `crop_size` (the 10-crop eval's) are cut into the 10 crops here (`ten_crops`); others pass
    unchanged."""
    images = batch['image']
    if images.ndim == 4 and images.shape[-3] > crop_size:
        return ten_crops(images, crop_size, mirror)
    return images


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
