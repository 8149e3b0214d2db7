r"""The paper's ImageNet recipe (Krizhevsky et al., 2012), and its variants.

  python launch.py --config=configs/alexnet.py --workdir=/tmp/alexnet       # the paper
  python launch.py --config=configs/alexnet.py:digits --workdir=/tmp/digits # offline demo

Any field can be overridden from the command line, e.g. `--config.model.activation=tanh`,
`--config.model.groups=2` (the paper's two-GPU connectivity). Variants override a few fields of
the default; each says why.
"""

import ml_collections


def get_config(arg=None):
    """Returns the config for variant `arg` (None: the paper's ImageNet recipe)."""
    config = paper_config()
    variant = arg or 'paper'
    if variant not in VARIANTS:
        raise ValueError(f'Unknown config variant {variant!r} for configs/alexnet.py; '
                         f'choose one of {sorted(VARIANTS)}.')
    VARIANTS[variant](config)
    config.variant = variant
    return config


def paper_config():
    c = ml_collections.ConfigDict()
    c.variant = 'paper'
    c.seed = 0  # Drives parameter init, dropout and data order.

    # Section 3 of the paper: the net. groups=1 is the net the seed tables count.
    c.model = ml_collections.ConfigDict(dict(
        num_classes=1000,
        activation='relu',
        lrn=True, lrn_k=2.0, lrn_n=5, lrn_alpha=1e-4, lrn_beta=0.75, lrn_convention='paper',
        pool_window=3, pool_stride=2,   # Overlapping pooling (Sec. 3.4).
        groups=1,                       # 2: conv2/4/5 see only their own GPU's half.
        dropout_rate=0.5,               # fc6 and fc7 (Sec. 4.2).
        batch_norm=False, bn_momentum=0.9,
        width=1.0,
        init_scheme='paper',                  # N(0, 0.01); biases 1 in conv2/4/5 and fc6-8.
        dtype='float32', param_dtype='float32',
    ))

    # Section 4.1: data and augmentation.
    c.data = ml_collections.ConfigDict(dict(
        name='imagenet2012',
        data_dir=ml_collections.config_dict.placeholder(str),
        manual_dir=ml_collections.config_dict.placeholder(str),
        train_split='train', eval_split='validation', test_split='validation',
        image_size=227,     # Random 227x227 crops ("224" in the paper is a typo).
        resize_size=256,    # Shorter side to 256, then the central 256x256.
        train_augment='paper',
        pca_lighting=0.1,   # alpha ~ N(0, 0.1) per image.
        mean_rgb=(123.68, 116.78, 103.94),  # Per-channel mean subtraction.
        stddev_rgb=(1.0, 1.0, 1.0),
        eval_crops='center',  # 'ten': the paper's 10 crops, softmax averaged.
        strict=False,
    ))

    # Section 5: SGD with momentum and weight decay; lr / 10 when validation error plateaus.
    #   v <- momentum * v - weight_decay * lr * w - lr * grad;   w <- w + v
    c.optim = ml_collections.ConfigDict(dict(
        optimizer='sgd',          # 'sgd' | 'adam' (L2 in the gradient) | 'adamw' (decoupled).
        learning_rate=0.01,
        momentum=0.9, nesterov=False,
        weight_decay=5e-4,
        weight_decay_mask='kernel',  # Regex on 'layer/param' paths; 'kernel|bias' decays all.
        b1=0.9, b2=0.999, eps=1e-8,  # adam / adamw only.
        grad_clip_norm=0.0,          # 0: off.
        schedule='plateau',          # 'plateau' | 'step' | 'warmup_cosine' | 'constant'.
        # 'plateau': lr *= plateau_factor when validation error (config.data.eval_split) has not
        # improved by plateau_min_delta for plateau_patience evals; at most max_reductions times.
        plateau_factor=0.1, plateau_patience=1, plateau_min_delta=0.0, plateau_max_reductions=3,
        # 'step' (Caffe): lr * decay_factor ** (step // decay_every); durations are *_steps or,
        # when that is None, *_epochs.
        decay_factor=0.1,
        decay_every_steps=100_000, decay_every_epochs=ml_collections.config_dict.placeholder(float),
        # 'warmup_cosine': linear 0 -> lr over warmup, then cosine to 0 at the last step.
        warmup_steps=ml_collections.config_dict.placeholder(int), warmup_epochs=0.0,
    ))

    c.train = ml_collections.ConfigDict(dict(
        batch_size=128,   # Global batch, split over all devices of all hosts.
        eval_batch_size=128,  # Global; the last eval batch is padded and masked, never dropped.
        num_epochs=90.0,
        num_steps=ml_collections.config_dict.placeholder(int),  # Overrides num_epochs if set.
        # Side jobs, in steps (0: only at the end). eval_every_steps=None: once per epoch.
        log_every_steps=100,
        eval_every_steps=ml_collections.config_dict.placeholder(int),
        checkpoint_every_steps=1000,
        keep_checkpoints=3,      # The last K, plus the best by validation top-1.
        async_checkpoints=True,
        plot=True,               # learning_curves.png in the workdir at each eval.
    ))
    return c


def _digits(c):
    """The offline demo on the embedded UCI digits (8x8 images, upsampled to the net's minimum)."""
    c.model.num_classes = 10
    c.data.name = 'digits'
    c.data.image_size = 67   # The smallest input the paper's net accepts.
    c.model.width = 0.25     # A quarter of the paper's widths: trains in minutes on 2 cores.


VARIANTS = {
    'paper': lambda c: None,
    'digits': _digits,
}
