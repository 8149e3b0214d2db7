"""configs/alexnet.py holds the paper's values and validation names the bad field."""

import pytest

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
    ('activation', 'swish2'), ('groups', 4), ('lrn_n', 4), ('dropout_rate', 1.0), ('width', 0.0),
    ('init_scheme', 'orthogonal'), ('dtype', 'int8'), ('lrn_convention', 'tf'), ('num_classes', 0),
])
def test_bad_model_field_is_named(field, value):
    c = alexnet.get_config()
    c.model[field] = value
    with pytest.raises(validation.ConfigError, match=f'config.model.{field}'):
        validation.validate_config(c)
