"""Fine-tuning: a fresh run that starts from the weights in `config.init_from=DIR`.

DIR is a converted checkpoint (tools/convert.py) or a training workdir. `resolve_config` takes
DIR's net and preprocessing (every model field but RUN_MODEL_FIELDS, and preprocess.
PREPROCESSING; each change logged), so fine-tuning bvlc_alexnet needs no groups/LRN/mean
flags. `load_into` loads every layer whose shapes match and re-initialises a classifier head
of another shape. Only a fresh run loads DIR; a resumed one restores its own checkpoint.
"""

from absl import logging
from flax import traverse_util
import numpy as np

from alexnet_jax import checkpoints
from alexnet_jax.data import preprocess
from alexnet_jax import validation
from alexnet_jax import workdirs

# Model fields that are this run's choice (they do not change what the loaded weights mean).
RUN_MODEL_FIELDS = ('num_classes', 'dropout_rate', 'bn_momentum', 'init_scheme', 'dtype',
                    'param_dtype')


def _fail(message: str):
    raise validation.ConfigError(f'config.init_from: {message}')


def _read(load, directory):
    """`load(directory)`, a directory it cannot read being config.init_from's error."""
    try:
        return load(directory)
    except (workdirs.WorkdirError, checkpoints.CorruptCheckpointError) as e:
        _fail(str(e))


def resolve_config(config):
    """`config` (unchanged if init_from is unset) with DIR's net and preprocessing; a copy."""
    if not config.get('init_from'):
        return config
    source = _read(workdirs.read_config, config.init_from)
    config = config.copy_and_resolve_references()
    changes = []
    for section, keys in (('model', [k for k in source.get('model', {})
                                     if k not in RUN_MODEL_FIELDS]),
                          ('data', preprocess.PREPROCESSING)):
        for key in keys:
            if key in source.get(section, {}) and key in config[section]:
                new = source[section][key]
                if new != config[section][key]:
                    changes.append(f'{section}.{key}: {config[section][key]!r} -> {new!r}')
                    config[section][key] = new
    if changes:
        logging.info('init_from=%s defines the net and its preprocessing:\n  %s',
                     config.init_from, '\n  '.join(changes))
    return config


def head_layer(params) -> str:
    """The classifier: the last layer the model creates (AlexNet's fc8, Fig1Net's fc4)."""
    return 'fc8' if 'fc8' in params else list(params)[-1]


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(tree, sep='/')


def _shapes(tree) -> dict:
    return {k: tuple(np.shape(v)) for k, v in _flat(tree).items()}


def merge(target: dict, source: dict, head: str, where: str = 'params', directory='DIR'):
    """(target with source's layers, loaded names, re-initialised names) for one collection
    {layer: {name: array}}: a `head` of another shape stays fresh, any other difference raises."""
    missing = [layer for layer in target if layer not in source]
    extra = [layer for layer in source if layer not in target]
    if missing or extra:
        _fail(f'{directory} does not have the same layers as this model ({where}): '
              + '; '.join(filter(None, [
                  missing and f'{missing} only here', extra and f'{extra} only in {directory}']))
              + '. Its own config defines the net; check config.model.architecture/batch_norm.')
    merged, loaded, reinit = {}, [], []
    for layer, tree in target.items():
        want, got = _shapes(tree), _shapes(source[layer])
        if want == got:
            flat_src = _flat(source[layer])
            merged[layer] = traverse_util.unflatten_dict(  # In this run's param_dtype.
                {k: np.asarray(flat_src[k], dtype=t.dtype) for k, t in _flat(tree).items()},
                sep='/')
            loaded.append(layer)
            continue
        diff = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        detail = ', '.join(f'{layer}/{k} {got.get(k)} in {directory} vs {want.get(k)} here'
                           for k in diff)
        if layer != head:
            _fail(f'shape mismatch in {where} layer {layer!r}: {detail}. Only the classifier '
                  f'head ({head}) may differ (it is re-initialised); the rest of the net must '
                  f'be the one in {directory}/{workdirs.CONFIG}.')
        logging.info('init_from: re-initialising %s (%s).', layer, detail)
        merged[layer] = tree
        reinit.append(layer)
    return merged, loaded, reinit


def load_into(state, directory):
    """`state` (fresh, on the host) with DIR's params and batch_stats merged in; logs the layers."""
    _, variables = _read(checkpoints.load_variables, directory)
    head = head_layer(state.params)
    params, loaded, reinit = merge(state.params, variables['params'], head, 'params', directory)
    batch_stats = state.batch_stats
    if batch_stats:
        batch_stats, _, _ = merge(batch_stats, variables.get('batch_stats', {}), head,
                                  'batch_stats', directory)
    logging.info('init_from=%s: loaded %s; re-initialised %s.', directory, ', '.join(loaded),
                 ', '.join(reinit) or 'nothing')
    return state.replace(params=params, batch_stats=batch_stats)
