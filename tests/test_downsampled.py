"""The 256x256 copy: geometry against PIL, resume after an interruption, use by config; the
user's errors (a wrong source, a full disk) in one line and nothing written; unreadable images."""

import errno
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from configs import alexnet  # noqa: E402
from alexnet_jax import cli  # noqa: E402
from alexnet_jax import errors  # noqa: E402
from alexnet_jax.data import input_pipeline as ip  # noqa: E402
from alexnet_jax.data import downsampled  # noqa: E402
from tests.helpers import ROOT, subprocess_env, write_folder  # noqa: E402

# (split, class, name, height, width, format, mode)
IMAGES = [
    ('train', 'cat', 'wide.jpg', 300, 400, 'JPEG', 'RGB'),
    ('train', 'cat', 'tall.jpg', 410, 290, 'JPEG', 'RGB'),
    ('train', 'cat', 'exact.jpg', 256, 256, 'JPEG', 'RGB'),   # Kept byte for byte.
    ('train', 'dog', 'small.png', 150, 200, 'PNG', 'RGB'),    # Upsampled.
    ('train', 'dog', 'gray.jpg', 260, 300, 'JPEG', 'L'),      # Gray -> RGB.
    ('val', 'cat', 'v0.jpg', 333, 500, 'JPEG', 'RGB'),
    ('val', 'dog', 'v1.jpg', 500, 375, 'JPEG', 'RGB'),
]


def smooth_image(h, w, mode, seed):
    """Smooth content (resampling differences stay small, as on photos)."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
    return img.convert(mode)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('originals')
    for i, (split, label, name, h, w, fmt, mode) in enumerate(IMAGES):
        path = root / split / label / name
        path.parent.mkdir(parents=True, exist_ok=True)
        smooth_image(h, w, mode, i).save(path, fmt, quality=95)
    (root / 'train' / 'dog' / 'broken.jpg').write_bytes(b'\xff\xd8\xff not a jpeg')
    return root


def records(builder):
    """{split: {file_name: (jpeg bytes, label name)}} of a prepared data set."""
    names = builder.info.features['label'].names
    out = {}
    for split in builder.info.splits:
        ds = builder.as_dataset(split=split, decoders={'image': tfds_skip()})
        out[split] = {ex['file_name'].decode(): (ex['image'], names[ex['label']])
                      for ex in ds.as_numpy_iterator()}
    return out


def tfds_skip():
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    return tfds.decode.SkipDecoding()


def pil_reference(path):
    """Shorter side to 256 (PIL, antialiased bilinear), then the central 256x256, RGB."""
    img = Image.open(path).convert('RGB')
    w, h = img.size
    s = 256 / min(w, h)
    img = img.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - 256) // 2, (h - 256) // 2
    return np.asarray(img.crop((left, top, left + 256, top + 256)), np.float32)


def test_prepared_copy_is_the_central_256_square(folder, tmp_path):
    builder = downsampled.prepare(downsampled.get_builder('folder', str(tmp_path), str(folder)))
    got = records(builder)
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {'train': 5, 'val': 2}
    assert builder.info.features['label'].names == ['cat', 'dog']
    for split, label, name, *_ in IMAGES:
        data, got_label = got[split][f'{split}/{label}/{name}']
        assert got_label == label
        pixels = tf.io.decode_jpeg(data).numpy()
        assert pixels.shape == (256, 256, 3)
        diff = np.abs(pixels.astype(np.float32) - pil_reference(folder / split / label / name))
        assert diff.mean() < 2.5, (name, diff.mean())
    assert got['train']['train/cat/exact.jpg'][0] == (folder / 'train/cat/exact.jpg').read_bytes()
    assert not os.path.exists(downsampled.chunk_dir(builder))  # Cleaned up when complete.


class Interrupted(Exception):
    pass


@pytest.mark.slow  # Prepares twice (~20 s on 2 busy cores).
def test_interrupted_preparation_resumes_and_equals_a_clean_one(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(downsampled, 'CHUNK_SIZE', 2)  # train: 3 chunks, val: 1.
    clean = records(downsampled.prepare(downsampled.get_builder(
        'folder', str(tmp_path / 'clean'), str(folder))))

    data_dir = str(tmp_path / 'resumed')
    real_write, written = downsampled._write_chunk, []

    def failing_write(ds, path):
        if len(written) == 2:
            raise Interrupted('killed mid-way')
        written.append(path)
        real_write(ds, path)
    monkeypatch.setattr(downsampled, '_write_chunk', failing_write)
    with pytest.raises(Interrupted):
        downsampled.prepare(downsampled.get_builder('folder', data_dir, str(folder)))
    builder = downsampled.get_builder('folder', data_dir, str(folder))
    assert not builder.is_prepared()
    stale = os.path.join(os.path.dirname(builder.data_dir), 'incomplete.ABC123_1.0.0')
    os.makedirs(stale)  # What a SIGKILL leaves behind.

    rerun = []
    monkeypatch.setattr(downsampled, '_write_chunk',
                        lambda ds, path: (rerun.append(path), real_write(ds, path)))
    builder = downsampled.prepare(downsampled.get_builder('folder', data_dir, str(folder)))
    assert builder.is_prepared() and not os.path.exists(stale)
    assert len(rerun) == 2 and not set(rerun) & set(written)  # Only the missing chunks.
    assert records(builder) == clean
    # broken.jpg's chunk was written before the interruption: its skip is still recorded.
    assert builder.info.metadata['skipped_images'] == {'train': ['train/dog/broken.jpg'],
                                                       'val': []}


@pytest.mark.slow  # Prepares, then builds train and eval pipelines.
def test_config_selects_the_downsampled_copy(folder, tmp_path):
    c = alexnet.get_config()
    d = c.data
    d.name, d.downsample_source, d.folder_root = 'downsampled', 'folder', str(folder)
    d.data_dir, d.train_split, d.eval_split, d.test_split = str(tmp_path), 'train', 'val', 'val'
    d.eval_crops = 'ten'
    c.model.num_classes, c.train.batch_size, c.train.eval_batch_size = 2, 4, 2
    info = ip.get_info(c)
    assert info.num_classes == 2 and info.num_examples == {'train': 5, 'val': 2}
    batch = next(ip.train_iterator(c, process_index=0, process_count=1, local_devices=2))
    assert batch['image'].shape == (2, 2, 227, 227, 3) and batch['image'].dtype == np.uint8
    assert batch['lighting'].shape == (2, 2, 3)
    evals = list(ip.eval_iterator(c, 'val', process_index=0, process_count=1, local_devices=2))
    assert evals[0]['image'].shape == (2, 1, 256, 256, 3)  # 10 crops: the square ships.
    # The square is the prepared image itself (no resampling).
    builder = downsampled.get_builder('folder', str(tmp_path), str(folder))
    first = next(builder.as_dataset(split='val').as_numpy_iterator())
    np.testing.assert_array_equal(evals[0]['image'][0, 0], first['image'])


# --- errors the user fixes, and unreadable images ---------------------------------------------

def test_a_wrong_source_is_a_user_error_before_anything_is_written(tmp_path):
    data_dir = tmp_path / 'tfds'
    missing = tmp_path / 'missing'
    cases = [('folder', str(missing), f"folder_root '{missing}' is not a directory"),
             ('folder', None, 'folder_root None is not a directory'),
             ('bogus_set', None, "source 'bogus_set' is neither a TFDS data set nor 'folder'"),
             ('mnist', None, f'mnist is not prepared in {data_dir}'),
             # The paper's source: its config name once clashed with a registered one in TFDS
             # ("Cannot name a custom BuilderConfig ...") before the source was even read.
             ('imagenet2012', None, f'imagenet2012 is not prepared in {data_dir}')]
    for source, root, message in cases:
        with pytest.raises(errors.UserError) as e:
            downsampled.prepare(downsampled.get_builder(source, str(data_dir), root))
        assert message in str(e.value), str(e.value)
        assert ('--config.data.folder_root' if source == 'folder' else source) in str(e.value)
        assert not data_dir.exists()  # Nothing written, not even TFDS's empty directories.


def _first_chunk(builder, split, n):
    """Where `Downsampled` writes the temporary file of `split`'s first chunk (n examples)."""
    directory = os.path.join(downsampled.chunk_dir(builder), str(builder.version),
                             f'{split}-n{n}-chunk{downsampled.CHUNK_SIZE}')
    return os.path.join(directory, f'{0:09d}-{n:09d}.tfrecord.incomplete')


