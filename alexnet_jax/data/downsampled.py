r"""`downsampled`: the paper's 256x256 images, prepared once from `imagenet2012` or an image folder.

Sec. 2 of the paper: images "down-sampled to a fixed resolution of 256 x 256": the shorter side
rescaled to 256, then the central 256x256 patch. Stored as JPEG, so a training run decodes
256x256 images (the random 227 crops are then exact slices, no resampling) instead of
ImageNet's ~500x375 originals. Select it with

  --config.data.name=downsampled --config.data.downsample_source=imagenet2012   # or =folder
  [--config.data.folder_root=/data/imgs]  [--config.data.data_dir=~/tensorflow_datasets]

The first run prepares it in data_dir (all cores; ~1 hour per million images per 16 cores), or:

  python -m alexnet_jax.data.downsampled --source=imagenet2012 --data_dir=DIR
  python -m alexnet_jax.data.downsampled --source=folder --folder_root=/data/imgs --data_dir=DIR

Resumable: the work is done in chunks of CHUNK_SIZE examples, each written atomically to
data_dir/downloads/downsampled/... and skipped by a rerun; TFDS writes the final records to a
temporary directory renamed when complete, and then the chunks are deleted. Splits and class
names are the source's. A source JPEG that already is 256x256 is kept byte for byte; others are
re-encoded at JPEG_QUALITY. Unreadable source images are skipped with a warning naming each and
a count per split, recorded in metadata.json as `skipped_images` (the folder source's `strict`
check is for training on the folder itself). A wrong source path fails before anything is
written; a full disk removes the half-written chunk (TFDS its temporary directory) and keeps the
complete ones.
"""

import dataclasses
import errno
import hashlib
import logging
import math
import os
import sys

import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import errors
from alexnet_jax.data import augment

SIZE = 256          # The paper's fixed resolution.
JPEG_QUALITY = 90   # Re-encoding quality: ~20 KB per image, visually lossless at 256x256.
CHUNK_SIZE = 10_000  # Examples per resumable unit of work (~3 minutes on 16 cores).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')  # What TFDS's ImageFolder reads.


class SourceNotFoundError(errors.UserError, FileNotFoundError):
    """The originals are not where the config or flags say (raised before anything is written)."""


@dataclasses.dataclass(eq=False)
class DownsampledConfig(tfds.core.BuilderConfig):
    """Where the originals come from: a TFDS name (in `source_data_dir`) or 'folder'."""
    source: str = 'imagenet2012'
    source_data_dir: str | None = None
    folder_root: str | None = None


def builder_config(source: str, source_data_dir=None, folder_root=None) -> DownsampledConfig:
    """The config for a source; a folder's name carries a hash of its path (one set per folder)."""
    if source == 'folder':
        root = os.path.abspath(os.path.expanduser(folder_root or ''))
        digest = hashlib.sha1(root.encode()).hexdigest()[:8]
        name = f'folder-{os.path.basename(root) or "root"}-{digest}'
    else:
        name = source
    return DownsampledConfig(name=name, source=source, source_data_dir=source_data_dir,
                             folder_root=folder_root,
                             description=f'{source} down-sampled to {SIZE}x{SIZE}.')


