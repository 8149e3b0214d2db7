"""Checks a config before any work, so a bad value fails in a second with the field's name.

One small checker per section, each raising `ConfigError` via `check`. A rule its field's
consumer checks anyway lives there only (the LRN size, optimizer and schedule names, frozen
layers, keep_checkpoints, seeds_mode); the model's names are `models.check_config`'s. Entry
points (launch.py, tools/sweep.py, the evaluate tool) validate once.
"""

import jax.numpy as jnp

from alexnet_jax import errors
from alexnet_jax import models
from alexnet_jax import seeds


ConfigError = errors.ConfigError
check = errors.check


def _one_of(section, prefix: str, name: str, choices) -> None:
    """`section[name]` must be one of `choices` (a tuple, or a dict's keys)."""
    check(section[name] in choices, prefix + name,
          f'{section[name]!r} is not one of {list(choices)}.')


def _positive(section, prefix: str, *names: str) -> None:
    """Each of `names` that `section` has must be > 0."""
    for name in (n for n in names if n in section):
        check(section[name] > 0, f'{prefix}{name}', f'must be > 0, got {section[name]!r}.')


def _is_dtype(name: str) -> bool:
    try:
        return jnp.issubdtype(jnp.dtype(name), jnp.floating)
    except TypeError:
        return False


def validate_model(m) -> None:
    p = 'model.'
    models.check_config(m)  # The names (architecture, activation, LRN convention, init).
    if 'conv_scale' in m:
        check(len(m.conv_scale) == 5 and all(s > 0 for s in m.conv_scale), p + 'conv_scale',
              f'needs 5 positive multipliers (conv1..conv5), got {m.conv_scale!r}.')
    check(m.groups in (1, 2), p + 'groups', f'must be 1 or 2 (the paper\'s two GPUs), got {m.groups!r}.')
    _positive(m, p, 'num_classes', 'width', 'pool_window', 'pool_stride', 'lrn_k', 'lrn_beta')
    check(m.lrn_alpha >= 0, p + 'lrn_alpha', f'must be >= 0, got {m.lrn_alpha!r}.')
    check(0 <= m.dropout_rate < 1, p + 'dropout_rate', f'must be in [0, 1), got {m.dropout_rate!r}.')
    check(0 <= m.bn_momentum < 1, p + 'bn_momentum', f'must be in [0, 1), got {m.bn_momentum!r}.')
    for name in ('dtype', 'param_dtype'):
        check(_is_dtype(m[name]), p + name,
              f'{m[name]!r} is not a float dtype (float32, bfloat16, float16).')


TRAIN_AUGMENTS = ('paper', 'inception', 'small')  # See alexnet_jax/data/augment.py.
EVAL_CROPS = ('center', 'ten')
CACHE_MODES = ('auto', 'always', 'never')
DEVICE_RESIDENT = ('auto', 'always', 'never')  # See alexnet_jax/data/device_data.py.


