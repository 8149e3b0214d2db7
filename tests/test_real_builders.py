"""The main command's own data sets, imagenet2012 and cifar10, through their real TFDS builders
under `tfds.testing.mock_data` (random examples; the split sizes and features of the checked-in
metadata, tests/data/tfds_metadata): the default config (227 px, the paper's 10-crop evaluation
on `validation`), `:cifar10` and `:fig1_cifar10` each train a few steps, evaluate, and resume."""

import logging
import pathlib

import pytest
import tensorflow_datasets as tfds

import launch
from alexnet_jax import validation
from configs import alexnet

METADATA = pathlib.Path(__file__).resolve().parent / 'data' / 'tfds_metadata'


def tiny(variant):
    c = alexnet.get_config(variant)
    c.data.data_dir = str(METADATA)
    if c.model.architecture != 'fig1':
        c.model.width = 0.05
    c.train.update(batch_size=4, eval_batch_size=4, num_steps=3, log_every_steps=1,
                   eval_every_steps=0, checkpoint_every_steps=3, plot=False)
    return c


@pytest.mark.slow  # Two short runs of a real-size input pipeline each (~30 s busy).
@pytest.mark.parametrize('variant,split,examples', [
    (None, 'validation', 8), ('cifar10', 'test', 8), ('fig1_cifar10', 'test', 8)])
def test_the_main_configs_train_evaluate_and_resume_on_their_builders(tmp_path, caplog, variant,
                                                                      split, examples):
    config = tiny(variant)
    if variant is None:
        assert (config.data.name, config.data.image_size) == ('imagenet2012', 227)
        config.data.eval_crops = 'ten'  # The paper's test.
    validation.validate_config(config)
    with tfds.testing.mock_data(num_examples=examples, data_dir=str(METADATA)):
        first = launch.run(config, str(tmp_path))
        assert first['steps'] == 3 and first['test_split'] == split
        assert len(first['test_correct']) == examples  # Every example, padding dropped.
        config.train.num_steps = 5
        with caplog.at_level(logging.INFO):
            again = launch.run(config, str(tmp_path))
    assert 'Resumed from step 3' in caplog.text
    assert again['steps'] == 5 and 0 <= again['test_top1'] <= again['test_top5'] <= 1


def test_the_metadata_has_the_real_split_sizes():
    sizes = {}
    for name in ('imagenet2012', 'cifar10'):
        builder = tfds.builder(name, data_dir=str(METADATA))
        sizes[name] = {s: builder.info.splits[s].num_examples for s in builder.info.splits}
    assert sizes == {'imagenet2012': {'train': 1_281_167, 'validation': 50_000, 'test': 100_000},
                     'cifar10': {'train': 50_000, 'test': 10_000}}
