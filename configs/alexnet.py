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
        architecture='paper',           # 'torchvision' (its AlexNet variant), 'fig1' (Fig. 1's net).
        num_classes=1000,
        activation='relu',
        lrn=True, lrn_k=2.0, lrn_n=5, lrn_alpha=1e-4, lrn_beta=0.75, lrn_convention='paper',
        pool_window=3, pool_stride=2,   # Overlapping pooling (Sec. 3.4).
        groups=1,                       # 2: conv2/4/5 see only their own GPU's half.
        dropout_rate=0.5,               # fc6 and fc7 (Sec. 4.2).
        batch_norm=False, bn_momentum=0.9,
        width=1.0,
        conv_scale=(1.0, 1.0, 1.0, 1.0, 1.0),  # Per-conv width; footnote 3's one-GPU net.
        init_scheme='paper',                  # N(0, 0.01); biases 1 in conv2/4/5 and fc6-8.
        dtype='float32', param_dtype='float32',
    ))

    # Section 4.1: data and augmentation.
    c.data = ml_collections.ConfigDict(dict(
        name='imagenet2012',  # Any TFDS name, 'digits' (embedded), 'folder' or 'fake'.
        data_dir=ml_collections.config_dict.placeholder(str),    # None: ~/tensorflow_datasets.
        manual_dir=ml_collections.config_dict.placeholder(str),  # Set: build from files there.
        folder_root=ml_collections.config_dict.placeholder(str),  # 'folder': root/<split>/<class>
        train_split='train', eval_split='validation', test_split='validation',
        image_size=227,     # Random 227x227 crops ("224" in the paper is a typo).
        resize_size=256,    # Shorter side to 256, then the central 256x256.
        train_augment='paper',  # 'inception' (random-resized crop), 'small' (digits, CIFAR).
        random_flip=True,   # Horizontal reflections (Sec. 4.1).
        crop_area_range=(0.08, 1.0), aspect_ratio_range=(0.75, 4 / 3),  # 'inception' only.
        pad=4,              # 'small': zero-pad by this many pixels, then a random crop.
        pca_lighting=0.1,   # alpha ~ N(0, 0.1) per image.
        mean_rgb=(123.68, 116.78, 103.94),  # Per-channel mean subtraction.
        stddev_rgb=(1.0, 1.0, 1.0),  # 1-channel data uses the mean of the three entries.
        eval_crops='center',  # 'ten': the paper's 10 crops, softmax averaged.
        strict=False,       # Folder: True stops at an unreadable image instead of skipping it.
        cache='auto',       # Raw records in memory: 'auto' (TFDS sets < 1 GiB), 'always', 'never'.
        shuffle_buffer=10_000,  # Examples; the order is reshuffled every epoch.
        num_parallel_calls=-1,  # Decode/augment threads; -1: tf.data AUTOTUNE.
        fake_shape=(256, 256, 3), fake_num_classes=1000,  # name='fake': synthetic uint8 images.
        fake_train_examples=1_281_167, fake_eval_examples=50_000,  # ImageNet's sizes.
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
    """The offline demo on the embedded UCI digits (8x8 images, upsampled to the net's minimum).

      python launch.py --config=configs/alexnet.py:digits --workdir=/tmp/digits
    ~2 minutes on 2 CPU cores, including compilation; >= 97% test top-1.
    """
    c.model.num_classes = 10
    c.data.name = 'digits'
    c.data.image_size = 67   # The smallest input the paper's net accepts.
    c.data.test_split = 'test'  # digits has its own train / validation / test splits.
    c.data.train_augment = 'small'  # Resize, pad-and-crop: 256-pixel crops make no sense at 8x8.
    c.data.random_flip = False  # A mirrored digit is a different symbol.
    c.data.mean_rgb, c.data.stddev_rgb = (127.5,) * 3, (127.5,) * 3  # Pixels to [-1, 1].
    c.model.width = 0.25     # A quarter of the paper's widths: trains in minutes on 2 cores.
    c.model.init_scheme = 'he'  # N(0, 0.01) stalls a net this narrow for many epochs.
    c.optim.schedule = 'warmup_cosine'  # A fixed 2-minute budget: no plateaus to wait for.
    c.optim.warmup_epochs = 1.0
    c.optim.learning_rate = 0.02
    c.train.batch_size = 64  # ~1,200 training images: more steps per epoch.
    c.train.eval_batch_size = 256
    c.train.num_epochs = 12.0  # Cosine to 0: ~98% test top-1 in ~1 minute of training.
    c.train.log_every_steps = 20
    c.train.checkpoint_every_steps = 200


def _cifar10(c):
    """CIFAR-10 (TFDS) upsampled to 67x67, half width: the ablation workhorse (GPU: minutes)."""
    c.model.num_classes = 10
    c.data.name = 'cifar10'
    c.data.train_split, c.data.eval_split, c.data.test_split = 'train[:90%]', 'train[90%:]', 'test'
    c.data.image_size = 67   # 32x32 images; the net's minimum input.
    c.model.width = 0.5
    c.train.num_epochs = 30.0
    c.train.checkpoint_every_steps = 2000


def _fake(c):
    """Synthetic ImageNet-shaped data: throughput benchmarks with no data set on disk."""
    c.data.name = 'fake'
    c.train.num_steps = 200   # Enough for a steady images/s; accuracy is meaningless.
    c.train.eval_every_steps = 0   # Evaluate only at the end.
    c.train.checkpoint_every_steps = 0
    c.train.log_every_steps = 50


VARIANTS = {
    'paper': lambda c: None,
    'digits': _digits,
    'cifar10': _cifar10,
    'fake': _fake,
}
