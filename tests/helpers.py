"""What several test modules share: the tiny configs, reading a run's checkpoint, comparing
parameter trees, launching launch.py, writing an image folder, the paper's layer table.

Test modules import from here (or take conftest's fixtures), never from each other. The tiny
configs agree in every shape (width, image size, batch sizes), so the programs they compile are
compiled once per session and then come from the persistent cache that conftest sets up.
"""

import atexit
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import tensorflow as tf

from configs import alexnet
from alexnet_jax import checkpoints
from alexnet_jax.data import input_pipeline
from alexnet_jax import train

ROOT = pathlib.Path(__file__).resolve().parent.parent


# --- the tiny run -------------------------------------------------------------------------------

def tiny_config(**train_overrides):
    """AlexNet at 5% width on 67x67 fake images: a step takes milliseconds."""
    c = alexnet.get_config('fake')
    c.model.update(width=0.05, num_classes=10)
    c.data.update(fake_shape=(70, 70, 3), fake_num_classes=10, fake_train_examples=64,
                  fake_eval_examples=20, resize_size=70, image_size=67)
    c.train.update(batch_size=8, eval_batch_size=8, num_steps=6, log_every_steps=2,
                   eval_every_steps=3, checkpoint_every_steps=3, plot=False)
    c.train.update(train_overrides)
    return c


# tiny_config as launch.py flags.
TINY = ['--config=configs/alexnet.py:fake', '--config.model.width=0.05',
        '--config.model.num_classes=10', '--config.data.fake_shape=(70,70,3)',
        '--config.data.fake_num_classes=10', '--config.data.fake_train_examples=64',
        '--config.data.fake_eval_examples=20', '--config.data.resize_size=70',
        '--config.data.image_size=67', '--config.train.batch_size=8',
        '--config.train.eval_batch_size=8', '--config.train.plot=False']


MODES = ('one', 'vmap', 'map')  # The loop's paths: one seed, several stepped together.


def in_mode(config, mode: str):
    """config as `mode` runs it: 'one' unchanged; 'vmap' / 'map' two seeds stepped together,
    on the device-resident data they need."""
    if mode != 'one':
        config.data.update(train_augment='small', device_resident='always', pad=4)
        config.update(num_seeds=2, seeds_mode=mode)
    return config


def seed_dirs(workdir, mode: str) -> list:
    """The workdirs of the seeds of a run in `mode` (its own for one seed, else seed<k>/)."""
    workdir = pathlib.Path(workdir)
    return [workdir] if mode == 'one' else [workdir / 'seed0', workdir / 'seed1']


def seed_results(out, mode: str) -> list:
    return [out] if mode == 'one' else [out[0], out[1]]


def device_config(**train_overrides):
    """tiny_config with its training set resident on the devices (augmentation in the step)."""
    c = tiny_config(**train_overrides)
    c.data.update(train_augment='small', device_resident='always', fake_shape=(67, 67, 3),
                  fake_train_examples=40, pad=4)
    return c


def saved_state(config, workdir):
    """(state, meta) of the latest checkpoint in `workdir`."""
    info = input_pipeline.get_info(config)
    num_steps, steps_per_epoch = train.num_train_steps(config)
    target, _ = train.initial_state(config, info, steps_per_epoch, num_steps)
    ckpt = checkpoints.Checkpointer(
        workdir, config_fingerprint=checkpoints.config_fingerprint(config))
    try:
        return ckpt.restore(target)
    finally:
        ckpt.close()


def shard(batch, devices: int):
    """A host batch [n, ...] as pmap takes it on `devices` devices: [devices, n // devices, ...]."""
    return jax.tree.map(lambda x: x.reshape((devices, -1) + x.shape[1:]), batch)


def assert_trees_close(a, b, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-6)


_RUNNING = []  # launch.py processes started with wait=False.


@atexit.register
def _kill_running():
    """A test run that is stopped or fails leaves no launch.py training on (a run started with
    wait=False lasts minutes; one orphaned by a killed pytest once trained for 44 minutes)."""
    for p in _RUNNING:
        if p.poll() is None:
            p.kill()


def subprocess_env(devices: int = 2, **extra) -> dict:
    """The test run's environment for a subprocess on `devices` simulated CPU devices: conftest's
    XLA flags and compilation cache, so it compiles what the tests compiled already only once.
    TensorFlow's log settings are left out: the entry points must be quiet by themselves, as a
    user runs them (alexnet_jax/__init__.py), on every CPU."""
    flags = re.sub(r'--xla_force_host_platform_device_count=\d+',
                   f'--xla_force_host_platform_device_count={devices}', os.environ['XLA_FLAGS'])
    env = {k: v for k, v in os.environ.items()
           if k not in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS')}
    return dict(env, XLA_FLAGS=flags, JAX_PLATFORMS='cpu', **extra)


def launch(*args, devices=2, wait=True):
    """launch.py in a subprocess on `devices` simulated CPU devices (the test's compilation cache
    comes with the environment)."""
    env = subprocess_env(devices)
    p = subprocess.Popen([sys.executable, 'launch.py', *args], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        _RUNNING.append(p)
        return p
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


# --- data on disk -------------------------------------------------------------------------------

def write_folder(root, layout):
    """layout: {split: {class: number of good JPEGs}}; returns the written paths."""
    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for label, count in classes.items():
            os.makedirs(os.path.join(root, split, label), exist_ok=True)
            for i in range(count):
                jpeg = tf.io.encode_jpeg(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
                tf.io.write_file(os.path.join(root, split, label, f'{i}.jpg'), jpeg)


# --- the paper's layer table, written out independently of models.CONV_SPECS --------------------

PAPER_CONVS = [  # (k, c_in, c_out, grouped)
    (11, 3, 96, False), (5, 96, 256, True), (3, 256, 384, False), (3, 384, 384, True),
    (3, 384, 256, True)]
PAPER_FCS = [(6 * 6 * 256, 4096), (4096, 4096), (4096, 1000)]


def expected_params(groups: int) -> int:
    convs = sum(k * k * (cin // (groups if g else 1)) * cout + cout
                for k, cin, cout, g in PAPER_CONVS)
    return convs + sum(i * o + o for i, o in PAPER_FCS)