class Downsampled(tfds.core.GeneratorBasedBuilder):
    """The shorter side rescaled to 256 and the central 256x256 patch, as JPEG."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Shorter side 256 (antialiased bilinear), central 256x256.'}
    # No registered configs: every source's config is made by `builder_config` (it carries the
    # source's data_dir), and TFDS refuses a made config named like a registered one, as
    # 'imagenet2012' was (the paper's path crashed at start).
    BUILDER_CONFIGS = []
    code_path = None  # Nothing is downloaded: no checksums file (see digits.py).

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=(SIZE, SIZE, 3), encoding_format='jpeg'),
                'label': tfds.features.ClassLabel(),  # Names: the source's (set on preparing).
                'file_name': tfds.features.Text(),    # The source image ('' if unknown).
            }),
            supervised_keys=('image', 'label'),
            metadata=tfds.core.MetadataDict(),  # 'skipped_images': {split: [file names]}.
        )

    _source = None

    def source(self):
        """The originals, opened (and their path checked) once: `prepare` opens them before TFDS
        writes anything, so a wrong path leaves nothing behind."""
        if self._source is None:
            self._source = _open_source(self.builder_config)
        return self._source

    def _split_generators(self, dl_manager):
        source = self.source()
        self.info.features['label'].names = source.label_names
        self.info.metadata['skipped_images'] = {}
        del dl_manager  # Nothing to download.
        cache = os.path.join(chunk_dir(self), str(self.version))
        return {split: self._generate_examples(source, split, cache) for split in source.splits}

    def _generate_examples(self, source, split, cache):
        n = source.num_examples(split)
        directory = os.path.join(cache, f'{split}-n{n}-chunk{CHUNK_SIZE}')
        tf.io.gfile.makedirs(directory)
        skipped = self.info.metadata['skipped_images'].setdefault(split, [])
        for c in range(math.ceil(n / CHUNK_SIZE)):
            lo, hi = c * CHUNK_SIZE, min(n, (c + 1) * CHUNK_SIZE)
            path = os.path.join(directory, f'{lo:09d}-{hi:09d}.tfrecord')
            if not tf.io.gfile.exists(path):
                _write_chunk(downsample(source.read(split, lo, hi)), path)
            kept = set()
            for ex in tf.data.TFRecordDataset(path).map(_parse).as_numpy_iterator():
                kept.add(int(ex['index']))
                yield int(ex['index']), {'image': ex['image'], 'label': ex['label'],
                                         'file_name': ex['file_name'].decode()}
            for i in sorted(set(range(lo, hi)) - kept):  # Dropped as unreadable (`downsample`).
                skipped.append(_file_name(source, split, i))
                logging.warning('Skipped unreadable image %s (in %s): it does not decode.',
                                skipped[-1], _describe(self.builder_config))
        if skipped:
            logging.warning('Skipped %d unreadable image(s) of %d in split %r of %s.',
                            len(skipped), n, split, _describe(self.builder_config))


# --- the work: decode the central square, resize, encode ----------------------------------------

def downsample_image(encoded):
    """Encoded image -> JPEG bytes of its shorter-side-256, central 256x256 version.

    Only the central square is decoded; an already 256x256 JPEG is returned unchanged.
    """
    shape = augment.image_shape(encoded)
    keep = tf.logical_and(tf.io.is_jpeg(encoded), tf.reduce_all(tf.equal(shape, SIZE)))

    def convert():
        square = augment.decode_and_crop(encoded, augment.paper_window(shape, SIZE, SIZE, 0, 0))
        resized = tf.image.resize(square, [SIZE, SIZE], antialias=True)  # Once: best quality.
        return tf.io.encode_jpeg(augment.to_uint8(resized), quality=JPEG_QUALITY)
    return tf.cond(keep, lambda: encoded, convert)


def downsample(ds):
    """{'image', 'label', 'index', 'file_name'} records -> the same with 256x256 JPEGs; all
    cores; unreadable images dropped (`Downsampled._generate_examples` names them by index)."""
    ds = ds.map(tf.autograph.experimental.do_not_convert(  # (Why: alexnet_jax/data/__init__.py.)
        lambda ex: {**ex, 'image': downsample_image(ex['image'])}),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.ignore_errors()


_FEATURES = {'image': tf.io.FixedLenFeature([], tf.string),
             'label': tf.io.FixedLenFeature([], tf.int64),
             'index': tf.io.FixedLenFeature([], tf.int64),
             'file_name': tf.io.FixedLenFeature([], tf.string)}


@tf.autograph.experimental.do_not_convert
def _parse(record):
    return tf.io.parse_single_example(record, _FEATURES)


def _write_chunk(ds, path):
    """Writes `ds`'s examples to `path` atomically (a temporary file, renamed when complete;
    removed if writing fails, e.g. on a full disk, so no half-written chunk is left)."""
    tmp = path + '.incomplete'
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for ex in ds.as_numpy_iterator():
                feature = {
                    'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[ex['image']])),
                    'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[ex['label']])),
                    'index': tf.train.Feature(int64_list=tf.train.Int64List(value=[ex['index']])),
                    'file_name': tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[ex['file_name']])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                             .SerializeToString())
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)


def _file_name(source, split, index) -> str:
    """The source's name of example `index` (to name a skipped image): read it again, alone."""
    ex = next(source.read(split, index, index + 1).as_numpy_iterator())
    return ex['file_name'].decode() or f'{split}[{index}]'


