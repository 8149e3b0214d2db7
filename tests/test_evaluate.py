"""alexnet_jax.tools.evaluate against a direct numpy computation: a folder of PNGs whose pixels the test
knows, the model applied to every image at once, top-1 / top-5 / loss counted by hand, for the
center crop and the paper's 10 crops (softmax averaged). 13 images over 2 simulated devices:
the last batch is padded, and every image must count exactly once."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax.tools import convert
from alexnet_jax import models
from alexnet_jax import evaluation
from tests.helpers import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
N, CLASSES, SOURCE, SIZE = 13, 6, 70, 67   # Images 70x70, crops 67x67 (resize_size=70).
MEAN, STD = (120.0, 110.0, 100.0), (60.0, 64.0, 70.0)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    """root/test/c<k>/<i>.png; image i has label i % CLASSES. Returns (root, images, labels)."""
    root = tmp_path_factory.mktemp('folder')
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, SOURCE, SOURCE, 3), dtype=np.uint8)
    labels = np.arange(N) % CLASSES
    for i, (image, label) in enumerate(zip(images, labels)):
        path = root / 'test' / f'c{label}' / f'{i:02d}.png'
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(image).numpy())  # Lossless: the test knows the pixels.
    return root, images, labels


def checkpoint_config(root=None, eval_batch_size=4):
    config = convert.default_config()
    config.model.update(width=0.0625, num_classes=CLASSES, init_scheme='he')
    config.data.update(image_size=SIZE, resize_size=SOURCE, mean_rgb=MEAN, stddev_rgb=STD,
                       test_split='test')
    if root is not None:
        config.data.update(name='folder', folder_root=str(root))
    config.train.eval_batch_size = eval_batch_size
    return config


def write_checkpoint(directory, config, seed=0):
    model = models.create_model(config.model)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 3)))
    convert.write_pretrained(directory, config, jax.device_get(variables['params']),
                             {'source': 'test'})
    return model, variables


def direct_metrics(model, variables, images, labels, crops: str) -> dict:
    """The paper's test, written out: crops of the uint8 images, normalised, softmax averaged."""
    c, d = SIZE, SOURCE - SIZE
    if crops == 'center':
        views = [images[:, d // 2:d // 2 + c, d // 2:d // 2 + c]]
    else:  # Center and the four corners, then ('ten') all five mirrored.
        views = [images[:, y:y + c, x:x + c] for y, x in
                 [(d // 2, d // 2), (0, 0), (0, d), (d, 0), (d, d)]]
        views += [v[:, :, ::-1] for v in views] if crops == 'ten' else []
    probs = np.mean([np.asarray(jax.nn.softmax(model.apply(
        variables, (v.astype(np.float32) - np.array(MEAN, np.float32))
        / np.array(STD, np.float32)))) for v in views], axis=0)
    order = np.argsort(-probs, axis=-1)
    return {
        'top1': float(np.mean(order[:, 0] == labels)),
        'top5': float(np.mean((order[:, :5] == labels[:, None]).any(axis=1))),
        'loss': float(np.mean(-np.log(probs[np.arange(len(labels)), labels] + 1e-12))),
    }


@pytest.mark.parametrize('eval_batch_size, data_from_run_config', [(4, False), (6, True)])
def test_center_and_ten_crops_equal_direct_computation(folder, tmp_path, eval_batch_size,
                                                       data_from_run_config):
    root, images, labels = folder
    if data_from_run_config:  # The checkpoint knows only ImageNet; the run supplies the folder.
        model, variables = write_checkpoint(tmp_path / 'ckpt', checkpoint_config())
        run = checkpoint_config(root, eval_batch_size)
        run.data.update(image_size=99, mean_rgb=(0.0, 0.0, 0.0))  # Ignored: the weights' own.
        results = evaluation.evaluate_checkpoint(tmp_path / 'ckpt', run, crops='both')
    else:
        model, variables = write_checkpoint(tmp_path / 'ckpt',
                                            checkpoint_config(root, eval_batch_size))
        results = evaluation.evaluate_checkpoint(tmp_path / 'ckpt', crops='both')
    assert results['num_examples'] == N and results['split'] == 'test'
    for crops in ('center', 'ten'):
        want = direct_metrics(model, variables, images, labels, crops)
        got = results[crops]
        assert got['top1'] == pytest.approx(want['top1'], abs=1e-9), crops
        assert got['top5'] == pytest.approx(want['top5'], abs=1e-9), crops
        assert got['loss'] == pytest.approx(want['loss'], rel=1e-5), crops
    written = json.loads((tmp_path / 'ckpt' / 'eval' / 'results.json').read_text())
    assert written == json.loads(json.dumps(results))


def test_ten_crops_average_softmax_not_logits(folder, tmp_path):
    """The 10-crop loss is that of the averaged softmax: it differs from averaging logits."""
    root, images, labels = folder
    model, variables = write_checkpoint(tmp_path / 'ckpt', checkpoint_config(root), seed=3)
    results = evaluation.evaluate_checkpoint(tmp_path / 'ckpt', crops='ten',
                                           output=tmp_path / 'ten.json')
    assert 'center' not in results and (tmp_path / 'ten.json').exists()
    want = direct_metrics(model, variables, images, labels, 'ten')
    assert results['ten']['loss'] == pytest.approx(want['loss'], rel=1e-5)
    center = direct_metrics(model, variables, images, labels, 'center')
    assert abs(want['loss'] - center['loss']) > 1e-4  # The crops really differ.


def test_ten_crops_do_not_mirror_what_was_trained_without_flips(folder, tmp_path):
    """data.random_flip=False (a mirrored digit is another symbol): the 5 unmirrored crops."""
    root, images, labels = folder
    config = checkpoint_config(root)
    config.data.random_flip = False
    model, variables = write_checkpoint(tmp_path / 'ckpt', config, seed=3)
    results = evaluation.evaluate_checkpoint(tmp_path / 'ckpt', crops='ten',
                                           output=tmp_path / 'ten.json')
    want = direct_metrics(model, variables, images, labels, 'five')
    assert results['ten']['loss'] == pytest.approx(want['loss'], rel=1e-5)
    mirrored = direct_metrics(model, variables, images, labels, 'ten')
    assert abs(want['loss'] - mirrored['loss']) > 1e-4  # The mirrored crops would differ.


def test_mismatched_classes_and_bad_crops_are_clear(folder, tmp_path):
    root, _, _ = folder
    config = checkpoint_config(root)
    config.model.num_classes = 7
    write_checkpoint(tmp_path / 'ckpt', config)
    with pytest.raises(ValueError, match=r"7 != 6 classes in 'folder'.* predicts those"):
        evaluation.evaluate_checkpoint(tmp_path / 'ckpt')
    with pytest.raises(ValueError, match='--crops'):
        evaluation.evaluate_checkpoint(tmp_path / 'ckpt', crops='five')


def run_cli(*args):
    env = subprocess_env()
    p = subprocess.run([sys.executable, '-m', 'alexnet_jax.tools.evaluate', *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.slow  # Two CLI subprocesses.
def test_cli_writes_results_and_bad_path_is_one_line(folder, tmp_path):
    root, images, labels = folder
    model, variables = write_checkpoint(tmp_path / 'ckpt', checkpoint_config())
    code, out, err = run_cli(f'--checkpoint={tmp_path / "ckpt"}', '--crops=center',
                             '--config=configs/alexnet.py', '--config.data.name=folder',
                             f'--config.data.folder_root={root}', '--split=test',
                             '--config.train.eval_batch_size=2', f'--output={tmp_path / "out"}')
    assert code == 0, err
    results = json.loads((tmp_path / 'out' / 'results.json').read_text())
    want = direct_metrics(model, variables, images, labels, 'center')
    assert results['center']['top1'] == pytest.approx(want['top1'], abs=1e-9)
    assert 'center' in out and 'top-1' in out
    code, out, err = run_cli(f'--checkpoint={tmp_path / "missing"}')
    assert code == 1
    assert err.strip().startswith('error:') and len(err.strip().splitlines()) == 1, err
    assert f'{tmp_path / "missing"} does not exist' in err
