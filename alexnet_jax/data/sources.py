"""Where examples come from: a TFDS set, an image folder (TFDS's ImageFolder) or fake data.

Each source answers the same three questions, so the pipeline has one shape:
  num_examples(split)                  -> examples in a split (all hosts)
  read(split, index, count, drop_rem.) -> tf.data of {'image', 'label'} for host `index` of `count`
                                          (hosts never share an example), and its length
  num_classes, channels, cache         -> facts the pipeline needs
Images stay *encoded* (tfds SkipDecoding) so the augmentation decodes only the crop it keeps.
"""

import functools
import logging
import os
import sys
import types

import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import errors
from alexnet_jax.data import digits  # noqa: F401  (registers 'digits' with TFDS)
from alexnet_jax.data import downsampled  # (registers 'downsampled')

AUTOCACHE_BYTES = 1 << 30  # cache='auto' keeps a TFDS set's raw records in memory below this.
_NO_CACHE_WARNING = tfds.ReadConfig(try_autocache=False)  # We decide about caching ourselves.


class DataNotFoundError(errors.UserError, FileNotFoundError):
    """A data set, folder or split that is not where the config says; the message says how."""


class DataError(errors.UserError, ValueError):
    """Data that is there but unusable (an empty class, an unreadable image with strict=True)."""


def host_range(n: int, index: int, count: int, drop_remainder: bool):
    """[lo, hi) of host `index` among `count` over n examples, exactly as `tfds.even_splits`."""
    per, rest = divmod(n, count)
    lo, hi = per * index, per * (index + 1)
    if rest and not drop_remainder:
        lo, hi = lo + min(index, rest), hi + min(index + 1, rest)
    return lo, hi


class TfdsSource:
    """Any prepared TFDS image classification set (imagenet2012, cifar10, digits, ...)."""

    def __init__(self, builder, cache):
        self.builder = builder
        features = builder.info.features
        self.num_classes = features['label'].num_classes
        shape = self.image_shape = features['image'].shape  # Stored (H, W, C); H/W may be None.
        self.channels = shape[-1] if shape and shape[-1] else 3
        size = builder.info.dataset_size or 0
        self.cache = size < AUTOCACHE_BYTES if cache == 'auto' else cache == 'always'

    def num_examples(self, split):
        known = self.builder.info.splits.keys()
        for name in split.split('+'):  # TFDS split syntax: 'train[:90%]', 'train+test', ...
            if name.split('[')[0].strip() not in known:
                raise DataNotFoundError(
                    f'{self.builder.name} has no split {split!r} (it has {sorted(known)}); set '
                    f'config.data.train_split/eval_split/test_split to one of them.')
        return self.builder.info.splits[split].num_examples

    def skipped(self, split):
        del split
        return ()

    def read(self, split, index, count, drop_remainder):
        sub = tfds.even_splits(split, n=count, drop_remainder=drop_remainder)[index]
        ds = self.builder.as_dataset(split=sub, shuffle_files=False, read_config=_NO_CACHE_WARNING,
                                     decoders={'image': tfds.decode.SkipDecoding()})
        return ds.map(_image_and_label), self.builder.info.splits[sub].num_examples


