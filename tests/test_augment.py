"""Augmentation ops against independent numpy computations, eagerly and inside Dataset.map."""

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax.data import augment

MODES = ('eager', 'dataset')


def run(mode, fn, *args):
    """fn(*args) eagerly, or as the map function of a one-element tf.data pipeline."""
    if mode == 'eager':
        return tf.nest.map_structure(np.asarray, fn(*args))
    ds = tf.data.Dataset.from_tensors(tuple(tf.convert_to_tensor(a) for a in args)).map(fn)
    return next(ds.as_numpy_iterator())


def run_seeds(mode, fn, arg, seeds):
    """[fn(arg, seed) for seed in seeds], in one pipeline in dataset mode (fast)."""
    if mode == 'eager':
        return np.stack([np.asarray(fn(tf.convert_to_tensor(arg), s)) for s in seeds])
    ds = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(
        lambda s: fn(tf.convert_to_tensor(arg), s))
    return np.stack(list(ds.as_numpy_iterator()))


def image(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def seed(i):
    return tf.constant([i, 7], tf.int64)


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('dy,dx', [(0, 0), (29, 29), (0, 29), (13, 5)])
def test_paper_crop_of_256_image_is_a_plain_slice(mode, dy, dx):
    img = image(256, 256)
    out = run(mode, lambda x: augment.decode_and_crop(
        x, augment.paper_window(tf.shape(x)[:2], 256, 227, dy, dx)), img)
    np.testing.assert_array_equal(out, img[dy:dy + 227, dx:dx + 227])


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('h,w', [(300, 400), (512, 341), (256, 256), (100, 80)])
def test_center_window_is_centered_on_the_shorter_side_square(mode, h, w):
    y, x, ch, cw = run(mode, lambda s: augment.center_window(s, 256, 227), np.array([h, w]))
    side = min(h, w)
    assert ch == cw == round(227 * side / 256)
    assert abs((y + ch / 2) - h / 2) <= 1 and abs((x + cw / 2) - w / 2) <= 1


@pytest.mark.parametrize('mode', MODES)
def test_png_bytes_crop_equals_slice(mode):
    img = image(40, 50)
    png = tf.io.encode_png(img)
    out = run(mode, lambda b: augment.decode_and_crop(b, tf.constant([3, 7, 20, 30])), png)
    np.testing.assert_array_equal(out, img[3:23, 7:37])


@pytest.mark.parametrize('mode', MODES)
def test_jpeg_decode_and_crop_matches_full_decode(mode):
    smooth = tf.image.resize(image(8, 8).astype(np.float32)[None], [256, 256])[0]
    jpeg = tf.io.encode_jpeg(tf.cast(smooth, tf.uint8), quality=95)
    full = tf.io.decode_jpeg(jpeg).numpy().astype(int)
    out = run(mode, lambda b: augment.decode_and_crop(b, tf.constant([13, 21, 227, 227])), jpeg)
    diff = np.abs(out.astype(int) - full[13:240, 21:248])
    assert out.shape == (227, 227, 3) and diff.mean() < 1.0 and diff.max() <= 8


@pytest.mark.parametrize('mode', MODES)
def test_random_paper_crops_cover_the_offset_range(mode):
    shape = np.array([256, 256])
    windows = run_seeds(mode, lambda s, sd: augment.random_paper_window(s, sd, 256, 227), shape,
                        [seed(i) for i in range(150)])
    assert (windows[:, 2:] == 227).all()
    offsets = windows[:, :2]
    assert offsets.min() == 0 and offsets.max() == 29  # Both ends of {0..29} are reached.
    assert len({tuple(o) for o in offsets}) > 100       # And the draws differ.


@pytest.mark.parametrize('mode', MODES)
def test_paper_train_output_is_a_flipped_or_plain_crop(mode):
    """Pixels carry their own coordinates (R = row, G = column), so the output names its crop."""
    rows, cols = np.meshgrid(np.arange(256), np.arange(256), indexing='ij')
    img = np.stack([rows, cols, image(256, 256, 1)[..., 0]], -1).astype(np.uint8)
    outs = run_seeds(mode, lambda x, sd: augment.paper_train(x, sd), img,
                     [seed(i) for i in range(8)])
    assert outs.shape == (8, 227, 227, 3) and outs.dtype == np.uint8  # Crosses to the device.
    flips = set()
    for out in outs:
        dy, left, right = int(out[0, 0, 0]), int(out[0, 0, 1]), int(out[0, -1, 1])
        flipped = left > right
        dx = right if flipped else left
        assert 0 <= dy <= 29 and 0 <= dx <= 29
        crop = img[dy:dy + 227, dx:dx + 227]
        np.testing.assert_array_equal(out, crop[:, ::-1] if flipped else crop)
        flips.add(flipped)
    assert flips == {False, True}


@pytest.mark.parametrize('mode', MODES)
def test_flip(mode):
    img = image(5, 7)
    np.testing.assert_array_equal(run(mode, lambda x: augment.flip(x, tf.constant(True)), img),
                                  np.fliplr(img))
    np.testing.assert_array_equal(run(mode, lambda x: augment.flip(x, tf.constant(False)), img),
                                  img)


@pytest.mark.parametrize('mode', MODES)
def test_pca_lighting_with_fixed_alpha(mode):
    img = image(4, 5)
    alpha = np.array([0.3, -1.2, 0.05], np.float32)
    # The paper: add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T to each RGB pixel; p_i are eigenvector
    # columns. ImageNet's PCA (0..1 scale eigenvalues), transcribed independently here.
    eigval = np.array([0.2175, 0.0188, 0.0045]) * 255
    p = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                  [-0.5836, -0.6948, 0.4203]])
    shift = [sum(p[c, i] * alpha[i] * eigval[i] for i in range(3)) for c in range(3)]
    out = img + run(mode, augment.lighting_shift, alpha)
    np.testing.assert_allclose(out, img + np.array(shift), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('mode', MODES)
def test_lighting_shift_is_what_the_device_adds_to_every_pixel(mode):
    from alexnet_jax.data import preprocess  # pylint: disable=import-outside-toplevel
    alpha = np.array([0.3, -1.2, 0.05], np.float32)
    shift = run(mode, augment.lighting_shift, alpha)
    img = image(2, 3)
    out = preprocess.normalize_batch({'image': img[None], 'lighting': shift[None]}, 0.0, 1.0)
    np.testing.assert_allclose(np.asarray(out)[0], img + shift, rtol=1e-6)


def test_random_lighting_draws_alpha_with_the_configured_stddev():
    shifts = np.stack([augment.random_lighting(seed(i), 0.1) for i in range(400)])
    alphas = np.linalg.solve(augment.IMAGENET_EIGVEC, shifts.T).T / augment.IMAGENET_EIGVAL
    assert np.all(np.abs(alphas.std(0) - 0.1) < 0.015) and np.all(np.abs(alphas.mean(0)) < 0.02)


@pytest.mark.parametrize('size,crop,mirror', [(256, 227, True), (11, 7, True), (9, 9, True),
                                              (11, 7, False)])
def test_ten_crops_geometry(size, crop, mirror):
    from alexnet_jax.data import preprocess  # pylint: disable=import-outside-toplevel
    img = image(size, size, 2)
    out = np.asarray(preprocess.ten_crops(img[None], crop, mirror))[0]
    m, e = (size - crop) // 2, size - crop
    expected = [img[m:m + crop, m:m + crop], img[:crop, :crop], img[:crop, e:],
                img[e:, :crop], img[e:, e:]]
    expected += [x[:, ::-1] for x in expected] if mirror else []
    np.testing.assert_array_equal(out, np.stack(expected))


@pytest.mark.parametrize('mode', MODES)
def test_paper_eval_ten_crops_of_a_256_image(mode):
    """The host ships the square; the device cuts the crops (preprocess.ten_crops)."""
    from alexnet_jax.data import preprocess  # pylint: disable=import-outside-toplevel
    img = image(256, 256)
    square = run(mode, lambda x: augment.paper_eval(x, crops='ten'), img)
    np.testing.assert_array_equal(square, img)
    out = np.asarray(preprocess.ten_crops(square[None], 227))[0]
    assert out.shape == (10, 227, 227, 3)
    np.testing.assert_array_equal(out[0], img[14:241, 14:241])
    np.testing.assert_array_equal(out[9], img[29:, 29:, :][:, ::-1])


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('dy,dx', [(0, 0), (8, 8), (3, 6)])
def test_pad_and_crop(mode, dy, dx):
    img = image(6, 6, 1)
    out = run(mode, lambda x: augment.pad_and_crop(x, 4, dy, dx), img)
    np.testing.assert_array_equal(out, np.pad(img, [(4, 4), (4, 4), (0, 0)])[dy:dy + 6,
                                                                             dx:dx + 6])


@pytest.mark.parametrize('mode', MODES)
def test_small_train_is_seeded_and_sized(mode):
    img = image(8, 8, 1)
    fn = lambda x, sd: augment.small_train(x, sd, size=67, pad=4, channels=1)  # noqa: E731
    a, b, c = (run(mode, fn, img, seed(i)) for i in (1, 1, 2))
    assert a.shape == (67, 67, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize('mode', MODES)
def test_random_resized_window_respects_area_and_bounds(mode):
    windows = run_seeds(mode, lambda s, sd: augment.random_resized_window(
        s, sd, (0.25, 0.5), (0.75, 4 / 3)), np.array([200, 300]), [seed(i) for i in range(20)])
    for y, x, h, w in windows:
        assert 0 <= y and y + h <= 200 and 0 <= x and x + w <= 300
        assert 0.2 <= h * w / (200 * 300) <= 0.55


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('h,w,size', [(4, 4, 9), (9, 7, 5), (6, 6, 6)])
def test_resize_rounds_bilinear_to_uint8(mode, h, w, size):
    """Half-pixel-centre bilinear (numpy transcription), rounded and clipped to uint8."""
    img = image(h, w)
    out = run(mode, lambda x: augment.resize(x, size), img)

    def axis(n_in):  # Source coordinate of each output pixel's centre, clamped.
        t = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(t).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), t - lo
    (y0, y1, fy), (x0, x1, fx) = axis(h), axis(w)
    f = img.astype(np.float64)
    top = f[y0][:, x0] * (1 - fx[None, :, None]) + f[y0][:, x1] * fx[None, :, None]
    bottom = f[y1][:, x0] * (1 - fx[None, :, None]) + f[y1][:, x1] * fx[None, :, None]
    expected = top * (1 - fy[:, None, None]) + bottom * fy[:, None, None]
    assert out.dtype == np.uint8 and out.shape == (size, size, 3)
    assert np.abs(out.astype(int) - np.round(expected)).max() <= 1  # Float32 vs 64 at .5 ties.
    if (h, w) == (size, size):
        np.testing.assert_array_equal(out, img)  # Already that size: untouched.


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('crops', ['center', 'ten'])
def test_paper_eval_of_a_large_image_is_uint8_of_the_rescaled_square(mode, crops):
    """A 512x600 image: the central 512x512 square halved to 256, then the crops."""
    img = image(512, 600)
    out = run(mode, lambda x: augment.paper_eval(x, crops=crops), tf.io.encode_png(img))
    square = img[:, 44:556].astype(np.float64)
    halved = square.reshape(256, 2, 256, 2, 3).mean((1, 3))  # Bilinear at exactly 1/2.
    assert out.dtype == np.uint8
    first = out if crops == 'center' else out[14:241, 14:241]  # 'ten': the whole square.
    assert out.shape == ((227, 227, 3) if crops == 'center' else (256, 256, 3))
    assert np.abs(first.astype(float) - np.round(halved[14:241, 14:241])).max() <= 1
