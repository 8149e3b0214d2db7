"""The pipeline: shapes, per-host sharding, padded eval, determinism, resume, folder errors.

Two hosts are simulated in one process by passing process_index / process_count explicitly.
'fake' data with one class per example makes every label an example id, so "each example
exactly once" and "hosts disjoint" are checked on ids, not on counts alone.
"""

import collections
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from configs import alexnet  # noqa: E402
from alexnet_jax import errors  # noqa: E402
from alexnet_jax.data import input_pipeline as ip  # noqa: E402
from tests.helpers import ROOT, subprocess_env, write_folder  # noqa: E402

from sklearn import datasets as sk_datasets  # noqa: E402


def digits_config(data_dir, batch=8, eval_batch=12):
    c = alexnet.get_config('digits')
    c.data.data_dir = data_dir
    c.data.train_augment = 'small'
    c.data.train_split, c.data.eval_split, c.data.test_split = 'train', 'validation', 'test'
    c.train.batch_size, c.train.eval_batch_size = batch, eval_batch
    return c


def fake_config(train=50, evals=37, batch=8, eval_batch=12):
    """Tiny fake images whose label is their example index (one class per example)."""
    c = alexnet.get_config()
    d = c.data
    d.name, d.train_augment, d.image_size, d.pad = 'fake', 'small', 67, 4
    d.fake_shape, d.fake_num_classes = (6, 6, 3), 10 ** 6
    d.fake_train_examples, d.fake_eval_examples = train, evals
    c.train.batch_size, c.train.eval_batch_size = batch, eval_batch
    return c


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def hosts(pc=2, ld=2):
    return [dict(process_index=i, process_count=pc, local_devices=ld) for i in range(pc)]


def test_digits_info(digits_dir):
    info = ip.get_info(digits_config(digits_dir))
    assert info.num_classes == 10 and info.image_shape == (67, 67, 1)
    assert sum(info.num_examples.values()) == 1797
    assert ip.facts(digits_config(digits_dir)).steps_per_epoch == info.num_examples['train'] // 8