def _fill_disk_at(path):
    """Every write to `path` fails with ENOSPC, as on a full disk (/dev/full)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink('/dev/full', path)


def _leftovers(data_dir):
    return sorted(str(p.relative_to(data_dir)) for p in pathlib.Path(data_dir).rglob('*')
                  if 'incomplete' in p.name)


def test_a_full_disk_leaves_nothing_half_written(folder, tmp_path):
    data_dir = str(tmp_path / 'tfds')
    builder = downsampled.get_builder('folder', data_dir, str(folder))
    _fill_disk_at(_first_chunk(builder, 'train', 6))
    with pytest.raises(OSError) as e:
        downsampled.prepare(builder)
    assert e.value.errno == errno.ENOSPC and e.value.filename == data_dir
    assert cli.user_message(e.value).startswith(f'no space left on the device: {data_dir};')
    assert _leftovers(data_dir) == []  # Neither the chunk's temporary file nor TFDS's directory.
    assert not downsampled.get_builder('folder', data_dir, str(folder)).is_prepared()


@pytest.mark.parametrize('error, user_error', [
    # TFDS wraps TensorFlow's error when it finishes writing a split.
    (RuntimeError('ResourceExhaustedError: Failed to finalize writing of split "train": '
                  '/d/x.tfrecord; No space left on device'), True),
    (tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating tensor'), False),
])
def test_only_a_full_disk_becomes_a_user_error(folder, tmp_path, monkeypatch, error, user_error):
    def fail(self, **kwargs):
        raise error
    monkeypatch.setattr(downsampled.Downsampled, 'download_and_prepare', fail)
    builder = downsampled.get_builder('folder', str(tmp_path), str(folder))
    with pytest.raises(Exception) as e:
        downsampled.prepare(builder)
    if user_error:
        assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
        assert e.value.filename == str(tmp_path) and e.value.__cause__ is error
    else:  # Out of memory is not the user's disk: its traceback stays.
        assert e.value is error and cli.user_message(e.value) is None


def test_unreadable_images_are_named_counted_and_recorded(folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        builder = downsampled.prepare(downsampled.get_builder('folder', str(tmp_path), str(folder)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    named = [w for w in warnings if 'train/dog/broken.jpg' in w]
    assert len(named) == 1 and str(folder) in named[0], warnings
    assert f"Skipped 1 unreadable image(s) of 6 in split 'train' of {folder}." in warnings
    assert not [w for w in warnings if "in split 'val'" in w]
    skipped = {'train': ['train/dog/broken.jpg'], 'val': []}
    assert builder.info.metadata['skipped_images'] == skipped
    assert builder.info.splits['train'].num_examples == 5
    # Recorded with the data set (metadata.json): a later process reads it back.
    again = downsampled.get_builder('folder', str(tmp_path), str(folder))
    assert again.is_prepared() and again.info.metadata['skipped_images'] == skipped


# The command line: one line `error: ...`, exit 1, nothing written.

def _run(argv, env=None):
    env = env or subprocess_env(1, PYTHONWARNINGS='ignore')
    p = subprocess.run([sys.executable, *argv, '--verbosity=-3'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and 'Traceback' not in p.stderr, p.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith('error: '), p.stderr[-3000:]
    return lines[0]


@pytest.mark.slow  # A subprocess each (TensorFlow and jax imports, ~10 s on 2 busy cores).
@pytest.mark.parametrize('command', ['prepare', 'launch'])
def test_the_command_line_names_a_missing_folder_in_one_line(tmp_path, command):
    data_dir, workdir, missing = tmp_path / 'tfds', tmp_path / 'run', tmp_path / 'missing'
    if command == 'prepare':
        argv = ['-m', 'alexnet_jax.data.downsampled', '--source=folder',
                f'--folder_root={missing}', f'--data_dir={data_dir}']
    else:
        argv = ['launch.py', '--config=configs/alexnet.py:digits',
                '--config.data.name=downsampled', '--config.data.downsample_source=folder',
                f'--config.data.folder_root={missing}', f'--config.data.data_dir={data_dir}',
                f'--workdir={workdir}']
    line = _run(argv)
    assert f"folder_root '{missing}' is not a directory" in line and 'root/<split>/<class>' in line
    assert not data_dir.exists() and not workdir.exists()


@pytest.fixture(scope='module')
def good_folder(tmp_path_factory):
    """Readable images only: libjpeg prints its own line about a corrupt JPEG on stderr."""
    root = tmp_path_factory.mktemp('good')
    write_folder(str(root), {'train': {'a': 3, 'b': 3}, 'val': {'a': 1, 'b': 1}})
    return root


def _prepare_command(root, data_dir):
    return ['-m', 'alexnet_jax.data.downsampled', '--source=folder', f'--folder_root={root}',
            f'--data_dir={data_dir}']


@pytest.mark.slow  # A subprocess (~10 s).
def test_the_command_line_reports_a_full_disk_in_one_line(good_folder, tmp_path):
    data_dir = str(tmp_path / 'tfds')
    _fill_disk_at(_first_chunk(downsampled.get_builder('folder', data_dir, str(good_folder)),
                               'train', 6))
    line = _run(_prepare_command(good_folder, data_dir))
    assert line.startswith(f'error: no space left on the device: {data_dir};'), line
    assert _leftovers(data_dir) == []


@pytest.mark.slow  # A subprocess (~10 s).
def test_a_disk_that_fills_while_tfds_writes_the_records_is_one_line(good_folder, tmp_path):
    """A real full disk (a 128 KB tmpfs): the train chunk (~73 KB) is written, TFDS's records
    of it are not (TFDS wraps the error in a RuntimeError)."""
    disk = tmp_path / 'disk'
    disk.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=128k', 'tmpfs', str(disk)],
                      capture_output=True).returncode:
        pytest.skip('cannot mount a small tmpfs here (needs root)')
    data_dir = disk / 'tfds'
    try:
        line = _run(_prepare_command(good_folder, data_dir))
        chunk = _first_chunk(downsampled.get_builder('folder', str(data_dir), str(good_folder)),
                             'train', 6)
        assert line.startswith(f'error: no space left on the device: {data_dir};'), line
        assert _leftovers(data_dir) == []
        assert os.path.exists(chunk[:-len('.incomplete')])  # Complete: a rerun reuses it.
    finally:
        subprocess.run(['umount', '-l', str(disk)], check=False)