def _describe(config) -> str:
    """Where the originals are, for messages: the folder or the TFDS name."""
    return config.folder_root if config.source == 'folder' else config.source


# --- sources of originals -----------------------------------------------------------------------

class _TfdsOriginals:
    """A prepared TFDS image classification set (imagenet2012, ...), images kept encoded."""

    def __init__(self, name, data_dir):
        try:
            self.builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            raise SourceNotFoundError(
                f"source {name!r} is neither a TFDS data set nor 'folder'; set "
                f"--config.data.downsample_source (python -m alexnet_jax.data.downsampled: "
                f"--source) to one, e.g. 'imagenet2012'.") from None
        if not self.builder.is_prepared():
            raise SourceNotFoundError(
                f'{name} is not prepared in {self.builder.data_dir_root}: prepare it first '
                f'(tfds build {name} --data_dir={self.builder.data_dir_root}; for imagenet2012 '
                f'see README), then the 256x256 copy is made from it.')
        self.label_names = self.builder.info.features['label'].names
        self.splits = list(self.builder.info.splits.keys())

    def num_examples(self, split):
        return self.builder.info.splits[split].num_examples

    def read(self, split, lo, hi):
        ds = self.builder.as_dataset(split=f'{split}[{lo}:{hi}]', shuffle_files=False,
                                     decoders={'image': tfds.decode.SkipDecoding()})
        has_name = 'file_name' in self.builder.info.features
        return ds.enumerate(lo).map(tf.autograph.experimental.do_not_convert(lambda i, ex: {
            'image': ex['image'], 'label': ex['label'], 'index': i,
            'file_name': ex['file_name'] if has_name else tf.constant('')}))


class _FolderOriginals:
    """root/<split>/<class>/*.{jpg,jpeg,png}; classes as TFDS's ImageFolder names them."""

    def __init__(self, root):
        if not root or not tf.io.gfile.isdir(root):
            raise SourceNotFoundError(
                f'folder_root {root!r} is not a directory; point --config.data.folder_root '
                f'(python -m alexnet_jax.data.downsampled: --folder_root) at a folder laid out as '
                f'root/<split>/<class>/*.jpg.')
        self.root = root
        self.label_names = tfds.ImageFolder(root).info.features['label'].names
        index = {name: i for i, name in enumerate(self.label_names)}
        self.splits, self._files = [], {}
        for split in sorted(tf.io.gfile.listdir(root)):
            split = split.rstrip('/')
            split_dir = os.path.join(root, split)
            if not tf.io.gfile.isdir(split_dir):
                continue
            files = sorted(
                (os.path.join(split_dir, label, f), index[label])
                for label in (c.rstrip('/') for c in tf.io.gfile.listdir(split_dir))
                if tf.io.gfile.isdir(os.path.join(split_dir, label))
                for f in tf.io.gfile.listdir(os.path.join(split_dir, label))
                if f.lower().endswith(IMAGE_EXTENSIONS))
            if files:
                self.splits.append(split)
                self._files[split] = files

    def num_examples(self, split):
        return len(self._files[split])

    def read(self, split, lo, hi):
        paths, labels = zip(*self._files[split][lo:hi])
        ds = tf.data.Dataset.from_tensor_slices((list(paths), list(labels)))
        return ds.enumerate(lo).map(tf.autograph.experimental.do_not_convert(lambda i, x: {
            'image': tf.io.read_file(x[0]), 'label': tf.cast(x[1], tf.int64), 'index': i,
            'file_name': tf.strings.substr(x[0], len(self.root.rstrip('/')) + 1, -1)}))


