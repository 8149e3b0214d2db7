"""The embedded `digits` TFDS set: built offline, complete, disjoint, and faithful to sklearn."""

import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import datasets as sk_datasets

from alexnet_jax.data import digits  # noqa: F401  (registers 'digits')


@pytest.fixture(scope='module')
def splits(digits_dir):
    builder = tfds.builder('digits', data_dir=digits_dir)
    return {name: list(tfds.as_numpy(builder.as_dataset(name))) for name in builder.info.splits}


def test_has_every_sklearn_example_once(splits):
    indices = [ex['index'] for examples in splits.values() for ex in examples]
    assert len(indices) == 1797
    assert sorted(indices) == list(range(1797))


def test_splits_are_disjoint_and_named(splits):
    assert set(splits) == {'train', 'validation', 'test'}
    sets = {name: {ex['index'] for ex in examples} for name, examples in splits.items()}
    assert not sets['train'] & sets['validation']
    assert not sets['train'] & sets['test']
    assert not sets['validation'] & sets['test']


def test_labels_and_pixels_match_sklearn(splits):
    sk = sk_datasets.load_digits()
    for examples in splits.values():
        for ex in examples:
            assert ex['label'] == sk.target[ex['index']]
            expected = np.rint(sk.images[ex['index']] / 16 * 255).astype(np.uint8)
            np.testing.assert_array_equal(ex['image'][..., 0], expected)
            assert ex['image'].shape == (8, 8, 1)


def test_split_is_stratified(splits):
    """Each class keeps (within one example) its overall share in every split."""
    target = sk_datasets.load_digits().target
    overall = collections.Counter(target.tolist())
    for examples in splits.values():
        counts = collections.Counter(int(ex['label']) for ex in examples)
        for label, total in overall.items():
            assert abs(counts[label] - total * len(examples) / len(target)) <= 1.0


def test_rebuild_is_identical(tmp_path, splits, capfd):
    """The split is seeded: building again elsewhere gives the same partition."""
    builder = tfds.builder('digits', data_dir=str(tmp_path))
    builder.download_and_prepare()
    # Nothing is downloaded: TFDS's "Downloading and preparing dataset Unknown size" is not shown.
    assert 'Download' not in capfd.readouterr().out
    again = {ex['index'] for ex in tfds.as_numpy(builder.as_dataset('test'))}
    assert again == {ex['index'] for ex in splits['test']}
