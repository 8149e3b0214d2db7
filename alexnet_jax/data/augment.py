"""Image transforms as small pure TF functions (Sec. 4.1 of the paper, plus common options).

Every random op takes an explicit stateless `seed` (a [2] int tensor) and draws nothing else, so
the same (seed, image) gives the same output eagerly, inside `Dataset.map`, on any host and after
a resume. Deterministic cores (`crop`, `flip`, `lighting_shift`, the windows) take
their parameters explicitly, for the tests to check against numpy.

The paper's train transform (shorter side to 256, central 256x256, random 227x227 patch) is one
crop window in the *original* image's pixels (`paper_window`), decoded alone and resized to 227:
the full image is never decoded to be thrown away, a 256x256 source needs no resampling, and
crop-then-resize differs from resize-then-crop only by interpolation at the edges.

Outputs are uint8 (the input boundary: preprocess.py), rounded after resizing, so a
device-side augmentation of the same uint8 image gives the same pixels. The PCA lighting offset
(`random_lighting`, per example) and the mean are applied on the device
(`preprocess.normalize_batch`).
"""

import numpy as np
import tensorflow as tf

from alexnet_jax.data import preprocess

# PCA of ImageNet RGB pixels (0..255 scale), as published with fb.resnet.torch / Caffe: the
# eigenvalues and the eigenvectors as *columns*. Sec. 4.1: add eigvec @ (alpha * eigval).
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32) * 255.0
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]], np.float32)

# Sub-seed tags: each random op of one example folds its own constant into the example's seed.
CROP, FLIP, LIGHTING = preprocess.CROP, preprocess.FLIP, preprocess.LIGHTING


def subseed(seed, tag: int):
    """A seed for one op of one example (independent streams for crop, flip, lighting)."""
    return tf.random.experimental.stateless_fold_in(seed, tag)


# --- decoding and crop windows ------------------------------------------------------------------

def image_shape(image):
    """[height, width] (int32) of an encoded image (JPEG header only) or a decoded tensor."""
    if image.dtype != tf.string:
        return tf.shape(image)[:2]
    return tf.cond(tf.io.is_jpeg(image),
                   lambda: tf.image.extract_jpeg_shape(image)[:2],
                   lambda: tf.shape(_decode_any(image, 3))[:2])


def _decode_any(data, channels):
    return tf.io.decode_image(data, channels=channels, expand_animations=False)


def crop(image, window):
    """image[y:y+h, x:x+w] for window [y, x, h, w]."""
    return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])


def decode_and_crop(image, window, channels: int = 3):
    """Decodes (if encoded) only the pixels of `window` [y, x, h, w]; uint8 [h, w, channels].
    A JPEG's discarded blocks are skipped (`decode_and_crop_jpeg`); other formats are sliced."""
    if image.dtype != tf.string:
        return crop(image, window)
    out = tf.cond(tf.io.is_jpeg(image),
                  lambda: tf.image.decode_and_crop_jpeg(image, window, channels=channels),
                  lambda: crop(_decode_any(image, channels), window))
    return tf.ensure_shape(out, [None, None, channels])


def paper_window(shape, resize_size: int, crop_size: int, dy, dx):
    """Window [y, x, h, w] in original pixels of the paper's crop with top-left corner (dy, dx)
    in the central resize_size^2 square of the image rescaled to shorter side resize_size
    (0 <= dy, dx <= resize_size - crop_size)."""
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    side = tf.minimum(h, w)
    scale = side / resize_size  # Original pixels per rescaled pixel.
    size = tf.maximum(1.0, tf.round(crop_size * scale))
    y = tf.round((h - side) / 2 + tf.cast(dy, tf.float32) * scale)
    x = tf.round((w - side) / 2 + tf.cast(dx, tf.float32) * scale)
    y, x = tf.minimum(y, h - size), tf.minimum(x, w - size)
    return tf.cast(tf.stack([y, x, size, size]), tf.int32)


def random_paper_window(shape, seed, resize_size: int, crop_size: int):
    """The paper's random crop: offsets uniform in {0, ..., resize_size - crop_size}^2."""
    d = tf.random.stateless_uniform([2], seed, 0, resize_size - crop_size + 1, dtype=tf.int32)
    return paper_window(shape, resize_size, crop_size, d[0], d[1])


def center_window(shape, resize_size: int, crop_size: int):
    """The paper's single-crop test window: the central crop of the central square."""
    offset = (resize_size - crop_size) // 2
    return paper_window(shape, resize_size, crop_size, offset, offset)


