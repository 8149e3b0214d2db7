"""Checks a config before any work, so a bad value fails in a second with the field's name.

Each section has one small checker; `validate_config` runs those whose section is present.
A checker raises `ConfigError` through `check(condition, field, message)`.
"""

import jax.numpy as jnp

from alexnet_jax import models


class ConfigError(ValueError):
    """A config field has an impossible value; the message names the field and the fix."""


def check(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f'config.{field}: {message}')


def _one_of(section, name: str, choices) -> None:
    value = section[name]
    check(value in choices, f'{_prefix(section)}{name}',
          f'{value!r} is not one of {sorted(choices)}.')


def _prefix(section) -> str:
    return getattr(section, '_validation_prefix', '')


def _positive(section, prefix: str, *names: str) -> None:
    for name in names:
        value = section[name]
        check(value > 0, f'{prefix}{name}', f'must be > 0, got {value!r}.')


def _is_dtype(name: str) -> bool:
    try:
        return jnp.issubdtype(jnp.dtype(name), jnp.floating)
    except TypeError:
        return False


def validate_model(m) -> None:
    p = 'model.'
    check(m.activation in models.ACTIVATIONS, p + 'activation',
          f'{m.activation!r} is not one of {sorted(models.ACTIVATIONS)}.')
    check(m.lrn_convention in models.LRN_CONVENTIONS, p + 'lrn_convention',
          f'{m.lrn_convention!r} is not one of {list(models.LRN_CONVENTIONS)}.')
    check(m.init_scheme in models.INITS, p + 'init_scheme', f'{m.init_scheme!r} is not one of {list(models.INITS)}.')
    check(m.groups in (1, 2), p + 'groups', f'must be 1 or 2 (the paper\'s two GPUs), got {m.groups!r}.')
    _positive(m, p, 'num_classes', 'width', 'pool_window', 'pool_stride', 'lrn_k', 'lrn_beta')
    check(m.lrn_alpha >= 0, p + 'lrn_alpha', f'must be >= 0, got {m.lrn_alpha!r}.')
    check(m.lrn_n >= 1 and m.lrn_n % 2 == 1, p + 'lrn_n',
          f'must be a positive odd number of channels, got {m.lrn_n!r}.')
    check(0 <= m.dropout_rate < 1, p + 'dropout_rate', f'must be in [0, 1), got {m.dropout_rate!r}.')
    check(0 <= m.bn_momentum < 1, p + 'bn_momentum', f'must be in [0, 1), got {m.bn_momentum!r}.')
    for name in ('dtype', 'param_dtype'):
        check(_is_dtype(m[name]), p + name,
              f'{m[name]!r} is not a float dtype (float32, bfloat16, float16).')


def validate_data(d) -> None:
    minimum = None
    if 'image_size' in d:
        minimum = models.min_input_size()
        check(d.image_size >= minimum, 'data.image_size',
              f'{d.image_size} is below the smallest input AlexNet accepts ({minimum}); '
              f'use at least {minimum}.')


def validate_train(t) -> None:
    if 'batch_size' in t:
        check(t.batch_size > 0, 'train.batch_size', f'must be > 0, got {t.batch_size!r}.')


VALIDATORS = {
    'model': validate_model,
    'data': validate_data,
    'train': validate_train,
}


def validate_config(config) -> None:
    """Raises `ConfigError` naming the first bad field of `config`."""
    for section, validator in VALIDATORS.items():
        if section in config:
            validator(config[section])
    if 'model' in config and 'data' in config and 'image_size' in config.data:
        minimum = models.min_input_size(config.model.pool_window, config.model.pool_stride)
        check(config.data.image_size >= minimum, 'data.image_size',
              f'{config.data.image_size} is below the smallest input this net accepts with '
              f'pool {config.model.pool_window}/{config.model.pool_stride} ({minimum}).')