class FolderSource:
    """root/<split>/<class>/*.{jpg,jpeg,png} through `tfds.ImageFolder`.

    Unreadable images (corrupt, truncated) are found once per split and process by decoding
    every file (in parallel, in tf.data) and then skipped with a warning naming them, or, with
    strict=True, reported as an error naming the first one. Empty class directories and splits
    without images are errors: they are almost always a wrong path.
    """

    def __init__(self, root, strict, cache):
        if not root or not tf.io.gfile.isdir(root):
            raise DataNotFoundError(
                f'config.data.folder_root={root!r} is not a directory; point it at a folder laid '
                f'out as root/<split>/<class>/*.jpg.')
        self.root, self.strict = root, strict
        self.builder = tfds.ImageFolder(root)
        self.num_classes = self.builder.info.features['label'].num_classes
        self.channels, self.image_shape = 3, None
        self.cache = cache == 'always'  # 'auto': no; folders are usually large, on local disk.
        self._skipped = {}

    def _files(self, split):
        """All image files of a split, and clear errors for empty classes or splits."""
        split_dir = os.path.join(self.root, split)
        if not tf.io.gfile.isdir(split_dir):
            raise DataNotFoundError(
                f'Image folder {self.root} has no split directory {split!r} (found: '
                f'{sorted(self.builder.info.splits.keys())}); set config.data.*_split accordingly.')
        files = []
        for label in sorted(tf.io.gfile.listdir(split_dir)):
            class_dir = os.path.join(split_dir, label.rstrip('/'))
            if not tf.io.gfile.isdir(class_dir):
                continue
            images = [os.path.join(class_dir, f) for f in tf.io.gfile.listdir(class_dir)
                      if f.lower().endswith(downsampled.IMAGE_EXTENSIONS)]
            if not images:
                raise DataError(f'Class directory {class_dir} has no '
                                f'{"/".join(downsampled.IMAGE_EXTENSIONS)} images; remove it or '
                                f'add images.')
            files += images
        if not files:
            raise DataError(f'Split directory {split_dir} has no images in class '
                             f'subdirectories (expected {split_dir}/<class>/*.jpg).')
        return files

    def skipped(self, split):
        """Files of `split` that do not decode (scanned once per process)."""
        if split not in self._skipped:
            files = self._files(split)
            bad = sorted(set(files) - _decodable(files))
            if bad and self.strict:
                raise DataError(f'Unreadable image {bad[0]} ({len(bad)} in split {split!r}); '
                                 f'fix or remove it, or set config.data.strict=False to skip.')
            if bad:
                logging.warning('Skipping %d unreadable image(s) in %s/%s: %s', len(bad),
                                self.root, split, ', '.join(bad))
            self._skipped[split] = tuple(bad)
        return self._skipped[split]

    def num_examples(self, split):
        return len(self._files(split)) - len(self.skipped(split))

    def read(self, split, index, count, drop_remainder):
        bad = self.skipped(split)
        ds = self.builder.as_dataset(split=split, shuffle_files=False,
                                     read_config=_NO_CACHE_WARNING,
                                     decoders={'image': tfds.decode.SkipDecoding()})
        if bad:
            bad_t = tf.constant(bad)
            ds = ds.filter(tf.autograph.experimental.do_not_convert(lambda ex: tf.logical_not(
                tf.reduce_any(tf.equal(ex['image/filename'], bad_t)))))
        lo, hi = host_range(self.num_examples(split), index, count, drop_remainder)
        ds = ds.skip(lo).take(hi - lo)
        return ds.map(_image_and_label), hi - lo


@tf.autograph.experimental.do_not_convert  # (Why: alexnet_jax/data/__init__.py.)
def _image_and_label(ex):
    return {'image': ex['image'], 'label': ex['label']}


