"""configs/alexnet.py holds the paper's values and validation names the bad field."""

import jax
import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags
import pytest

from alexnet_jax import cli
from alexnet_jax import models
from alexnet_jax import validation
from configs import alexnet


def test_default_is_the_papers_recipe():
    c = alexnet.get_config()
    validation.validate_config(c)
    m = c.model
    assert (m.activation, m.lrn, m.lrn_k, m.lrn_n, m.lrn_alpha, m.lrn_beta) == \
        ('relu', True, 2.0, 5, 1e-4, 0.75)
    assert (m.pool_window, m.pool_stride, m.dropout_rate, m.groups) == (3, 2, 0.5, 1)
    assert (c.optim.learning_rate, c.optim.momentum, c.optim.weight_decay) == (0.01, 0.9, 5e-4)
    assert c.train.batch_size == 128 and c.data.image_size == 227


def test_variants_validate_and_unknown_variant_lists_valid_ones():
    for name in alexnet.VARIANTS:
        validation.validate_config(alexnet.get_config(name))
    with pytest.raises(ValueError, match='choose one of'):
        alexnet.get_config('imagenet22k')


@pytest.mark.parametrize('field,value', [
    ('activation', 'swish2'), ('groups', 4), ('dropout_rate', 1.0), ('width', 0.0),
    ('init_scheme', 'orthogonal'), ('dtype', 'int8'), ('lrn_convention', 'tf'), ('num_classes', 0),
])
def test_bad_model_field_is_named(field, value):
    c = alexnet.get_config()
    c.model[field] = value
    with pytest.raises(validation.ConfigError, match=f'config.model.{field}'):
        validation.validate_config(c)


def test_even_lrn_size_is_named_by_the_model_that_reads_it():
    # One check of config.model.lrn_n: where the model builds its LRN layers (models.py).
    c = alexnet.get_config('digits')
    c.model.lrn_n = 4
    validation.validate_config(c)  # Not the validator's rule any more...
    model = models.create_model(c.model)
    with pytest.raises(validation.ConfigError, match=r'config\.model\.lrn_n: .*odd.*got 4'):
        model.init(jax.random.key(0), jnp.zeros((1, 67, 67, 3)))


def _parse(*argv):
    """The config as launch.py's flag parser makes it (config_flags, locked as cli does)."""
    fv, argv = flags.FlagValues(), ['launch.py', *argv]
    config_flags.DEFINE_config_file('config', None, flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    return fv.config


@pytest.mark.parametrize('variant, batch', [('lars4k', 8192), ('lars32k', 1024)])
def test_values_derived_from_the_batch_follow_an_override(variant, batch):
    c = _parse(f'--config=configs/alexnet.py:{variant}', f'--config.train.batch_size={batch}')
    steps_per_epoch = 1_281_167 // batch  # ImageNet's training set.
    assert c.train.batch_size == batch
    assert c.optim.learning_rate == pytest.approx(0.625 * batch / 256)  # Linear scaling rule.
    assert c.train.eval_every_steps == 5 * steps_per_epoch
    assert c.train.checkpoint_every_steps == 2 * steps_per_epoch
    assert c.train.log_every_steps == steps_per_epoch // 8
    assert c.to_dict()['optim']['learning_rate'] == pytest.approx(0.625 * batch / 256)
    validation.validate_config(c)


def test_an_overridden_derived_value_is_kept():
    c = _parse('--config=configs/alexnet.py:lars4k', '--config.train.batch_size=8192',
               '--config.optim.learning_rate=5')
    assert c.optim.learning_rate == 5.0 and c.train.eval_every_steps == 5 * (1_281_167 // 8192)


def test_config_changes_lists_overrides_and_what_follows_them():
    c = _parse('--config=configs/alexnet.py:lars4k', '--config.train.batch_size=8192',
               '--config.model.width=0.5')
    changes = cli.config_changes(c, alexnet.get_config('lars4k'))
    spe4k, spe8k = 1_281_167 // 4096, 1_281_167 // 8192
    assert sorted(changes) == sorted([
        'model.width: 1.0 -> 0.5', 'train.batch_size: 4096 -> 8192',
        f'optim.learning_rate: {0.625 * 4096 / 256!r} -> {0.625 * 8192 / 256!r}',
        f'train.eval_every_steps: {5 * spe4k} -> {5 * spe8k}',
        f'train.checkpoint_every_steps: {2 * spe4k} -> {2 * spe8k}',
        f'train.log_every_steps: {spe4k // 8} -> {spe8k // 8}'])
    assert cli.config_changes(alexnet.get_config('digits'), alexnet.get_config('digits')) == []


@pytest.mark.parametrize('field,value', [('seeds_mode', 'threads'), ('seed_workers', -1),
                                         ('num_seeds', 0)])
def test_bad_seed_fields_are_named(field, value):
    c = alexnet.get_config('digits')
    c[field] = value
    with pytest.raises(validation.ConfigError, match=f'config.{field}:'):
        validation.validate_config(c)


@pytest.mark.parametrize('spec, expected', [
    ('configs/alexnet.py:digits', ('configs/alexnet.py', 'digits')),
    ('configs/alexnet.py', ('configs/alexnet.py', '')),
    ('/d/c:g/alexnet.py:digits', ('/d/c:g/alexnet.py', 'digits')),  # Once split at 'c:'.
    ('/d/c:g/alexnet.py', ('/d/c:g/alexnet.py', '')),
])
def test_a_config_spec_splits_at_the_variants_colon(spec, expected):
    from alexnet_jax import cli  # pylint: disable=import-outside-toplevel
    assert cli.split_config_spec(spec) == expected


def test_a_sweep_base_in_a_directory_with_a_colon_loads(tmp_path):
    import shutil  # pylint: disable=import-outside-toplevel
    from alexnet_jax.tools import grid  # pylint: disable=import-outside-toplevel
    directory = tmp_path / 'c:g'
    directory.mkdir()
    shutil.copy(grid.REPO / 'configs' / 'alexnet.py', directory)
    config = grid.load_base_config(f'{directory}/alexnet.py:digits')
    assert config.variant == 'digits'