@pytest.mark.parametrize('ld,batch', [(2, 8), (1, 6), (4, 16)])
def test_train_batch_shape(digits_dir, ld, batch):
    b = next(ip.train_iterator(digits_config(digits_dir, batch=batch), process_index=0,
                               process_count=1, local_devices=ld))
    assert b['image'].shape == (ld, batch // ld, 67, 67, 1) and b['image'].dtype == np.uint8
    assert b['label'].shape == (ld, batch // ld) and b['label'].dtype == np.int32
    assert 'lighting' not in b  # Gray digits, 'small' transform: no PCA lighting.


@pytest.mark.parametrize('crops,shape', [('center', (67, 67, 1)), ('ten', (75, 75, 1))])
def test_eval_batch_shape(digits_dir, crops, shape):
    c = digits_config(digits_dir)
    c.data.eval_crops = crops
    b = next(ip.eval_iterator(c, 'validation', process_index=0, process_count=1, local_devices=2))
    assert b['image'].shape == (2, 6) + shape and b['image'].dtype == np.uint8
    assert b['label'].shape == b['mask'].shape == (2, 6) and b['mask'].dtype == bool


@pytest.mark.parametrize('n,eval_batch,pc,ld', [(37, 12, 2, 2), (1, 4, 2, 2), (23, 6, 1, 2),
                                                (50, 8, 2, 1)])
def test_padded_eval_sees_every_example_once(n, eval_batch, pc, ld):
    c = fake_config(evals=n, eval_batch=eval_batch)
    per_host = [list(ip.eval_iterator(c, 'validation', **h)) for h in hosts(pc, ld)]
    assert len({len(batches) for batches in per_host}) == 1  # Same batch count on every host.
    ids = [label for batches in per_host for b in batches
           for label in b['label'][b['mask']].tolist()]
    assert sorted(ids) == list(range(n))
    for batches in per_host:
        for b in batches:
            assert (b['image'][~b['mask']] == 0).all()


@pytest.mark.parametrize('split', ['validation', 'train[:101]'])
def test_padded_eval_on_digits_matches_the_split_histogram(digits_dir, split):
    c = digits_config(digits_dir, eval_batch=12)
    counts = collections.Counter()
    for h in hosts(2, 2):
        for b in ip.eval_iterator(c, split, **h):
            counts.update(b['label'][b['mask']].tolist())
    import tensorflow_datasets as tfds
    builder = tfds.builder('digits', data_dir=digits_dir)
    rows = [ex['index'] for ex in tfds.as_numpy(builder.as_dataset(split))]
    expected = collections.Counter(sk_datasets.load_digits().target[rows].tolist())
    assert counts == expected


def test_two_hosts_train_streams_are_disjoint():
    c = fake_config(train=50, batch=8)
    seen = []
    for h in hosts(2, 2):
        # Host batch 4; 7 batches cover one host epoch (25 distinct examples) and then some.
        labels = np.concatenate([b['label'].ravel() for b in take(ip.train_iterator(c, **h), 7)])
        assert len(set(labels[:25].tolist())) == 25
        seen.append(set(labels.tolist()))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 50


def test_same_seed_same_batches_other_seed_different(digits_dir):
    def batches(seed):
        c = digits_config(digits_dir)
        c.seed = seed
        return take(ip.train_iterator(c, process_index=0, process_count=1, local_devices=2), 3)
    a, b, other = batches(0), batches(0), batches(1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x['image'], y['image'])
        np.testing.assert_array_equal(x['label'], y['label'])
    assert not np.array_equal(a[0]['label'], other[0]['label'])
    assert not np.array_equal(a[0]['image'], other[0]['image'])


def test_global_batches_do_not_depend_on_the_local_device_count():
    """A run resumed on 1, 2 or 4 devices trains on the same images (README, resume)."""
    def host_batches(ld):
        it = ip.train_iterator(fake_config(batch=8), start_step=5, process_index=0,
                               process_count=1, local_devices=ld)
        return [{k: v.reshape((-1,) + v.shape[2:]) for k, v in b.items()} for b in take(it, 3)]
    one, *others = [host_batches(ld) for ld in (1, 2, 4)]
    for batches in others:
        for a, b in zip(one, batches):
            np.testing.assert_array_equal(a['image'], b['image'])
            np.testing.assert_array_equal(a['label'], b['label'])


def test_epochs_are_reshuffled_and_augmentation_differs():
    c = fake_config(train=16, batch=16)
    it = ip.train_iterator(c, process_index=0, process_count=1, local_devices=2)
    e0, e1 = take(it, 2)
    assert sorted(e0['label'].ravel()) == sorted(e1['label'].ravel()) == list(range(16))
    assert not np.array_equal(e0['label'], e1['label'])


@pytest.mark.parametrize('start', [1, 7, 13])
def test_resume_equals_uninterrupted_stream(start):
    c = fake_config(train=50, batch=8)  # 25 examples per host: epochs end mid-batch.
    for h in hosts(2, 2):
        full = take(ip.train_iterator(c, **h), start + 4)
        resumed = take(ip.train_iterator(c, start_step=start, **h), 4)
        for x, y in zip(full[start:], resumed):
            np.testing.assert_array_equal(x['label'], y['label'])
            np.testing.assert_array_equal(x['image'], y['image'])


def test_resume_on_digits(digits_dir):
    c = digits_config(digits_dir, batch=64)
    kw = dict(process_index=0, process_count=1, local_devices=2)
    full = take(ip.train_iterator(c, **kw), 22)  # 1257 examples: epoch 2 starts in batch 19.
    resumed = take(ip.train_iterator(c, start_step=19, **kw), 3)
    for x, y in zip(full[19:], resumed):
        np.testing.assert_array_equal(x['image'], y['image'])


@pytest.mark.parametrize('batch,pc,ld', [(10, 1, 4), (8, 3, 1), (12, 2, 4)])
def test_indivisible_batch_is_a_clear_error(batch, pc, ld):
    c = fake_config(batch=batch)
    with pytest.raises(ValueError, match=f'batch_size={batch} does not divide'):
        ip.train_iterator(c, process_index=0, process_count=pc, local_devices=ld)
    c.train.eval_batch_size = batch
    with pytest.raises(ValueError, match=f'{pc * ld} devices'):
        ip.eval_iterator(c, 'validation', process_index=0, process_count=pc, local_devices=ld)


# --- image folders ------------------------------------------------------------------------------

def folder_config(root, strict=False):
    c = alexnet.get_config()
    c.data.name, c.data.folder_root, c.data.strict = 'folder', str(root), strict
    c.data.train_split = c.data.eval_split = c.data.test_split = 'train'
    c.data.image_size, c.data.resize_size = 67, 76
    c.train.batch_size, c.train.eval_batch_size = 2, 4
    return c


@pytest.fixture
def corrupt_folder(tmp_path):
    write_folder(tmp_path, {'train': {'cat': 3, 'dog': 2}})
    good = (tmp_path / 'train' / 'dog' / '0.jpg').read_bytes()
    bad = tmp_path / 'train' / 'dog' / 'truncated.jpg'
    bad.write_bytes(good[:len(good) // 2])
    return tmp_path, str(bad)


def test_corrupt_jpeg_is_skipped_counted_and_named(corrupt_folder, caplog):
    root, bad = corrupt_folder
    with caplog.at_level(logging.WARNING):
        info = ip.get_info(folder_config(root))
    assert info.num_examples['train'] == 5 and info.num_classes == 2
    assert info.skipped_files == {'train': (bad,)}
    assert bad in caplog.text
    batches = list(ip.eval_iterator(folder_config(root), 'train', process_index=0,
                                    process_count=1, local_devices=2))
    assert sum(int(b['mask'].sum()) for b in batches) == 5
    train = next(ip.train_iterator(folder_config(root), process_index=0, process_count=1,
                                   local_devices=2))
    assert train['image'].shape == (2, 1, 67, 67, 3)


def test_corrupt_jpeg_stops_a_strict_run(corrupt_folder):
    root, bad = corrupt_folder
    with pytest.raises(ValueError, match=bad):
        ip.get_info(folder_config(root, strict=True))


def test_empty_class_dir_is_a_clear_error(tmp_path):
    write_folder(tmp_path, {'train': {'cat': 2}})
    os.makedirs(tmp_path / 'train' / 'dog')
    with pytest.raises(ValueError, match='dog has no'):
        ip.get_info(folder_config(tmp_path))


def test_split_without_images_is_a_clear_error(tmp_path):
    write_folder(tmp_path, {'train': {'cat': 2}})
    c = folder_config(tmp_path)
    c.data.eval_split = 'val'
    with pytest.raises(FileNotFoundError, match="no split directory 'val'"):
        ip.get_info(c)


def test_unprepared_tfds_set_says_what_to_do(tmp_path):
    c = alexnet.get_config()
    c.data.data_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match='ILSVRC2012_img_train.tar'):
        ip.get_info(c)
    c.data.name = 'mnist'
    with pytest.raises(FileNotFoundError, match='tfds build mnist'):
        ip.get_info(c)


def test_paper_transform_on_tiny_images_is_a_clear_error(digits_dir):
    c = digits_config(digits_dir)
    c.data.train_augment = 'paper'
    with pytest.raises(errors.UserError, match='train_augment=small'):  # One line, no traceback.
        ip.get_info(c)


def test_an_empty_eval_split_is_a_clear_error():
    c = alexnet.get_config('fake')
    c.data.update(fake_eval_examples=0, fake_shape=(70, 70, 3), resize_size=70, image_size=67)
    with pytest.raises(errors.UserError, match="Split 'validation' of fake is empty"):
        next(ip.eval_iterator(c, 'validation', process_index=0, process_count=1,
                              local_devices=1))


# Builds and iterates every tf.data pipeline of alexnet_jax/data: train and eval (paper and small
# transforms, 10 crops, PCA lighting), an image folder with an unreadable image, the
# device-resident set, the 256x256 preparation; then lists the temp directory, before exit.
_EVERY_PIPELINE = '''
import os, sys
from configs import alexnet
from alexnet_jax.data import device_data, downsampled, input_pipeline as ip
from tests.helpers import write_folder

root = sys.argv[1]
images = os.path.join(root, 'images')
write_folder(images, {'train': {'a': 2, 'b': 2}})
with open(os.path.join(images, 'train', 'a', 'broken.jpg'), 'wb') as f:
    f.write(b'not a jpeg')
for name, augment in [('fake', 'paper'), ('folder', 'small')]:
    c = alexnet.get_config()
    c.data.update(name=name, train_augment=augment, folder_root=images, eval_crops='ten',
                  fake_shape=(40, 40, 3), fake_train_examples=8, fake_eval_examples=4,
                  resize_size=40, image_size=32)
    if name == 'folder':
        c.data.update(train_split='train', eval_split='train')
    c.train.update(batch_size=4, eval_batch_size=4)
    hosts = dict(process_index=0, process_count=1, local_devices=1)
    next(ip.train_iterator(c, **hosts))
    list(ip.eval_iterator(c, c.data.eval_split, **hosts))
device_data.load(c)
downsampled.prepare(downsampled.get_builder('folder', os.path.join(root, 'tfds'), images))
print(sorted(os.listdir(os.environ['TMPDIR'])))
'''


def test_pipelines_leave_no_autograph_files_in_the_temp_dir(tmp_path):
    """tf.data functions are not converted by autograph, which writes a temporary
    `__autograph_generated_file*.py` for every function it converts (alexnet_jax/data/__init__)."""
    temp = tmp_path / 'tmp'
    temp.mkdir()
    p = subprocess.run([sys.executable, '-c', _EVERY_PIPELINE, str(tmp_path)], cwd=ROOT,
                       env=subprocess_env(1, TMPDIR=str(temp)), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    during = p.stdout.strip().splitlines()[-1]
    assert '__autograph_generated_file' not in during, during
    assert not list(temp.glob('__autograph_generated_file*'))
