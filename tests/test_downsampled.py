"""The 256x256 copy: geometry against PIL, resume after an interruption, and use by config."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from configs import alexnet  # noqa: E402
from alexnet_jax.data import input_pipeline as ip  # noqa: E402
from alexnet_jax.data import downsampled  # noqa: E402

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