def validate_data(d) -> None:
    p = 'data.'  # The smallest image_size depends on the model: see validate_config.
    has = lambda *names: all(n in d for n in names)  # noqa: E731  (partial sections in tests)
    for name, choices in (('train_augment', TRAIN_AUGMENTS), ('eval_crops', EVAL_CROPS),
                          ('cache', CACHE_MODES), ('device_resident', DEVICE_RESIDENT)):
        if has(name):
            _one_of(d, p, name, choices)
    if has('resize_size', 'image_size', 'train_augment') and d.train_augment == 'paper':
        check(d.resize_size >= d.image_size, p + 'resize_size',
              f'{d.resize_size} is smaller than data.image_size={d.image_size}; the paper crops '
              f'{d.image_size} out of {d.resize_size}, so use resize_size >= image_size.')
    for name in ('mean_rgb', 'stddev_rgb'):
        if has(name):
            check(len(d[name]) == 3, p + name, f'{d[name]!r} needs 3 entries (R, G, B).')
    if has('stddev_rgb'):
        check(min(d.stddev_rgb) > 0, p + 'stddev_rgb', f'{d.stddev_rgb!r} must all be > 0.')
    if has('device_resident', 'train_augment'):
        check(d.device_resident != 'always' or d.train_augment == 'small', p + 'device_resident',
              "'always' augments on the device with the 'small' transform only; set "
              "data.train_augment=small or data.device_resident=auto.")
    if has('device_max_bytes'):
        check(d.device_max_bytes >= 0, p + 'device_max_bytes',
              f'must be >= 0 (bytes), got {d.device_max_bytes!r}.')
    for name in ('pca_lighting', 'pad'):
        if has(name):
            check(d[name] >= 0, p + name, f'must be >= 0 (0 turns it off), got {d[name]!r}.')
    _positive(d, p, 'shuffle_buffer', 'fake_num_classes', 'fake_train_examples',
              'fake_eval_examples')
    if has('num_parallel_calls'):
        check(d.num_parallel_calls == -1 or d.num_parallel_calls > 0, p + 'num_parallel_calls',
              f'must be > 0, or -1 for tf.data AUTOTUNE; got {d.num_parallel_calls!r}.')
    for name in ('crop_area_range', 'aspect_ratio_range'):
        if has(name):
            lo, hi = d[name]
            check(0 < lo <= hi and (name != 'crop_area_range' or hi <= 1), p + name,
                  f'{d[name]!r} must be (low, high) with 0 < low <= high'
                  f'{" <= 1" if name == "crop_area_range" else ""}.')
    if has('fake_shape'):
        check(len(d.fake_shape) == 3 and min(d.fake_shape) > 0 and d.fake_shape[-1] in (1, 3),
              p + 'fake_shape', f'{d.fake_shape!r} must be (height, width, 1 or 3).')
    if has('name', 'folder_root') and d.name == 'folder':
        check(bool(d.folder_root), p + 'folder_root',
              "is required with data.name='folder': --config.data.folder_root=/path/to/root "
              '(laid out as root/<split>/<class>/*.jpg).')


def validate_optim(o) -> None:
    p = 'optim.'
    _positive(o, p, 'learning_rate')
    check(o.weight_decay >= 0, p + 'weight_decay', f'must be >= 0, got {o.weight_decay!r}.')
    check(0 <= o.momentum < 1, p + 'momentum', f'must be in [0, 1), got {o.momentum!r}.')
    check(0 < o.plateau_factor < 1 and 0 < o.decay_factor < 1, p + 'plateau_factor/decay_factor',
          'must be in (0, 1), e.g. 0.1 (divide the learning rate by 10).')
    check(o.plateau_patience >= 1, p + 'plateau_patience', 'must be >= 1 (evaluations).')
    for name in ('decay_every', 'warmup'):
        both = o.get(f'{name}_steps') is not None and o.get(f'{name}_epochs') is not None
        check(not both, p + f'{name}_steps', f'set {name}_steps or {name}_epochs, not both.')
    if o.schedule == 'step':
        check((o.decay_every_steps or o.decay_every_epochs or 0) > 0, p + 'decay_every_steps',
              "must be > 0 for schedule='step' (or set decay_every_epochs).")
    _positive(o, p, 'poly_power', 'lars_trust_coefficient')
    if 'loss_scale' in o:
        _one_of(o, p, 'loss_scale', LOSS_SCALES)
        if o.loss_scale is not None:
            _positive(o, p, 'loss_scale_init', 'loss_scale_growth_interval')


LOSS_SCALES = (None, 'dynamic')


def validate_train(t) -> None:
    p = 'train.'
    _positive(t, p, 'batch_size', 'eval_batch_size')
    check(t.num_steps is not None or t.num_epochs > 0, p + 'num_epochs',
          f'must be > 0 (or set train.num_steps), got {t.num_epochs!r}.')
    check(t.num_steps is None or t.num_steps >= 0, p + 'num_steps',
          f'must be >= 0, got {t.num_steps!r}.')
    for name in ('log_every_steps', 'checkpoint_every_steps'):
        check(t[name] >= 0, p + name, f'must be >= 0 (0: only at the end), got {t[name]!r}.')
    check(t.eval_every_steps is None or t.eval_every_steps >= 0, p + 'eval_every_steps',
          'must be >= 0 (0: only at the end; None: once per epoch).')


