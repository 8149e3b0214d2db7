"""XLA's persistent compilation cache: where cli.use_compilation_cache puts it, and that a seed's
programs do not depend on the seed, so every seed of a sweep after the first compiles nothing."""

import jax
from jax import monitoring
import pytest

from alexnet_jax import cli
from alexnet_jax import train
from tests import helpers


@pytest.fixture
def cache_dir_setting():
    """Restores jax's cache settings after a test changes them."""
    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
    yield
    jax.config.update('jax_compilation_cache_dir', saved[0])
    jax.config.update('jax_enable_compilation_cache', saved[1])


def test_default_directory_respects_xdg_and_jax_settings(tmp_path, monkeypatch, cache_dir_setting):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    jax.config.update('jax_compilation_cache_dir', None)
    assert cli.use_compilation_cache() == str(tmp_path / 'alexnet_jax' / 'xla')
    jax.config.update('jax_compilation_cache_dir', str(tmp_path / 'mine'))  # $JAX_..._DIR
    assert cli.use_compilation_cache() == str(tmp_path / 'mine')
    jax.config.update('jax_enable_compilation_cache', False)
    assert cli.use_compilation_cache() is None


@pytest.mark.parametrize('make_config', [helpers.tiny_config, helpers.device_config],
                         ids=['tf.data', 'device-resident'])
def test_a_second_seed_compiles_nothing(tmp_path, make_config):
    """conftest's session cache is on (as launch.py and the sweep turn it on): after seed 0 has
    run, seed 1's run finds every program it needs in the cache."""
    assert jax.config.jax_compilation_cache_dir, 'conftest sets a session cache'
    train.train_and_evaluate(make_config(), str(tmp_path / 'seed0'))
    events = []
    listener = lambda event, **kwargs: events.append(event)  # noqa: E731
    monitoring.register_event_listener(listener)
    try:
        config = make_config()
        config.seed = 1
        train.train_and_evaluate(config, str(tmp_path / 'seed1'))
    finally:
        monitoring.unregister_event_listener(listener)
    hits = events.count('/jax/compilation_cache/cache_hits')
    misses = events.count('/jax/compilation_cache/cache_misses')
    assert misses == 0 and hits >= 2, (hits, misses)  # The train and eval steps at least.