def _decodable(files):
    """The subset of `files` that decode fully; tf.data decodes them in parallel."""
    ds = tf.data.Dataset.from_tensor_slices(files).map(tf.autograph.experimental.do_not_convert(
        lambda f: (f, tf.shape(tf.io.decode_image(tf.io.read_file(f), channels=3,
                                                  expand_animations=False)))),
        num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors()
    return {f.decode() for f, _ in ds.as_numpy_iterator()}


class FakeSource:
    """Synthetic uint8 images of any shape, label = index % num_classes; nothing on disk.

    For benchmarks of the step and for tests. Image i is always the same (stateless random).
    """

    def __init__(self, d):
        self.shape = self.image_shape = tuple(d.fake_shape)
        self.num_classes = d.fake_num_classes
        self.channels = self.shape[-1]
        self.cache = d.cache == 'always'
        self._train_split, self._train_n, self._eval_n = (
            d.train_split, d.fake_train_examples, d.fake_eval_examples)

    def num_examples(self, split):
        return self._train_n if split == self._train_split else self._eval_n

    def skipped(self, split):
        del split
        return ()

    def read(self, split, index, count, drop_remainder):
        lo, hi = host_range(self.num_examples(split), index, count, drop_remainder)
        shape, k = self.shape, self.num_classes

        @tf.autograph.experimental.do_not_convert
        def make(i):
            image = tf.random.stateless_uniform(shape, tf.stack([i, i]), 0, 256, tf.int32)
            return {'image': tf.cast(image, tf.uint8), 'label': i % k}
        return tf.data.Dataset.range(lo, hi).map(make), hi - lo


def _tfds_builder(d):
    """The TFDS builder for `d.name`, prepared; digits builds offline, others get clear errors."""
    try:
        builder = tfds.builder(d.name, data_dir=d.data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f'config.data.name={d.name!r} is neither a TFDS data set nor one of '
                         f"'digits', 'folder', 'fake'.") from e
    if builder.is_prepared():
        return builder
    if d.name == 'digits' or (d.manual_dir and builder.MANUAL_DOWNLOAD_INSTRUCTIONS):
        config = tfds.download.DownloadConfig(manual_dir=d.manual_dir)
        tfds.display_progress_bar(sys.stderr.isatty())  # In a log or a pipe, bars are noise.
        try:
            builder.download_and_prepare(download_config=config)
        except AssertionError as e:  # TFDS's "manual directory is missing files".
            raise DataNotFoundError(_not_prepared(d, builder) + f' (TFDS said: {e})') from None
        return builder
    raise DataNotFoundError(_not_prepared(d, builder))


def _not_prepared(d, builder):
    data_dir = str(builder.data_dir_root)  # config.data.data_dir, else $TFDS_DATA_DIR or ~.
    manual = d.manual_dir or os.path.join(data_dir, 'downloads', 'manual')
    if d.name == 'imagenet2012':
        return (f'imagenet2012 is not prepared in {data_dir}. Download ILSVRC2012_img_train.tar '
                f'and ILSVRC2012_img_val.tar from https://image-net.org (registration needed), '
                f'put both in {manual} and set --config.data.manual_dir={manual} '
                f'(the first run then builds it, ~hours), or run: tfds build imagenet2012 '
                f'--data_dir={data_dir} --manual_dir={manual}')
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        return (f'{d.name} is not prepared in {data_dir} and needs manual files in {manual}: '
                f'{builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()} Then set '
                f'--config.data.manual_dir={manual}.')
    return (f'{d.name} is not prepared in {data_dir} (no downloads happen during training). '
            f'On a machine with internet run: tfds build {d.name} --data_dir={data_dir}, '
            f'and copy {data_dir}/{d.name} here; or set --config.data.data_dir to where it is.')


@functools.lru_cache(maxsize=None)
def _cached_source(key):
    d = key.value
    if d.name == 'fake':
        return FakeSource(d)
    if d.name == 'folder':
        return FolderSource(d.folder_root, d.strict, d.cache)
    if d.name == 'downsampled':  # The paper's 256x256 copy; prepared on first use.
        return TfdsSource(downsampled.prepare(downsampled.get_builder(
            d.downsample_source, d.data_dir, d.folder_root)), d.cache)
    return TfdsSource(_tfds_builder(d), d.cache)


# The fields a source depends on; augmentation fields do not rebuild (or rescan) a source.
SOURCE_FIELDS = ('name', 'downsample_source', 'data_dir', 'manual_dir', 'folder_root', 'strict',
                 'cache', 'train_split', 'fake_shape', 'fake_num_classes', 'fake_train_examples',
                 'fake_eval_examples')


class Hashed:
    """`value`, hashed and compared by the string `key`: a config as a functools cache key."""

    def __init__(self, value, key: str):
        self.value, self.key = value, key

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, Hashed) and self.key == other.key


def get_source(d):
    """The source of config section `d` (config.data): built (a folder scanned) once per
    SOURCE_FIELDS values."""
    fields = {k: d.get(k) for k in SOURCE_FIELDS}
    return _cached_source(Hashed(types.SimpleNamespace(**fields), repr(sorted(fields.items()))))

