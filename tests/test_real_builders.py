"""The main command's own data sets, imagenet2012, cifar10 and imagenette, through their real
TFDS builders under `tfds.testing.mock_data` (random examples; the split sizes and features of
the checked-in metadata, tests/data/tfds_metadata): the default config (227 px, the paper's
10-crop evaluation on `validation`), `:imagenette` (the same on real photos), `:cifar10` and
`:fig1_cifar10` and the TPU-pod recipe `:lars4k` (at a tiny batch) each train a few steps,
evaluate, and resume; `:gpu` trains on the 256x256 copy prepared from imagenet2012."""

import logging
import pathlib

import pytest
import tensorflow_datasets as tfds

import launch
from alexnet_jax import validation
from configs import alexnet

METADATA = pathlib.Path(__file__).resolve().parent / 'data' / 'tfds_metadata'


class _NoMockFs:
    """`tfds.testing.mock_data` swaps in a mock file system for every thread while it opens a
    data set (only so that its data_dir exists; ours does): an orbax thread cleaning the
    checkpoint directory's temporary paths then lists a directory that is not there (seen in
    CI). Here the file system stays the real one."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_file(self, *args, **kwargs):
        del args, kwargs


@pytest.fixture(autouse=True)
def _real_file_system(monkeypatch):
    from tensorflow_datasets.testing import test_utils  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr(test_utils, 'MockFs', _NoMockFs)


def tiny(variant):
    c = alexnet.get_config(variant)
    c.data.data_dir = str(METADATA)
    if c.model.architecture != 'fig1':
        c.model.width = 0.05
    c.train.update(batch_size=4, eval_batch_size=4, num_steps=3, log_every_steps=1,
                   eval_every_steps=0, checkpoint_every_steps=3, plot=False)
    return c


@pytest.mark.slow  # Two short runs of a real-size input pipeline each (~30 s busy).
@pytest.mark.parametrize('variant,split,examples', [
    (None, 'validation', 8), ('cifar10', 'test', 8), ('fig1_cifar10', 'test', 8),
    # The eval pipeline pads the split's real size (3,925) to whole batches of 4 (3 more); the
    # mock's 9 examples then fill them too.
    ('imagenette', 'validation', 9), ('lars4k', 'validation', 8)])
def test_the_main_configs_train_evaluate_and_resume_on_their_builders(tmp_path, caplog, variant,
                                                                      split, examples):
    config = tiny(variant)
    if variant is None:
        assert (config.data.name, config.data.image_size) == ('imagenet2012', 227)
        config.data.eval_crops = 'ten'  # The paper's test.
    if variant == 'imagenette':  # ImageNet's preprocessing and test, on its own photos.
        assert (config.data.image_size, config.data.resize_size, config.data.eval_crops,
                config.data.train_augment) == (227, 256, 'ten', 'paper')
    validation.validate_config(config)
    with tfds.testing.mock_data(num_examples=examples, data_dir=str(METADATA)):
        first = launch.run(config, str(tmp_path))
        assert first['steps'] == 3 and first['test_split'] == split
        assert len(first['test_correct']) == examples  # Every example, padding dropped.
        config.train.num_steps = 5
        with caplog.at_level(logging.INFO, logger='absl'):
            again = launch.run(config, str(tmp_path))
    assert 'Resumed from step 3' in caplog.text
    assert again['steps'] == 5 and 0 <= again['test_top1'] <= again['test_top5'] <= 1


def test_the_metadata_has_the_real_split_sizes():
    sizes = {}
    for name in ('imagenet2012', 'cifar10', 'imagenette/320px-v2'):
        builder = tfds.builder(name, data_dir=str(METADATA))
        sizes[name] = {s: builder.info.splits[s].num_examples for s in builder.info.splits}
    assert sizes == {'imagenet2012': {'train': 1_281_167, 'validation': 50_000, 'test': 100_000},
                     'cifar10': {'train': 50_000, 'test': 10_000},
                     'imagenette/320px-v2': {'train': 9_469, 'validation': 3_925}}


def _small_imagenet_metadata(data_dir, sizes) -> None:
    """imagenet2012's real features with a few examples a split (the preparation reads every
    example the metadata promises)."""
    builder = tfds.builder('imagenet2012', data_dir=str(data_dir))
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0, filename_template=None)
        for s, n in sizes.items()]))
    directory = data_dir / 'imagenet2012' / str(builder.version)
    directory.mkdir(parents=True)
    builder.info.write_to_directory(str(directory))


@pytest.mark.slow  # Prepares the 256x256 copy (JPEG encode/decode) and trains on it.
def test_the_papers_256_copy_is_prepared_from_imagenet2012_and_trains(tmp_path):
    """`python -m alexnet_jax.data.downsampled --source=imagenet2012` and `--config.data.name=
    downsampled` on the real imagenet2012 builder (once: a TFDS BuilderConfig name clash at
    start). The source is mocked with real JPEGs of random sizes; the copy itself is built
    for real by the Downsampled builder."""
    import contextlib  # pylint: disable=import-outside-toplevel
    from unittest import mock  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from alexnet_jax.data import downsampled  # pylint: disable=import-outside-toplevel
    sizes = {'train': 8, 'validation': 4}
    _small_imagenet_metadata(tmp_path, sizes)

    def jpegs(self, split, decoders=None, read_config=None, shuffle_files=False):
        del self, read_config, shuffle_files
        name = str(split).split('[')[0]
        rng = np.random.default_rng(len(name))
        images = [tf.io.encode_jpeg(rng.integers(0, 256, (int(rng.integers(200, 400)),
                                                          int(rng.integers(200, 400)), 3),
                                                 np.uint8)).numpy() for _ in range(sizes[name])]
        ds = tf.data.Dataset.from_tensor_slices({
            'image': images, 'label': np.arange(sizes[name]) % 1000,
            'file_name': [f'{name}_{i}.JPEG'.encode() for i in range(sizes[name])]})
        if decoders and 'image' in decoders:  # What the preparation reads: the JPEG bytes.
            return ds
        return ds.map(lambda ex: dict(ex, image=tf.io.decode_jpeg(ex['image'])))

    real = {n: getattr(tfds.core.dataset_builder.FileReaderBuilder, n)
            for n in ('download_and_prepare', 'as_dataset', '_as_dataset')}
    config = tiny('gpu')  # One GPU's recipe: the copy, in bf16.
    assert (config.data.name, config.model.dtype) == ('downsampled', 'bfloat16')
    config.data.data_dir = str(tmp_path)
    validation.validate_config(config)
    with contextlib.ExitStack() as stack:
        stack.enter_context(tfds.testing.mock_data(data_dir=str(tmp_path), as_dataset_fn=jpegs))
        for name, method in real.items():  # The copy is built and read for real.
            stack.enter_context(mock.patch.object(downsampled.Downsampled, name, method))
        built = downsampled.prepare(downsampled.get_builder('imagenet2012', str(tmp_path)))
        assert {k: v.num_examples for k, v in built.info.splits.items()} == sizes
        example = next(iter(built.as_dataset(split='train')))
        assert tuple(example['image'].shape) == (256, 256, 3)
        results = launch.run(config, str(tmp_path / 'run'))
    assert results['steps'] == 3 and len(results['test_correct']) == sizes['validation']