def _open_source(config: DownsampledConfig):
    if config.source == 'folder':
        return _FolderOriginals(config.folder_root)
    return _TfdsOriginals(config.source, config.source_data_dir)


# --- preparing ----------------------------------------------------------------------------------

def chunk_dir(builder) -> str:
    """Where the resumable chunks of `builder`'s preparation live until it completes."""
    return os.path.join(builder.data_dir_root, 'downloads', 'downsampled',
                        builder.builder_config.name)


def get_builder(source, data_dir=None, folder_root=None) -> Downsampled:
    """The builder of `source`'s 256x256 copy in `data_dir` (the source's TFDS set is read from
    the same data_dir)."""
    return Downsampled(config=builder_config(source, data_dir, folder_root), data_dir=data_dir)


def prepare(builder: Downsampled) -> Downsampled:
    """Prepares (or finishes preparing) `builder`'s data set; then drops the chunk cache."""
    if builder.is_prepared():
        return builder
    builder.source()  # A wrong path fails here, before anything is written.
    logging.warning('Preparing the 256x256 copy of %s in %s (once; resumable).',
                    builder.builder_config.source, builder.data_dir)
    parent, version = os.path.split(builder.data_dir)
    if tf.io.gfile.isdir(parent):  # A killed run's TFDS temporary directory, never renamed.
        for name in tf.io.gfile.listdir(parent):
            name = name.rstrip('/')
            if name.startswith('incomplete.') and name.endswith('_' + version):
                tf.io.gfile.rmtree(os.path.join(parent, name))
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    tfds.display_progress_bar(sys.stderr.isatty())  # In a log or a pipe, bars are noise lines.
    try:
        builder.download_and_prepare(download_config=config)
    except (OSError, tf.errors.ResourceExhaustedError, RuntimeError) as e:
        # A full disk, however it surfaces: an OSError (TFDS's own files, often without a path),
        # TensorFlow's ResourceExhaustedError (its writers), or TFDS's RuntimeError around that
        # when it finishes a split. Reported as the OSError it is, naming the directory to free;
        # anything else (out of memory too) keeps its traceback.
        if getattr(e, 'errno', None) != errno.ENOSPC and 'No space left on device' not in str(e):
            raise
        raise OSError(errno.ENOSPC, 'No space left on device', str(builder.data_dir_root)) from e
    if tf.io.gfile.isdir(chunk_dir(builder)):
        tf.io.gfile.rmtree(chunk_dir(builder))
    return builder


def main(argv):
    del argv
    from absl import flags  # pylint: disable=import-outside-toplevel
    f = flags.FLAGS
    builder = prepare(get_builder(f.source, f.data_dir, f.folder_root))
    skipped = builder.info.metadata.get('skipped_images', {})
    print(f'{builder.data_dir}: ' + ', '.join(
        f'{k} {v.num_examples}' + (f' ({len(skipped[k])} unreadable skipped)' if skipped.get(k)
                                   else '') for k, v in builder.info.splits.items()))


if __name__ == '__main__':
    from absl import app, flags
    from alexnet_jax import cli
    flags.DEFINE_string('source', 'imagenet2012', "A prepared TFDS set's name, or 'folder'.")
    flags.DEFINE_string('data_dir', None, 'TFDS data_dir: the source is read from it and the '
                        'copy written to it (default ~/tensorflow_datasets).')
    flags.DEFINE_string('folder_root', None, "source=folder: root/<split>/<class>/*.jpg.")
    app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
