"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) in Flax, with a switch for every ablation.

Input 227x227x3 (the paper's "224" is a known typo); the layers are CONV_SPECS, then fc6, fc7
(4096, dropout) and fc8 (logits). `architecture='torchvision'` is torchvision's `alexnet`
instead (the net its pretrained weights fit): its channels and conv1 padding, an adaptive
average pool to 6x6 after pool5, and dropout *before* fc6 and fc7. It has no LRN and no groups:
set lrn=False and groups=1 for the exact torchvision net (the switches stay independent).

Every layer's output (after its activation) is sown into the 'intermediates' collection as
`<layer>_out` (a no-op unless that collection is mutable); `LAYERS` lists them in order. The
summary and feature extraction read them.
"""

import dataclasses
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from alexnet_jax import errors

# Layer widths of the paper's net; `width` scales them.
CONV_SPECS = (  # name, features, kernel, stride, padding, grouped
    ('conv1', 96, 11, 4, 0, False),
    ('conv2', 256, 5, 1, 2, True),
    ('conv3', 384, 3, 1, 1, False),
    ('conv4', 384, 3, 1, 1, True),
    ('conv5', 256, 3, 1, 1, True),
)
TORCHVISION_CONV_SPECS = (
    ('conv1', 64, 11, 4, 2, False),
    ('conv2', 192, 5, 1, 2, False),
    ('conv3', 384, 3, 1, 1, False),
    ('conv4', 256, 3, 1, 1, False),
    ('conv5', 256, 3, 1, 1, False),
)
ALEXNET_CONV_SPECS = {'paper': CONV_SPECS, 'torchvision': TORCHVISION_CONV_SPECS}
TORCHVISION_POOL_SIZE = 6  # Its AdaptiveAvgPool2d((6, 6)) before the classifier.
FC_FEATURES = 4096
# The paper initialises these biases to 1 "to accelerate the early stages of learning by
# providing the ReLUs with positive inputs"; all others to 0.
PAPER_ONE_BIASES = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')

LAYERS = ('conv1', 'lrn1', 'pool1', 'conv2', 'lrn2', 'pool2', 'conv3', 'conv4', 'conv5', 'pool5',
          'fc6', 'fc7', 'fc8')  # Outputs sown as '<layer>_out'; lrn* only when lrn=True.
# (torchvision: pool5 is the adaptive average pool's output, the input of the classifier.)

ACTIVATIONS = {'relu': nn.relu, 'tanh': jnp.tanh, 'sigmoid': nn.sigmoid, 'elu': nn.elu,
               'gelu': nn.gelu, 'silu': nn.silu, 'leaky_relu': nn.leaky_relu}
LRN_CONVENTIONS = ('paper', 'caffe')
# 'local': the paper's divisor (k + alpha * sum a^2)^beta. Controls that keep a constant divisor
# and drop the normalisation: 'matched', LRN's own scale at init (lrn_layer; what an LRN ablation
# compares against), and 'constant', k^beta (LRN's divisor on a zero input; smaller than LRN's
# divisor wherever activations are not small, so it controls for the k term alone).
LRN_DIVISORS = ('local', 'matched', 'constant')
INITS = ('paper', 'he', 'xavier', 'cuda_convnet')
# init_scheme='cuda_convnet' (Fig1Net): the weight stds of Krizhevsky's cuda-convnet CIFAR-10
# nets, example-layers/layers-18pct.cfg and layers-80sec.cfg (github.com/dnouri/cuda-convnet, a
# mirror of code.google.com/p/cuda-convnet, commit 9438cba): initW=0.0001 for conv1 and 0.01 for
# conv2 and conv3 in both; the four-layer net's classifier (layers-18pct.cfg's fc10, Fig1Net's
# fc4) initW=0.01 (layers-80sec.cfg's extra fc64 and its fc10 use 0.1). cuda-convnet draws
# weights as initW * randn (layer.py, make_weights) and biases as initB, default 0.
CUDA_CONVNET_STDDEV = {'conv1': 1e-4, 'conv2': 1e-2, 'conv3': 1e-2, 'fc4': 1e-2}
# init_scheme='paper' on Fig1Net: N(0, 0.01) and biases of 1 where the paper puts them (conv2,
# conv4, conv5 and the FC layers: all but the input layer and conv3); this net has no conv4-5,
# so its layers after the first, conv2, conv3 and fc4, get them.
FIG1_ONE_BIASES = ('conv2', 'conv3', 'fc4')


def check_config(m) -> None:
    """The model section's names, checked here where they are defined: `create_model` runs it,
    and so does validation at the entry point, so a typo fails before TensorFlow loads."""
    for field, choices in (('architecture', ARCHITECTURE_NAMES), ('activation', ACTIVATIONS),
                           ('lrn_convention', LRN_CONVENTIONS), ('lrn_divisor', LRN_DIVISORS),
                           ('init_scheme', INITS)):
        if field in m:
            _check_name(field, m[field], choices)


def _check_name(field: str, value, choices) -> None:
    errors.check(value in choices, f'model.{field}', f'{value!r} is not one of {list(choices)}.')


def local_response_norm(x: jax.Array, k: float = 2.0, n: int = 5, alpha: float = 1e-4,
                        beta: float = 0.75, convention: str = 'paper') -> jax.Array:
    """Local response normalisation across channels (last axis), Sec. 3.3 of the paper.

    b_i = a_i / (k + alpha' * sum_{j=max(0, i-n//2)}^{min(N-1, i+n//2)} a_j^2) ** beta

    with alpha' = alpha for the paper's convention (also `tf.nn.local_response_normalization`
    with depth_radius = n // 2) and alpha' = alpha / n for Caffe's and PyTorch's.
    """
    return (x * _inverse_power(lrn_base(x, k, n, alpha, convention), beta)).astype(x.dtype)


def lrn_base(x: jax.Array, k: float = 2.0, n: int = 5, alpha: float = 1e-4,
             convention: str = 'paper') -> jax.Array:
    """k + alpha' * (the windowed sum of squares): LRN's divisor before the power beta."""
    _check_name('lrn_convention', convention, LRN_CONVENTIONS)  # Also for direct callers.
    errors.check(n >= 1 and n % 2 == 1, 'model.lrn_n',  # The one check of config.model.lrn_n.
                 f'must be a positive odd number of channels, got {n!r}.')
    scale = alpha if convention == 'paper' else alpha / n
    # Square and sum in float32 at least: bf16 sums of squares lose the small alpha term.
    acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
    return k + scale * window_sum(jnp.square(x.astype(acc_dtype)), n)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def window_sum(a: jax.Array, n: int) -> jax.Array:
    """sum_{j=i-n//2}^{i+n//2} a_j over the last axis (zeros beyond its ends): LRN's window.

    Forwards, n shifted slices of a padded copy, which XLA fuses with the pointwise ops around
    them; its tangent (and so the gradient) is a `reduce_window`, which XLA does not fuse, so
    the backward's pointwise terms are computed once instead of once per slice (slices there
    made the digits net's LRN ~10x slower; `reduce_window` both ways cost ~2x this; a banded
    matmul and a 1-D convolution over the channels were no faster; benchmarks/RESULTS.md).
    """
    c, h = a.shape[-1], n // 2
    padded = jnp.pad(a, ((0, 0),) * (a.ndim - 1) + ((h, h),))
    return sum(lax.slice_in_dim(padded, i, i + c, axis=-1) for i in range(n))


@window_sum.defjvp
def _window_sum_jvp(n, primals, tangents):
    (a,), (da,) = primals, tangents
    pads = ((0, 0),) * (a.ndim - 1) + ((n // 2, n // 2),)
    return window_sum(a, n), lax.reduce_window(da, 0.0, lax.add, (1,) * (a.ndim - 1) + (n,),
                                               (1,) * a.ndim, pads)


def lrn_layer(module: nn.Module, x: jax.Array, name: str) -> jax.Array:
    """`local_response_norm` with `module`'s lrn_* fields, sowing its divisor
    (k + alpha' sum a^2)^beta as `<name>_divisor` (computed only when 'intermediates' is
    collected: diagnostics.py shows whether LRN normalises or is a constant k^-beta).

    The controls divide by a constant instead. lrn_divisor='constant': k^beta.
    lrn_divisor='matched': the divisor that gives LRN's output RMS on the batch, RMS(x) /
    RMS(LRN(x)), frozen at its first training batch in 'batch_stats' as `<name>_matched` (0 until
    then: a pass before that, e.g. the diagnostics at init, uses its own batch's) and sown as
    `<name>_constant`; so the control's activations have LRN's scale at init and only the
    normalisation differs."""
    k, beta = module.lrn_k, module.lrn_beta
    if module.lrn_divisor == 'constant':
        return (x * k ** -beta).astype(x.dtype)
    # lrn_per_column: each group's maps alone, as cuda-convnet's two-GPU net normalised each
    # GPU's; else across all maps, as Caffe's bvlc_alexnet (crossing the groups' boundary).
    parts = jnp.split(x, module.groups if getattr(module, 'lrn_per_column', False) else 1, -1)
    base = jnp.concatenate([lrn_base(p, k, module.lrn_n, module.lrn_alpha,
                                     module.lrn_convention) for p in parts], axis=-1)
    if module.lrn_divisor == 'matched':
        frozen = module.variable('batch_stats', name + '_matched', jnp.zeros, (), jnp.float32)
        x32 = x.astype(jnp.float32)
        rms = lambda t: jnp.sqrt(jnp.mean(jnp.square(t)))
        here = lax.stop_gradient(rms(x32) / rms(x32 * _inverse_power(base, beta)))
        divisor = jnp.where(frozen.value > 0, frozen.value, here)
        if module.is_mutable_collection('batch_stats') and not module.is_initializing():
            frozen.value = divisor
        module.sow('intermediates', name + '_constant', divisor)
        return (x / divisor).astype(x.dtype)
    module.sow('intermediates', name + '_divisor', base ** beta)
    return (x * _inverse_power(base, beta)).astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _inverse_power(t: jax.Array, beta: float) -> jax.Array:
    """t ** -beta; for the paper's beta=0.75 as rsqrt(t) * sqrt(rsqrt(t)) (= t^-1/2 * t^-1/4).

    A float `power` is exp(beta * log(t)) forwards and again backwards: on XLA:CPU it made LRN
    a quarter of the digits net's step; two square roots are ~2x cheaper in the whole step's
    LRN share (benchmarks/digits_loop.py). Its derivative is -beta * t^-beta / t from the
    value, one division, instead of differentiating the square roots.
    """
    if beta == 0.75:
        r = lax.rsqrt(t)
        return r * jnp.sqrt(r)
    if beta == 0.5:
        return lax.rsqrt(t)
    return jnp.power(t, -beta)


@_inverse_power.defjvp
def _inverse_power_jvp(beta, primals, tangents):
    (t,), (dt,) = primals, tangents
    p = _inverse_power(t, beta)
    return p, dt * (-beta * p / t)


def grouped_conv(lhs, rhs, *args, dimension_numbers=None, feature_group_count: int = 1,
                 **kwargs):
    """`lax.conv_general_dilated` with its feature groups as separate convolutions, concatenated.

    The same function of the same kernel (the input channels and the kernel's output features
    split into `feature_group_count` contiguous groups), computed as the paper's two GPUs did,
    one group each: XLA:CPU runs a `feature_group_count=2` convolution ~3x slower than its
    two halves (the digits net's step: 260 vs 827 img/s on one core, benchmarks/RESULTS.md).
    """
    if feature_group_count == 1:
        return lax.conv_general_dilated(lhs, rhs, *args, dimension_numbers=dimension_numbers,
                                        **kwargs)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    groups = zip(jnp.split(lhs, feature_group_count, axis=dn.lhs_spec[1]),
                 jnp.split(rhs, feature_group_count, axis=dn.rhs_spec[0]))
    return jnp.concatenate([lax.conv_general_dilated(x, w, *args, dimension_numbers=dn, **kwargs)
                            for x, w in groups], axis=dn.out_spec[1])


def scaled_features(features: int, width: float, groups: int) -> int:
    """`features * width`, rounded to a positive multiple of `groups`."""
    return max(groups, int(round(features * width / groups)) * groups)


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """torch's AdaptiveAvgPool2d((size, size)) on NHWC: of n rows (columns), output i averages
    [floor(i * n / size), ceil((i + 1) * n / size))."""
    for axis in (1, 2):
        n = x.shape[axis]
        if n != size:
            x = jnp.concatenate([
                lax.slice_in_dim(x, i * n // size, -(-(i + 1) * n // size), axis=axis).mean(
                    axis=axis, keepdims=True) for i in range(size)], axis=axis)
    return x


def spatial_sizes(size: int, pool_window: int = 3, pool_stride: int = 2,
                  architecture: str = 'paper') -> Optional[list]:
    """Side lengths after conv1, pool1, pool2 and pool5 (before torchvision's adaptive pool), or
    None if the input is too small."""
    sizes = []
    for name, _, kernel, stride, padding, _ in ALEXNET_CONV_SPECS[architecture]:
        size = (size + 2 * padding - kernel) // stride + 1
        if size < 1:
            return None
        if name == 'conv1':
            sizes.append(size)
        if name in ('conv1', 'conv2', 'conv5'):
            if size < pool_window:
                return None
            size = (size - pool_window) // pool_stride + 1
            sizes.append(size)
    return sizes


def min_input_size(pool_window: int = 3, pool_stride: int = 2, architecture: str = 'paper') -> int:
    """The smallest square input the net accepts (67 for the paper's pooling, 63 torchvision's)."""
    return next(s for s in range(1, 10_000)
                if spatial_sizes(s, pool_window, pool_stride, architecture))


def _kernel_init(init: str, name: str):
    if init == 'paper':
        return nn.initializers.normal(stddev=0.01)
    if init == 'he':
        return nn.initializers.he_normal()
    if init == 'xavier':
        return nn.initializers.xavier_uniform()
    if init == 'cuda_convnet':
        if name not in CUDA_CONVNET_STDDEV:
            raise ValueError(f"init_scheme 'cuda_convnet' is defined for the fig1 net's layers "
                             f'{sorted(CUDA_CONVNET_STDDEV)}, not {name!r}: use '
                             f'--config.model.architecture=fig1 or another init_scheme.')
        return nn.initializers.normal(stddev=CUDA_CONVNET_STDDEV[name])
    raise KeyError(init)  # check_config names the valid ones.


def _bias_init(init: str, name: str, ones=PAPER_ONE_BIASES):
    return nn.initializers.ones if init == 'paper' and name in ones else nn.initializers.zeros


def _layer_args(net: nn.Module, name: str, ones=PAPER_ONE_BIASES) -> dict:
    """A conv or dense layer's init, dtypes and name, from the net's fields (both nets)."""
    return dict(kernel_init=_kernel_init(net.init_scheme, name),
                bias_init=_bias_init(net.init_scheme, name, ones), dtype=jnp.dtype(net.dtype),
                param_dtype=jnp.dtype(net.param_dtype), name=name)


class AlexNet(nn.Module):
    """AlexNet; defaults are the paper's net (ungrouped, as the seed tables count it)."""
    num_classes: int = 1000
    activation: str = 'relu'
    lrn: bool = True
    lrn_k: float = 2.0
    lrn_n: int = 5
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    lrn_convention: str = 'paper'
    lrn_divisor: str = 'local'    # 'matched' / 'constant': a constant divisor (LRN_DIVISORS).
    lrn_per_column: bool = False  # Each group's maps alone (cuda-convnet's two GPUs).
    pool_window: int = 3
    pool_stride: int = 2
    groups: int = 1               # 2 = the paper's two-GPU connectivity in conv2, conv4, conv5.
    dropout_rate: float = 0.5
    batch_norm: bool = False      # BN after every conv and fc6/fc7 (e.g. with lrn=False).
    bn_momentum: float = 0.9
    width: float = 1.0            # Multiplies every hidden layer's width.
    conv_scale: tuple = (1.0, 1.0, 1.0, 1.0, 1.0)  # Per-conv multipliers on top of `width`
                                  # (the paper's one-GPU net halves conv1-4: footnote 3).
    init_scheme: str = 'paper'  # Not `init`: that name is Module.init.
    architecture: str = 'paper'   # 'torchvision': its channels, padding, pooling and dropout.
    dtype: Any = jnp.float32      # Compute dtype.
    param_dtype: Any = jnp.float32

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4:
            raise ValueError(f'AlexNet expects NHWC images [batch, height, width, channels], '
                             f'got shape {x.shape}.')
        minimum = min_input_size(self.pool_window, self.pool_stride, self.architecture)
        if min(x.shape[1], x.shape[2]) < minimum:
            raise ValueError(
                f'Input {x.shape[1]}x{x.shape[2]} is too small for AlexNet with pool '
                f'{self.pool_window}/{self.pool_stride}: the minimum is {minimum}x{minimum}.')

    def _record(self, layer: str, x: jax.Array) -> None:
        self.sow('intermediates', layer + '_out', x)

    def _norm(self, x, name, train):
        if not self.batch_norm:
            return x
        return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                            dtype=self.dtype, param_dtype=self.param_dtype, name=f'bn_{name}')(x)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self._check_input(x)
        act = ACTIVATIONS[self.activation]
        x = x.astype(jnp.dtype(self.dtype))
        torchvision = self.architecture == 'torchvision'
        specs = ALEXNET_CONV_SPECS[self.architecture]

        if len(self.conv_scale) != len(specs):
            raise ValueError(f'conv_scale needs {len(specs)} entries, got {self.conv_scale}.')
        for (name, features, kernel, stride, padding, grouped), scale in zip(specs,
                                                                             self.conv_scale):
            x = nn.Conv(scaled_features(features, self.width * scale, self.groups),
                        (kernel, kernel), strides=stride, padding=padding,
                        feature_group_count=self.groups if grouped else 1,
                        conv_general_dilated=grouped_conv, **_layer_args(self, name))(x)
            x = act(self._norm(x, name, train))
            self._record(name, x)
            if self.lrn and name in ('conv1', 'conv2'):
                x = lrn_layer(self, x, 'lrn' + name[-1])
                self._record('lrn' + name[-1], x)
            if name in ('conv1', 'conv2', 'conv5'):
                x = nn.max_pool(x, (self.pool_window,) * 2, strides=(self.pool_stride,) * 2)
                if torchvision and name == 'conv5':
                    x = adaptive_avg_pool(x, TORCHVISION_POOL_SIZE)
                self._record('pool' + name[-1], x)

        x = x.reshape(x.shape[0], -1)  # NHWC flatten order; weight converters permute.
        for name in ('fc6', 'fc7'):
            if torchvision:  # Its classifier: Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear.
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = nn.Dense(scaled_features(FC_FEATURES, self.width, 1), **_layer_args(self, name))(x)
            x = act(self._norm(x, name, train))
            self._record(name, x)
            if not torchvision:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, **_layer_args(self, 'fc8'))(x)
        self._record('fc8', x)
        return x.astype(jnp.float32)


class Fig1Net(nn.Module):
    """The small net of the paper's Fig. 1 (ReLU vs tanh on CIFAR-10).

    The paper says only "a four-layer convolutional neural network"; this is cuda-convnet's
    four-layer CIFAR-10 net of that era (Krizhevsky's own code, example-layers/layers-18pct.cfg
    without its two response-normalisation layers; layers-80sec.cfg is the same plus a 64-unit
    hidden FC layer): three 5x5 convs with 32, 32, 64 kernels, a 3/2 max-pool then two 3/2
    average-pools, and one FC layer to the classes. Input 32x32 (any size >= 8 works).
    init_scheme='cuda_convnet' is that code's initialisation (CUDA_CONVNET_STDDEV), 'paper' the
    paper's N(0, 0.01) with biases of 1 (FIG1_ONE_BIASES), 'he' a variance-preserving one. Each
    layer's output (after its activation, before pooling) is sown as `<layer>_out`.
    """
    num_classes: int = 10
    activation: str = 'relu'
    lrn: bool = False             # cuda-convnet's layers-18pct.cfg adds LRN (size 3) after pools.
    lrn_k: float = 2.0
    lrn_n: int = 3
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    lrn_convention: str = 'paper'
    lrn_divisor: str = 'local'
    width: float = 1.0            # Its published net is 1.0 (32/32/64); less only for tests.
    init_scheme: str = 'he'
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # No dropout or batch norm in this net.
        act = ACTIVATIONS[self.activation]
        x = x.astype(jnp.dtype(self.dtype))
        for i, (features, pool) in enumerate([(32, nn.max_pool), (32, nn.avg_pool),
                                              (64, nn.avg_pool)], start=1):
            name = f'conv{i}'
            x = nn.Conv(scaled_features(features, self.width, 1), (5, 5), padding='SAME',
                        **_layer_args(self, name, FIG1_ONE_BIASES))(x)
            x = act(x)
            self.sow('intermediates', name + '_out', x)
            x = pool(x, (3, 3), strides=(2, 2), padding='SAME')
            if self.lrn:
                x = lrn_layer(self, x, f'lrn{i}')
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(self.num_classes, **_layer_args(self, 'fc4', FIG1_ONE_BIASES))(x)
        self.sow('intermediates', 'fc4_out', x)
        return x.astype(jnp.float32)


ARCHITECTURES = {'fig1': Fig1Net}  # Anything else is AlexNet (its own `architecture` field).
ARCHITECTURE_NAMES = tuple(ALEXNET_CONV_SPECS) + tuple(ARCHITECTURES)


def create_model(model_config) -> nn.Module:
    """The module named by `model_config.architecture` (default AlexNet), from its fields.

    Fields a module does not have are ignored, so one config section serves every net.
    """
    check_config(model_config)
    cls = ARCHITECTURES.get(model_config.get('architecture', 'paper'), AlexNet)
    fields = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
    return cls(**{k: v for k, v in dict(model_config).items() if k in fields})