def random_resized_window(shape, seed, area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3)):
    """Inception-style random-resized crop window [y, x, h, w] (area and aspect jitter)."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([shape, [3]], 0), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed, min_object_covered=0.1, aspect_ratio_range=aspect_range,
        area_range=area_range, max_attempts=10, use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def to_uint8(image):
    """Rounds and clips float pixels to uint8 (the dtype that crosses to the device)."""
    return tf.saturate_cast(tf.round(image), tf.uint8)


def resize(image, size: int):
    """Bilinear resize to size x size, rounded to uint8; the identity when already that size
    (every crop of a 256x256 source). No anti-aliasing: like Caffe's OpenCV INTER_LINEAR, 2.5x
    cheaper, and ImageNet crops shrink by less than 2x, where aliasing is negligible."""
    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
    out = tf.cond(same, lambda: tf.cast(image, tf.uint8),
                  lambda: to_uint8(tf.image.resize(image, [size, size])))
    return tf.ensure_shape(out, [size, size, image.shape[-1]])


# --- photometric and flips ----------------------------------------------------------------------

def flip(image, do_flip):
    """Mirror left-right when `do_flip` (a scalar bool tensor)."""
    return tf.cond(do_flip, lambda: tf.reverse(image, [-2]), lambda: image)


def random_flip(image, seed):
    return flip(image, tf.random.stateless_uniform([], seed) < 0.5)


def lighting_shift(alpha, eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC):
    """The RGB offset eigvec @ (alpha * eigval) that PCA lighting adds to every pixel [3]."""
    return tf.linalg.matvec(tf.constant(eigvec), tf.cast(alpha, tf.float32) * eigval)


def random_lighting(seed, stddev: float):
    """Example `seed`'s PCA-lighting RGB offset [3], alpha ~ N(0, stddev) (paper: 0.1); added
    on the device by `preprocess.normalize_batch`."""
    alpha = tf.random.stateless_normal([3], subseed(seed, LIGHTING), stddev=stddev)
    return lighting_shift(alpha)


# --- small images (digits, CIFAR) ---------------------------------------------------------------

def pad_and_crop(image, pad: int, dy, dx):
    """Zero-pads by `pad` on every side and takes the original-size window at (dy, dx)."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.ensure_shape(padded[dy:dy + h, dx:dx + w], image.shape)


def random_pad_and_crop(image, seed, pad: int):
    d = tf.random.stateless_uniform([2], seed, 0, 2 * pad + 1, dtype=tf.int32)
    return pad_and_crop(image, pad, d[0], d[1])


# --- whole transforms, as the pipeline uses them ------------------------------------------------

def paper_train(image, seed, *, resize_size=256, crop_size=227, mirror=True, channels=3):
    """Sec. 4.1: random crop of the central square, mirror; uint8 (lighting: `random_lighting`)."""
    window = random_paper_window(image_shape(image), subseed(seed, CROP), resize_size, crop_size)
    return _mirror(resize(decode_and_crop(image, window, channels), crop_size), seed, mirror)


def inception_train(image, seed, *, crop_size=227, area_range=(0.08, 1.0),
                    aspect_range=(3 / 4, 4 / 3), mirror=True, channels=3):
    """Random-resized crop (area/aspect jitter) + mirror; uint8 (lighting: `random_lighting`)."""
    window = random_resized_window(image_shape(image), subseed(seed, CROP), area_range,
                                   aspect_range)
    return _mirror(resize(decode_and_crop(image, window, channels), crop_size), seed, mirror)


def _mirror(image, seed, mirror):
    return random_flip(image, subseed(seed, FLIP)) if mirror else image


def small_train(image, seed, *, size, pad=4, mirror=True, channels=3):
    """Small images: resize to the net's input (uint8), zero-pad + random crop, optional mirror."""
    out = resize(_decoded(image, channels), size)
    if pad:
        out = random_pad_and_crop(out, subseed(seed, CROP), pad)
    return _mirror(out, seed, mirror)


def paper_eval(image, *, resize_size=256, crop_size=227, crops='center', channels=3):
    """Center crop of the central square [crop, crop, C], or for the 10 crops the square itself
    [resize, resize, C], from which `preprocess.ten_crops` cuts them on the device (7.7x fewer
    bytes than the crops); uint8. Only the pixels of the crop (or the square) are decoded."""
    size = crop_size if crops == 'center' else resize_size
    window = center_window(image_shape(image), resize_size, size)
    return resize(decode_and_crop(image, window, channels), size)


def small_eval(image, *, size, pad=4, crops='center', channels=3):
    """Small images: resized to the net's input (uint8); for the 10 crops, the zero-padded
    image, which `preprocess.ten_crops` cuts on the device."""
    out = resize(_decoded(image, channels), size)
    if crops == 'center':
        return out
    return tf.pad(out, [[pad, pad], [pad, pad], [0, 0]])


def _decoded(image, channels):
    if image.dtype == tf.string:
        return tf.ensure_shape(_decode_any(image, channels), [None, None, channels])
    return image
