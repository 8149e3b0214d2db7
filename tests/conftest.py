"""Test setup: two simulated CPU devices compiled at -O0 (set before jax is imported), TF kept
off accelerators, and one persistent XLA compilation cache for the whole session.

The cache is why the suite is quick: tiny CPU tests spend most of their time compiling the same
few programs (the tiny AlexNet's init, train and eval steps), in this process, in the other xdist
worker and in every launch.py / tool subprocess a test starts. The variables below are set before
jax is imported and inherited by subprocesses (`dict(os.environ, ...)`), so each program compiles
once per session. Set JAX_ENABLE_COMPILATION_CACHE=false to run without it.
"""

import atexit
import os
import shutil
import tempfile

# Two CPU devices; LLVM at -O0: the tests' tiny programs spend far longer compiling than
# running, and -O0 compiles them ~1.4x faster (tests/test_models.py, test_features.py and
# test_evaluate.py: 289 s -> 203 s, fresh cache, busy machine). The HLO (and so what is
# computed) is the same; every process of a test, subprocesses included, shares the flags.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2 '
                      '--xla_backend_optimization_level=0')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    # Made by the first process that loads this file (the xdist controller, or plain pytest);
    # xdist workers and subprocesses inherit it. Removed when that process exits.
    _cache_dir = tempfile.mkdtemp(prefix='alexnet-jax-test-xla-cache-')
    os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
# Cache every program, however quick to compile or small (the defaults skip those under 1 s).
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')

import pytest  # noqa: E402  (after the environment above, as everything that imports jax)

import alexnet_jax  # noqa: E402,F401  (its TensorFlow log defaults, before a test imports TF)


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
    """The embedded `digits` TFDS set, built once per session (per xdist worker) offline."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    from alexnet_jax.data import digits  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    data_dir = str(tmp_path_factory.mktemp('tfds'))
    tfds.builder('digits', data_dir=data_dir).download_and_prepare()
    return data_dir


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
    """(workdir, results) of helpers.tiny_config() trained once: 6 steps, checkpoints at 3 and 6.

    Read it, or copy it (shutil.copytree) before a test changes it: other tests share it."""
    from alexnet_jax import train  # pylint: disable=import-outside-toplevel
    from tests import helpers  # pylint: disable=import-outside-toplevel
    workdir = tmp_path_factory.mktemp('tiny_run') / 'run'
    results = train.train_and_evaluate(helpers.tiny_config(), str(workdir))
    return workdir, results
