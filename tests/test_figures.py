"""Figures: Fig. 3 kernel mosaics (normalisation, groups side by side, grey kernels), Fig. 4
nearest neighbours against a brute-force search, PNGs written."""

import matplotlib.image
import numpy as np
import pytest

from alexnet_jax.tools import figures


def test_kernels_are_min_max_normalised_each():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(5, 5, 3, 4)) * np.array([1, 10, 100, 0.01])
    k = figures.normalise_kernels(kernel)
    assert k.shape == (4, 5, 5, 3)
    np.testing.assert_allclose(k.min(axis=(1, 2, 3)), 0)
    np.testing.assert_allclose(k.max(axis=(1, 2, 3)), 1)
    i = 2
    want = (kernel[..., i] - kernel[..., i].min()) / np.ptp(kernel[..., i])
    np.testing.assert_allclose(k[i], want)


@pytest.mark.parametrize('groups', [1, 2])
def test_groups_become_panels_with_their_own_kernels(groups):
    kernel = np.random.default_rng(1).normal(size=(3, 3, 3, 8))
    panels = figures.conv1_panels(kernel, groups=groups, cols=2)
    assert len(panels) == groups
    per = 8 // groups
    rows = -(-per // 2)
    for g, panel in enumerate(panels):
        assert panel.shape == (rows * 4 - 1, 2 * 4 - 1, 3)  # 3x3 kernels, 1-pixel gaps.
        k = g * per + per - 1   # The group's last kernel, at row rows-1, column (per-1) % 2.
        r, c = divmod(per - 1, 2)
        block = panel[r * 4:r * 4 + 3, c * 4:c * 4 + 3]
        np.testing.assert_allclose(block, figures.normalise_kernels(kernel)[k])
        assert np.all(panel[3, :] == 1.0)  # The white gap row between kernel rows.


def test_one_channel_kernels_are_grey():
    panel = figures.conv1_panels(np.random.default_rng(2).normal(size=(4, 4, 1, 6)))[0]
    np.testing.assert_array_equal(panel[..., 0], panel[..., 1])
    np.testing.assert_array_equal(panel[..., 0], panel[..., 2])


def test_plot_conv1_writes_png(tmp_path):
    path = figures.plot_conv1(np.random.default_rng(3).normal(size=(11, 11, 3, 96)),
                              tmp_path / 'f' / 'conv1.png', groups=2)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[1] > image.shape[0]  # Two panels side by side.


@pytest.mark.parametrize('exclude', [False, True])
def test_nearest_neighbours_match_brute_force(exclude):
    rng = np.random.default_rng(4)
    database = rng.normal(size=(50, 7))
    queries = database[[3, 17, 40]] + (0 if exclude else rng.normal(scale=0.5, size=(3, 7)))
    ids = np.array([3, 17, 40]) if exclude else None
    idx, dist = figures.nearest_neighbours(queries, database, k=5, exclude=ids, chunk=8)
    full = np.linalg.norm(queries[:, None] - database[None], axis=-1)
    if exclude:
        full[np.arange(3), ids] = np.inf
    want = np.argsort(full, axis=1)[:, :5]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(dist, np.take_along_axis(full, want, 1), rtol=1e-6, atol=1e-6)


def test_plot_neighbours_and_gather_images(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.normal(size=(10, 8, 8, 1))
    batches = [{'image': images[s:s + 4].reshape(2, 2, 8, 8, 1), 'mask': np.ones((2, 2), bool)}
               for s in (0, 4)]
    found = figures.gather_images(batches, [1, 6])
    np.testing.assert_array_equal(found[6], images[6])
    path = figures.plot_neighbours(images[:2], images[2:].reshape(2, 4, 8, 8, 1),
                                   tmp_path / 'nn.png', distances=np.ones((2, 4)),
                                   labels=np.zeros((2, 5), int))
    assert matplotlib.image.imread(path).shape[0] > 0
