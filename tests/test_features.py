"""Feature extraction: shapes, equality with the model's own intermediates, padding dropped, and
loading both a converted checkpoint and a training workdir."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax.training import train_state

from alexnet_jax import checkpoints
from alexnet_jax.tools import convert
from alexnet_jax.tools import features
from alexnet_jax import models
from alexnet_jax import evaluation

SIZE = 67


def small_config(**model):
    config = convert.default_config()
    config.model.update(dict(width=0.25, num_classes=5, init_scheme='he', **model))
    config.data.image_size = SIZE
    return config


def device_batches(images, labels, per_device, devices):
    """Like input_pipeline.eval_iterator: padded to whole batches, mask False on the padding."""
    n, host = len(images), per_device * devices
    pad = -n % host
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    mask = np.arange(n + pad) < n
    for s in range(0, n + pad, host):
        shard = lambda a: a[s:s + host].reshape((devices, per_device) + a.shape[1:])  # noqa: E731
        yield {'image': shard(images), 'label': shard(labels), 'mask': shard(mask)}


@pytest.mark.parametrize('architecture,layer', [('paper', 'conv1'), ('paper', 'lrn2'),
                                                ('paper', 'pool5'), ('paper', 'fc7'),
                                                ('torchvision', 'pool5'), ('torchvision', 'fc8')])
def test_features_equal_model_intermediates(architecture, layer):
    model = models.AlexNet(architecture=architecture, lrn=architecture == 'paper', width=0.25,
                           num_classes=5, init_scheme='he')
    rng = np.random.default_rng(0)
    images = rng.normal(size=(7, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.arange(7, dtype=np.int32)
    variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    devices = jax.local_device_count()
    got = features.extract(model, variables, device_batches(images, labels, 2, devices), layer)
    _, state = model.apply(variables, images, mutable=['intermediates'])
    want = np.asarray(state['intermediates'][layer + '_out'][0])
    assert got['features'].shape == want.shape  # 7 examples: the padding is dropped.
    np.testing.assert_allclose(got['features'], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got['labels'], labels)
    np.testing.assert_array_equal(got['ids'], np.arange(7))


def test_bad_layer_names():
    with pytest.raises(ValueError, match='not one of'):
        features.check_layer(models.AlexNet(), 'fc9')
    with pytest.raises(ValueError, match='no LRN'):
        features.check_layer(models.AlexNet(lrn=False), 'lrn1')
    with pytest.raises(ValueError, match='.npz'):
        features.output_path('feats.npy')


def test_load_model_from_converted_checkpoint(tmp_path):
    config = small_config()
    model = models.create_model(config.model)
    params = model.init(jax.random.key(1), jnp.zeros((1, SIZE, SIZE, 3)))['params']
    convert.write_pretrained(tmp_path / 'ckpt', config, jax.device_get(params), {'source': 'test'})
    loaded_config, loaded_model, variables = evaluation.load(tmp_path / 'ckpt')
    assert loaded_config.model.width == 0.25 and loaded_model.num_classes == 5
    jax.tree.map(np.testing.assert_array_equal, variables['params'], jax.device_get(params))


def test_load_variables_from_training_workdir(tmp_path):
    """A TrainState checkpoint (as train.py saves it): only params come back, checksummed."""
    config = small_config()
    model = models.create_model(config.model)
    params = model.init(jax.random.key(2), jnp.zeros((1, SIZE, SIZE, 3)))['params']
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.1, 0.9))
    (tmp_path / 'config.json').write_text(json.dumps(config.to_dict(), default=str))
    with checkpoints.Checkpointer(str(tmp_path), config_fingerprint=checkpoints.config_fingerprint(config),
                                  best_metric=None, async_save=False) as ckpt:
        ckpt.save(3, jax.device_get(state), {})
    loaded, variables = checkpoints.load_variables(tmp_path)
    assert set(variables) == {'params'}
    assert isinstance(loaded, ml_collections.ConfigDict) and loaded.model.num_classes == 5
    jax.tree.map(np.testing.assert_array_equal, variables['params'], jax.device_get(params))


def test_with_data_from_keeps_preprocessing():
    config = small_config()
    other = ml_collections.ConfigDict(dict(name='folder', folder_root='/x', image_size=99,
                                           mean_rgb=(0.0, 0.0, 0.0)))
    merged = evaluation.with_data_from(config, other)
    assert merged.data.name == 'folder' and merged.data.folder_root == '/x'
    assert merged.data.image_size == SIZE and tuple(merged.data.mean_rgb) == tuple(config.data.mean_rgb)
    assert config.data.name == 'imagenet2012'  # The original is unchanged.


def test_an_output_in_a_missing_directory_is_refused_before_any_work(tmp_path):
    """Once a traceback after the features were computed."""
    with pytest.raises(ValueError, match='is not a directory; create it'):
        features.output_path(str(tmp_path / 'missing' / 'feats.npz'))
    assert features.output_path(str(tmp_path / 'feats.npz')) == tmp_path / 'feats.npz'
