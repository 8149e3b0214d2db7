r"""Any layer's activations for a data split, batched and pmapped like evaluation.

  python -m alexnet_jax.tools.features --checkpoint=/tmp/bvlc --layer=fc7 --split=validation \
      --output=/tmp/fc7.npz [--config=configs/alexnet.py:digits]

--checkpoint is a converted checkpoint or a training workdir (evaluation.load); the net and its
preprocessing (image_size, resize_size, mean_rgb, stddev_rgb) come from its own config.
--config, if given, supplies only the data *source* (its data section minus those preprocessing
fields): e.g. a folder of images or another TFDS set for a pretrained ImageNet net.

The .npz holds `features` [n, ...] (float32, in the split's order on this host), `labels` [n] and
`ids` [n] (the example's position in this host's part of the split; padding dropped), and `layer`.
With several hosts each writes its own part: OUTPUT becomes NAME.process-I-of-N.npz.
"""

import itertools
import math
import pathlib

from absl import app
from absl import flags
from etils import epy
import numpy as np

from alexnet_jax import cli

with epy.lazy_imports():  # Loaded on first use: --help answers before jax loads.
    import jax
    from alexnet_jax import evaluation
    from alexnet_jax import models
    from alexnet_jax import parallel
    from alexnet_jax import records
    from alexnet_jax.data import preprocess

def check_layer(model, layer: str) -> None:
    if layer not in models.LAYERS:
        raise cli.InputError(f'--layer={layer!r} is not one of {list(models.LAYERS)}.')
    if layer.startswith('lrn') and not getattr(model, 'lrn', False):
        raise cli.InputError(f'--layer={layer}: this net has no LRN (model.lrn=False).')


def _pmapped(model, layer: str, mean, std):
    def fn(variables, images):
        images = preprocess.normalize_batch({'image': images}, mean, std)
        _, state = model.apply(variables, images, train=False, mutable=['intermediates'])
        return state['intermediates'][layer + '_out'][0]
    return jax.pmap(fn, axis_name=parallel.AXIS)


def extract(model, variables, batches, layer: str, keep_images: bool = False, *, mean=0.0,
            std=1.0) -> dict:
    """Runs `model` over device batches {'image': [devices, per_device, H, W, C], 'label', 'mask'},
    normalised on the device with `mean`/`std` (`mean_std` for the pipeline's uint8 batches).

    Returns {'features', 'labels', 'ids'} (and 'images' when keep_images) for the unmasked
    examples, in order; ids count every example seen (padding excluded)."""
    check_layer(model, layer)
    fn = _pmapped(model, layer, mean, std)
    replicated = parallel.replicate(variables)
    out = {'features': [], 'labels': [], 'images': []}
    for batch in batches:
        images = batch['image']
        if images.ndim == 6:  # [devices, per_device, crops, H, W, C]
            raise cli.InputError('features need one crop per image: set --config.data.eval_crops=center.')
        feats = np.asarray(fn(replicated, images))
        mask = np.asarray(batch.get('mask', np.ones(images.shape[:2], bool))).reshape(-1).astype(bool)
        out['features'].append(feats.reshape((-1,) + feats.shape[2:])[mask])
        out['labels'].append(np.asarray(batch['label']).reshape(-1)[mask])
        if keep_images:
            out['images'].append(np.asarray(images).reshape((-1,) + images.shape[2:])[mask])
    if not out['features']:
        raise cli.InputError('no batches: the split is empty.')
    result = {k: np.concatenate(v) for k, v in out.items() if v}
    result['ids'] = np.arange(len(result['labels']))
    return result


def split_batches(config, split: str, examples: int | None = None):
    """The split's eval batches, one center crop per image; with `examples`, enough for those."""
    from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel  (TF: slow)
    if 'eval_crops' in config.data:
        config = config.copy_and_resolve_references()
        config.data.eval_crops = 'center'
    batches = input_pipeline.eval_iterator(config, split)
    return batches if examples is None else itertools.islice(
        batches, math.ceil(examples / config.train.eval_batch_size))


def split_features(config, model, variables, split: str, layer: str, examples=None, **kw) -> dict:
    """`extract` over the split (its first `examples`, if given)."""
    mean, std = mean_std(config)  # The pipeline's batches are uint8.
    out = extract(model, variables, split_batches(config, split, examples), layer,
                  mean=mean, std=std, **kw)
    return out if examples is None else {key: v[:examples] for key, v in out.items()}


def mean_std(config):
    """The (mean, std) that the pipeline's uint8 batches of `config.data` are normalised with."""
    from alexnet_jax.data import sources  # pylint: disable=import-outside-toplevel  (TF)
    return preprocess.mean_std(config.data, sources.get_source(config.data).channels)


def output_path(output: str) -> pathlib.Path:
    path = pathlib.Path(output)
    if path.suffix != '.npz':
        raise cli.InputError(f'--output={output} must end in .npz (features, labels and ids).')
    if not path.parent.is_dir():  # Checked before the features are computed, not after.
        raise cli.InputError(f'--output={output}: {path.parent} is not a directory; create it '
                             f'or choose another path.')
    if jax.process_count() > 1:
        path = path.with_name(f'{path.stem}.process-{jax.process_index()}-of-{jax.process_count()}.npz')
    return path


def save(path, layer: str, result: dict) -> None:
    """The .npz, whole or not at all (records.replacing)."""
    with records.replacing(path) as tmp, tmp.open('wb') as f:
        np.savez(f, layer=layer, **result)


def define_flags() -> None:
    flags.DEFINE_string('checkpoint', None, 'A converted checkpoint or a training workdir.')
    flags.DEFINE_string('layer', 'fc7', "A layer's name, e.g. conv5, pool5, fc7 "
                        '(models.LAYERS lists them).')
    flags.DEFINE_string('split', None, 'Data split (default: the config\'s data.test_split).')
    flags.DEFINE_string('output', None, 'features.npz to write.')
    cli.define_config_flag(default=None)  # Optional: another data source.


@cli.one_line_errors
def main(argv):
    del argv
    FLAGS = flags.FLAGS  # pylint: disable=invalid-name
    if not FLAGS.checkpoint or not FLAGS.output:
        cli.fail('--checkpoint and --output are required: python -m alexnet_jax.tools.features '
                 '--checkpoint=DIR --layer=fc7 --split=validation --output=feats.npz')
    path = output_path(cli.local_path(FLAGS.output, '--output'))
    config, model, variables = evaluation.load(cli.local_path(FLAGS.checkpoint, '--checkpoint'))
    check_layer(model, FLAGS.layer)
    if FLAGS.config is not None:
        config = evaluation.with_data_from(config, cli.validated_config().data)
    split = FLAGS.split or config.data.test_split
    result = split_features(config, model, variables, split, FLAGS.layer)
    save(path, FLAGS.layer, result)
    print(f'Wrote {path}: {FLAGS.layer} features {result["features"].shape} of split {split!r}.')


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
