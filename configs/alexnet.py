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
    # num_seeds > 1: seeds seed .. seed + num_seeds - 1 train together (alexnet_jax/seeds.py),
    # each with workdir/seed<k>/ (metrics, results) as a standalone run would write it.
    # seeds_mode: 'vmap' (batched in one program), 'map' (one after another inside each step),
    # 'sequential' (one run after another), 'processes' (runs side by side in seed_workers
    # processes, each pinned to its share of the CPU cores; 0: one per core), 'auto' (vmap on
    # GPU/TPU; processes on a multi-core CPU, where vmap measured ~5x slower and two 1-core
    # runs ~1.5x faster than one after another: benchmarks/RESULTS.md). vmap/map need
    # device-resident data.
    c.num_seeds = 1
    c.seeds_mode = 'auto'
    c.seed_workers = 0
    # model_parallel=2: the two columns of a groups=2 net on two devices each (a data x model
    # mesh, alexnet_jax/columns.py); 1: data parallel over every device.
    c.model_parallel = 1

    # Section 3 of the paper: the net. groups=1 is the net the seed tables count.
    c.model = ml_collections.ConfigDict(dict(
        architecture='paper',           # 'torchvision' (its AlexNet variant), 'fig1' (Fig. 1's net).
        num_classes=1000,
        activation='relu',
        lrn=True, lrn_k=2.0, lrn_n=5, lrn_alpha=1e-4, lrn_beta=0.75, lrn_convention='paper',
        lrn_divisor='local',            # 'constant': k^-beta alone, LRN's control arm.
        lrn_per_column=False,           # True: each group's maps alone (cuda-convnet's).
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
        name='imagenet2012',  # Any TFDS name, 'digits' (embedded), 'folder', 'downsampled', 'fake'.
        # name='downsampled': the paper's 256x256 copy (shorter side 256, central 256x256, JPEG)
        # of this source ('imagenet2012', another TFDS set, or 'folder' with folder_root),
        # prepared once in data_dir on first use (resumable; alexnet_jax/data/downsampled.py).
        # Training then decodes 256x256 images: ~3x the images/s per core of full-size JPEGs.
        downsample_source='imagenet2012',
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
        mean_image=False,   # True: the training split's per-pixel mean image instead (as
                            # cuda-convnet subtracted; a device-resident split on one host).
        stddev_rgb=(1.0, 1.0, 1.0),  # 1-channel data uses the mean of the three entries.
        eval_crops='center',  # 'ten': the paper's 10 crops, softmax averaged.
        strict=False,       # Folder: True stops at an unreadable image instead of skipping it.
        cache='auto',       # Raw records in memory: 'auto' (TFDS sets < 1 GiB), 'always', 'never'.
        shuffle_buffer=10_000,  # Examples; the order is reshuffled every epoch.
        # Training split held on the device as uint8 at image_size, batches gathered and
        # augmented inside the step (alexnet_jax/data/device_data.py; 'small' transform only):
        # 'auto' when it is under device_max_bytes (per device), 'always', 'never' (tf.data).
        device_resident='auto', device_max_bytes=1 << 30,
        num_parallel_calls=-1,  # Decode/augment threads; -1: tf.data AUTOTUNE.
        fake_shape=(256, 256, 3), fake_num_classes=1000,  # name='fake': synthetic uint8 images.
        fake_train_examples=1_281_167, fake_eval_examples=50_000,  # ImageNet's sizes.
    ))

    # Section 5: SGD with momentum and weight decay; lr / 10 when validation error plateaus.
    #   v <- momentum * v - weight_decay * lr * w - lr * grad;   w <- w + v
    c.optim = ml_collections.ConfigDict(dict(
        optimizer='sgd',  # 'sgd' | 'adam' (L2 in the gradient) | 'adamw' (decoupled) | 'lars'.
        learning_rate=0.01,
        momentum=0.9, nesterov=False,
        weight_decay=5e-4,
        weight_decay_mask='kernel',  # Regex on 'layer/param' paths; 'kernel|bias' decays all.
        b1=0.9, b2=0.999, eps=1e-8,  # adam / adamw only.
        grad_clip_norm=0.0,          # 0: off.
        schedule='plateau',  # 'plateau' | 'step' | 'warmup_cosine' | 'warmup_poly' | 'constant'.
        # 'plateau': lr *= plateau_factor when validation error (config.data.eval_split) has not
        # improved by plateau_min_delta for plateau_patience evals; at most max_reductions times.
        plateau_factor=0.1, plateau_patience=1, plateau_min_delta=0.0, plateau_max_reductions=3,
        # 'step' (Caffe): lr * decay_factor ** (step // decay_every); durations are *_steps or,
        # when that is None, *_epochs.
        decay_factor=0.1,
        decay_every_steps=100_000, decay_every_epochs=ml_collections.config_dict.placeholder(float),
        # 'warmup_cosine': linear 0 -> lr over warmup, then cosine to 0 at the last step.
        warmup_steps=ml_collections.config_dict.placeholder(int), warmup_epochs=0.0,
        # 'warmup_poly': linear 0 -> lr over warmup, then lr * (1 - t / T) ** poly_power to 0.
        poly_power=2.0,
        # optimizer='lars': update *= lars_trust_coefficient * ||w|| / ||g + wd * w|| on the
        # params lars_trust_ratio_mask selects (a regex, like weight_decay_mask).
        lars_trust_coefficient=0.001, lars_eps=0.0, lars_trust_ratio_mask='kernel',
        # 'dynamic': fp16 loss scaling (model.dtype='float16'): loss * scale, grads / scale; an
        # overflow skips the step and halves the scale, growth_interval good steps double it.
        loss_scale=ml_collections.config_dict.placeholder(str),
        loss_scale_init=2.0 ** 15, loss_scale_growth_interval=2000,
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

    # Fine-tuning and evaluation of existing weights (alexnet_jax/finetune.py, evaluation.py).
    # init_from: a converted checkpoint or a training workdir whose params (and batch_stats) start
    # a fresh run; its own config defines the net and its preprocessing, this config the rest;
    # a classifier head (fc8) of another num_classes is re-initialised. A resumed run ignores it.
    c.init_from = ml_collections.config_dict.placeholder(str)
    # Layers (top-level param names: conv1 ... fc8) left untouched by training: no updates, no
    # weight decay, no optimizer state. From the command line: --config.freeze=conv1,conv2,conv3
    c.freeze = ()
    # True: evaluate the workdir's checkpoint (or else init_from's) on data.test_split and exit.
    c.eval_only = False
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
    c.data.train_augment = 'small'  # Resize + pad-and-crop + flip: the images are 32x32.
    c.data.pad = 8           # ~4 source pixels at 67x67.
    c.model.width = 0.5
    c.train.num_epochs = 30.0
    c.train.checkpoint_every_steps = 2000


def _gpu(c):
    """One GPU: the paper's recipe on its 256x256 copy, bf16 compute, a batch of 512.

      python launch.py --config=configs/alexnet.py:gpu --workdir=/tmp/alexnet-gpu
    The first run prepares the 256x256 copy of imagenet2012 in data_dir (its download needs
    image-net.org's registration: the error says where the files go); later runs read it.
    Decoding the 256x256 JPEGs on the host, not the net, sets the speed on one GPU: 16+ cores
    keep up with more images/s (benchmarks/input_pipeline.py prints what yours deliver).
    """
    c.data.name = 'downsampled'    # The paper's 256x256 copy: ~3x the decode rate of full JPEGs.
    c.model.dtype = 'bfloat16'     # Compute; parameters and optimizer state stay float32.
    c.train.batch_size = 512       # Global; more than this adds memory, not images/s, once
    c.train.eval_batch_size = 512  # decoding is the bottleneck (lower it on a small GPU).
    c.optim.learning_rate = 0.04   # The paper's 0.01 at 128, scaled linearly with the batch.
    c.train.log_every_steps = 200
    c.train.checkpoint_every_steps = 2500  # ~Every 1 epoch (2,502 steps at 512).


def _imagenette(c):
    """Real photos with no manual download: Imagenette (10 easy ImageNet classes, 9,469 train /
    3,925 validation photos; TFDS downloads ~340 MB) at ImageNet's scale: 256 resize, random
    227 crops, flips, PCA lighting, the ten-crop test.

      tfds build imagenette/320px-v2   # once, where there is internet
      python launch.py --config=configs/alexnet.py:imagenette --workdir=/tmp/imagenette
    73 steps an epoch at batch 128; on a GPU add --config.model.dtype=bfloat16. The recipe is
    the paper's, not tuned for 10 classes; the test is the validation split, as for ImageNet.
    """
    c.model.num_classes = 10
    c.data.name = 'imagenette/320px-v2'  # Shorter side 320 px: resized to 256 like ImageNet.
    c.data.eval_crops = 'ten'      # The paper's test: four corners, center, and their mirrors.
    c.train.num_epochs = 60.0      # ~4,400 steps; the plateau schedule lowers the rate.
    c.train.log_every_steps = 25
    c.train.checkpoint_every_steps = 365  # Every 5 epochs.


def _fake(c):
    """Synthetic ImageNet-shaped data: throughput benchmarks with no data set on disk."""
    c.data.name = 'fake'
    c.train.num_steps = 200   # Enough for a steady images/s; accuracy is meaningless.
    c.train.eval_every_steps = 0   # Evaluate only at the end.
    c.train.checkpoint_every_steps = 0
    c.train.log_every_steps = 50


def _fig1_protocol(c):
    """Fig. 1 as the paper ran it: "No regularization of any kind was employed" and
    cuda-convnet's small-Gaussian initialisation; the rate is searched per activation
    (configs/ablations.py:fig1, alexnet_jax/tools/lr_search.py)."""
    c.model.architecture = 'fig1'
    c.model.width = 1.0        # Its published 32/32/64 kernels (the bases set 0.25 / 0.5).
    c.data.stddev_rgb = (1.0,) * 3  # 0-255 pixels minus the training split's mean image, as
    # cuda-convnet fed CIFAR-10: its initial weight scales assume that input scale.
    c.data.mean_image = True   # Per pixel, as cuda-convnet; False: the scalar data.mean_rgb.
    c.model.lrn = False        # Fig. 1 compares activations alone.
    c.model.dropout_rate = 0.0  # (Fig1Net has none; explicit, as the protocol says.)
    c.model.init_scheme = 'cuda_convnet'  # conv1 N(0, 1e-4), the rest N(0, 1e-2); models.py.
    c.optim.weight_decay = 0.0
    c.optim.momentum = 0.9     # cuda-convnet's momW / momB for this net.
    c.optim.schedule = 'constant'  # Fig. 1 compares raw speed: no schedule to confound it.
    c.data.pad = 0             # No augmentation: no pad-and-crop ...
    c.data.random_flip = False  # ... and no mirroring.
    c.data.pca_lighting = 0.0
    c.data.image_size = 32


def _fig1(c):
    """Fig. 1's small net (models.Fig1Net) on CIFAR-10 at 32x32: ReLU vs tanh to 25% error.

      python -m alexnet_jax.tools.sweep --config=configs/ablations.py:fig1_cifar10 --workdir=DIR

    Pixels in 0-255 minus the mean of CIFAR-10's training images, as cuda-convnet fed them.
    """
    _cifar10(c)
    _fig1_protocol(c)
    c.data.mean_rgb = CIFAR10_TRAIN_MEAN
    c.optim.learning_rate = 0.001  # cuda-convnet's epsW; the sweep searches the rate.
    c.train.num_epochs = 40.0  # Past Fig. 1's tanh crossing (~36 epochs; ReLU's at ~6).
    c.train.log_every_steps = 20  # Resolves when the 25% training-error line is crossed.


def _digits_fig1(c):
    """Fig. 1's small net on the embedded digits (upsampled to 32x32): the offline Fig. 1.

    Pixels in 0-255 minus the training split's per-pixel mean image (stddev 1), the input
    cuda-convnet's initialisation was set for (it fed CIFAR-10 so).
    """
    _digits(c)
    _fig1_protocol(c)
    c.data.mean_rgb = (DIGITS_TRAIN_MEAN,) * 3
    c.optim.learning_rate = 0.01  # The sweep searches the rate per activation.
    # 12 epochs of 19 updates: at width 1.0 a ReLU net at its searched rate crosses 25% in
    # 1.5-2.7 epochs and 10% in 2.4-3.9 (medians, docs/ablations.md); runs that never cross are
    # counted as censored, not dropped.
    c.train.num_epochs = 12.0
    c.train.log_every_steps = 2   # 19 steps per epoch: a fine training-error curve.
    c.train.eval_every_steps = 0  # Only the final test matters here.
    c.train.plot = False


# Mean pixel (0-255) of the training images: digits' 1,257 (its `train` split, as the net is
# fed it at 32x32) and CIFAR-10's 50,000. DIGITS_FIG1_PIXEL_STD: the standard deviation of
# digits_fig1's input, those pixels minus their mean image. tests/test_diagnostics.py checks both.
DIGITS_TRAIN_MEAN = 77.76
DIGITS_FIG1_PIXEL_STD = 54.68
CIFAR10_TRAIN_MEAN = (125.31, 122.95, 113.87)

IMAGENET_TRAIN_EXAMPLES = 1_281_167


def _large_batch(c, batch_size: int):
    """AlexNet-BN with LARS after You et al. (2017, 2018: "ImageNet training in minutes"), for
    TPU pods / multi-node GPU: BN in place of LRN, LARS, linear warmup, poly(2) decay, 100 epochs.

    `train.batch_size` is the global batch: each host feeds batch_size / jax.process_count()
    examples, each device batch_size / jax.device_count() (input_pipeline derives both).
    Launch (TPU VM pod slice, every worker, one shared gs:// workdir):
      gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd alexnet-jax &&
        python launch.py --config=configs/alexnet.py:lars4k --workdir=gs://BUCKET/lars4k"
    See benchmarks/RESULTS.md for GPU clusters (SLURM) and what changes between 1 CPU, 8
    devices and a pod (only the config).
    """
    c.model.lrn = False
    c.model.batch_norm = True         # BN after every conv and fc6/fc7 makes LARS stable.
    c.model.dtype = 'bfloat16'        # TPU/H100 compute; params and LARS state stay float32.
    c.optim.optimizer = 'lars'
    c.optim.weight_decay = 5e-4       # Kernels only (weight_decay_mask); BN and biases not.
    c.optim.lars_trust_ratio_mask = 'kernel'  # Biases and BN scale/offset: plain momentum SGD.
    # Linear scaling rule (Goyal et al. 2017): the peak rate grows with the batch,
    #   learning_rate = base_learning_rate * batch_size / 256,
    # base 0.625 per 256 examples = 10 at 4K, You et al.'s AlexNet-BN starting point. LARS
    # tolerates the rule only so far: at 32K the rule gives 80; lower it with
    # --config.optim.learning_rate if the loss climbs during warmup (the papers tuned it).
    # Fields derived from the batch are FieldReferences: --config.train.batch_size=8192 moves
    # the rate and the intervals with it; overriding a derived field pins that field alone.
    base_learning_rate = 0.625
    batch = ml_collections.FieldReference(batch_size)
    c.train.batch_size = batch
    c.optim.learning_rate = batch.to_float() * (base_learning_rate / 256)
    # Warmup: linear 0 -> learning_rate over the first epochs, then poly(2) decay to 0.
    c.optim.schedule = 'warmup_poly'
    c.optim.warmup_epochs = 5.0
    c.optim.poly_power = 2.0
    c.train.num_epochs = 100.0
    steps_per_epoch = ml_collections.FieldReference(IMAGENET_TRAIN_EXAMPLES) // batch  # 312 at 4K.
    c.train.eval_batch_size = 4096    # Divides 8..4096 devices; the last batch is padded.
    c.train.eval_every_steps = 5 * steps_per_epoch  # Every 5 epochs.
    c.train.checkpoint_every_steps = 2 * steps_per_epoch
    c.train.log_every_steps = steps_per_epoch // 8  # (>= 1 up to a batch of 160K.)


def _lars4k(c):
    """Global batch 4,096: e.g. a TPU v3-32 / v4-32 slice (128 per chip core) or 4 x 8 GPUs."""
    _large_batch(c, 4096)


def _lars32k(c):
    """Global batch 32,768: e.g. a TPU v3-256 / v4-256 slice (128 per core), 39 steps/epoch."""
    _large_batch(c, 32768)


VARIANTS = {
    'paper': lambda c: None,
    'lars4k': _lars4k,
    'lars32k': _lars32k,
    'fig1_cifar10': _fig1,
    'digits_fig1': _digits_fig1,
    'digits': _digits,
    'cifar10': _cifar10,
    'fake': _fake,
    'gpu': _gpu,
    'imagenette': _imagenette,
}