def check_classes(config, data_classes: int, fix: str) -> None:
    """The net's classes against the data's, once the data is opened (training, evaluation)."""
    check(config.model.num_classes == data_classes, 'model.num_classes',
          f'{config.model.num_classes} != {data_classes} classes in {config.data.name!r}; {fix}.')


VALIDATORS = {
    'model': validate_model,
    'data': validate_data,
    'optim': validate_optim,
    'train': validate_train,
}


def validate_config(config) -> None:
    """Raises `ConfigError` naming the first bad field of `config`."""
    for section, validator in VALIDATORS.items():
        if section in config:
            validator(config[section])
    if 'model' in config and 'optim' in config and 'loss_scale' in config.optim:
        check(config.model.dtype != 'float16' or config.optim.loss_scale is not None,
              'optim.loss_scale', "is needed with model.dtype='float16' (fp16 gradients "
              'underflow without it): --config.optim.loss_scale=dynamic, or use bfloat16.')
    is_alexnet = config.get('model', {}).get('architecture', 'paper') != 'fig1'
    if 'model' in config and 'data' in config and 'image_size' in config.data and is_alexnet:
        minimum = models.min_input_size(config.model.pool_window, config.model.pool_stride)
        check(config.data.image_size >= minimum, 'data.image_size',
              f'{config.data.image_size} is below the smallest input AlexNet accepts with '
              f'pool {config.model.pool_window}/{config.model.pool_stride}; use at least {minimum}.')
    validate_seeds(config)
    validate_model_parallel(config)
    validate_finetune(config)


def validate_seeds(config) -> None:
    """num_seeds / seeds_mode / seed_workers (top-level fields; see configs/alexnet.py)."""
    if 'num_seeds' in config:
        n = config.num_seeds
        check(isinstance(n, int) and n >= 1, 'num_seeds', f'must be an integer >= 1, got {n!r}.')
    if 'seed_workers' in config:
        w = config.seed_workers
        check(isinstance(w, int) and w >= 0, 'seed_workers',
              f'must be an integer >= 0 (0: one per CPU core), got {w!r}.')
    if 'seeds_mode' in config:  # seeds.check_mode's rule; the rest needs jax (resolve_mode).
        on_device = config.get('data', {}).get('device_resident') != 'never'  # Else: at start.
        seeds.check_mode(config, config.get('num_seeds', 1), on_device)


def validate_model_parallel(config) -> None:
    """model_parallel (top-level; alexnet_jax/columns.py) and what the two columns need."""
    mp = config.get('model_parallel', 1)
    check(mp in (1, 2), 'model_parallel',
          f'is 1 (data parallel) or 2 (the two columns on two devices), got {mp!r}.')
    if mp == 1:
        return
    m = config.model
    for ok, field, why in (
            (m.get('architecture', 'paper') == 'paper', 'model.architecture', "must be 'paper'"),
            (m.get('groups', 1) == 2, 'model.groups', 'must be 2 (the two columns)'),
            (not m.get('batch_norm', False), 'model.batch_norm', 'must be False'),
            (m.get('lrn_divisor', 'local') != 'matched', 'model.lrn_divisor',
             "must be 'local' or 'constant'"),
            (config.get('optim', {}).get('loss_scale') is None, 'optim.loss_scale',
             'must be None'),
            (config.get('num_seeds', 1) == 1 or config.get('seeds_mode') in (
                'sequential', 'processes'), 'seeds_mode',
             "must be 'sequential' or 'processes' (seeds run one model-parallel run each)"),
            (m.get('num_classes', 1000) % 2 == 0, 'model.num_classes',
             'must be even (fc8 splits its units between the columns)')):
        check(ok, field, f'{why} with model_parallel=2; or set --config.model_parallel=1.')


def validate_finetune(config) -> None:
    """init_from / eval_only (top-level fields; see configs/alexnet.py); config.freeze's names
    are checked against the model's params when the optimizer is built (optim.freeze_labels)."""
    init_from = config.get('init_from')
    check(init_from is None or (isinstance(init_from, str) and init_from.strip()), 'init_from',
          f'must be a directory (a converted checkpoint or a training workdir), got {init_from!r}.')
    check(isinstance(config.get('eval_only', False), bool), 'eval_only',
          f'must be True or False, got {config.get("eval_only")!r}.')
