"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) in Flax, with a switch for every ablation.

Layer table (input 227x227x3; the paper's "224" is a known typo):

  conv1  96 x 11x11 /4, pad 0, act, LRN, maxpool 3/2   55 -> 27
  conv2  256 x 5x5, pad 2, groups, act, LRN, maxpool   27 -> 13
  conv3  384 x 3x3, pad 1, act (sees both groups)      13
  conv4  384 x 3x3, pad 1, groups, act                 13
  conv5  256 x 3x3, pad 1, groups, act, maxpool        13 -> 6
  fc6, fc7  4096, act, dropout;  fc8  num_classes (logits)

Every layer's output (after its activation) is sown into the 'intermediates' collection as
`<layer>_out` (a no-op unless that collection is mutable); `LAYERS` lists them in order. The
summary and feature extraction read them.
"""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# Layer widths of the paper's net; `width` scales them.
CONV_SPECS = (  # name, features, kernel, stride, padding, grouped
    ('conv1', 96, 11, 4, 0, False),
    ('conv2', 256, 5, 1, 2, True),
    ('conv3', 384, 3, 1, 1, False),
    ('conv4', 384, 3, 1, 1, True),
    ('conv5', 256, 3, 1, 1, True),
)
FC_FEATURES = 4096
# The paper initialises these biases to 1 "to accelerate the early stages of learning by
# providing the ReLUs with positive inputs"; all others to 0.
PAPER_ONE_BIASES = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')

LAYERS = ('conv1', 'lrn1', 'pool1', 'conv2', 'lrn2', 'pool2', 'conv3', 'conv4', 'conv5', 'pool5',
          'fc6', 'fc7', 'fc8')  # Outputs sown as '<layer>_out'; lrn* only when lrn=True.

ACTIVATIONS = {
    'relu': nn.relu,
    'tanh': jnp.tanh,
    'sigmoid': nn.sigmoid,
    'elu': nn.elu,
    'gelu': nn.gelu,
    'silu': nn.silu,
    'leaky_relu': nn.leaky_relu,
}
LRN_CONVENTIONS = ('paper', 'caffe')
INITS = ('paper', 'he', 'xavier')


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Looks up an activation by name, with an error listing the valid ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f'Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.')
    return ACTIVATIONS[name]


def local_response_norm(x: jax.Array, k: float = 2.0, n: int = 5, alpha: float = 1e-4,
                        beta: float = 0.75, convention: str = 'paper') -> jax.Array:
    """Local response normalisation across channels (last axis), Sec. 3.3 of the paper.

    b_i = a_i / (k + alpha' * sum_{j=max(0, i-n//2)}^{min(N-1, i+n//2)} a_j^2) ** beta

    with alpha' = alpha for the paper's convention (also `tf.nn.local_response_normalization`
    with depth_radius = n // 2) and alpha' = alpha / n for Caffe's and PyTorch's.
    """
    if convention not in LRN_CONVENTIONS:
        raise ValueError(f'Unknown lrn_convention {convention!r}; choose one of {LRN_CONVENTIONS}.')
    if n < 1 or n % 2 == 0:
        raise ValueError(f'LRN size n must be a positive odd number, got {n}.')
    scale = alpha if convention == 'paper' else alpha / n
    # Square and sum in float32 at least: bf16 sums of squares lose the small alpha term.
    acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
    sq = jnp.square(x.astype(acc_dtype))
    window = (1,) * (x.ndim - 1) + (n,)
    pads = ((0, 0),) * (x.ndim - 1) + ((n // 2, n // 2),)
    sums = lax.reduce_window(sq, 0.0, lax.add, window, (1,) * x.ndim, pads)
    return (x / jnp.power(k + scale * sums, beta)).astype(x.dtype)


def scaled_features(features: int, width: float, groups: int) -> int:
    """`features * width`, rounded to a positive multiple of `groups`."""
    return max(groups, int(round(features * width / groups)) * groups)


def spatial_sizes(size: int, pool_window: int = 3, pool_stride: int = 2) -> Optional[list]:
    """Side lengths after conv1, pool1, pool2 and pool5, or None if the input is too small."""
    sizes = []
    for name, _, kernel, stride, padding, _ in CONV_SPECS:
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


def min_input_size(pool_window: int = 3, pool_stride: int = 2) -> int:
    """The smallest square input the net accepts (67 for the paper's pooling)."""
    return next(s for s in range(1, 10_000) if spatial_sizes(s, pool_window, pool_stride))


def _kernel_init(init: str, name: str):
    del name
    if init == 'paper':
        return nn.initializers.normal(stddev=0.01)
    if init == 'he':
        return nn.initializers.he_normal()
    if init == 'xavier':
        return nn.initializers.xavier_uniform()
    raise ValueError(f'Unknown init {init!r}; choose one of {INITS}.')


def _bias_init(init: str, name: str):
    if init == 'paper' and name in PAPER_ONE_BIASES:
        return nn.initializers.ones
    return nn.initializers.zeros


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
    pool_window: int = 3
    pool_stride: int = 2
    groups: int = 1               # 2 = the paper's two-GPU connectivity in conv2, conv4, conv5.
    dropout_rate: float = 0.5
    batch_norm: bool = False      # BN after every conv and fc6/fc7 (e.g. with lrn=False).
    bn_momentum: float = 0.9
    width: float = 1.0            # Multiplies every hidden layer's width.
    init_scheme: str = 'paper'  # Not `init`: that name is Module.init.
    dtype: Any = jnp.float32      # Compute dtype.
    param_dtype: Any = jnp.float32

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4:
            raise ValueError(f'AlexNet expects NHWC images [batch, height, width, channels], '
                             f'got shape {x.shape}.')
        minimum = min_input_size(self.pool_window, self.pool_stride)
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
        act = get_activation(self.activation)
        dtype, param_dtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
        x = x.astype(dtype)

        for name, features, kernel, stride, padding, grouped in CONV_SPECS:
            x = nn.Conv(
                scaled_features(features, self.width, self.groups), (kernel, kernel),
                strides=stride, padding=padding,
                feature_group_count=self.groups if grouped else 1,
                kernel_init=_kernel_init(self.init_scheme, name), bias_init=_bias_init(self.init_scheme, name),
                dtype=dtype, param_dtype=param_dtype, name=name)(x)
            x = act(self._norm(x, name, train))
            self._record(name, x)
            if self.lrn and name in ('conv1', 'conv2'):
                x = local_response_norm(x, self.lrn_k, self.lrn_n, self.lrn_alpha, self.lrn_beta,
                                        self.lrn_convention)
                self._record('lrn' + name[-1], x)
            if name in ('conv1', 'conv2', 'conv5'):
                window = (self.pool_window, self.pool_window)
                x = nn.max_pool(x, window, strides=(self.pool_stride, self.pool_stride))
                self._record('pool' + name[-1], x)

        x = x.reshape(x.shape[0], -1)  # NHWC flatten order; weight converters permute.
        for name in ('fc6', 'fc7'):
            x = nn.Dense(scaled_features(FC_FEATURES, self.width, 1),
                         kernel_init=_kernel_init(self.init_scheme, name),
                         bias_init=_bias_init(self.init_scheme, name),
                         dtype=dtype, param_dtype=param_dtype, name=name)(x)
            x = act(self._norm(x, name, train))
            self._record(name, x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, kernel_init=_kernel_init(self.init_scheme, 'fc8'),
                     bias_init=_bias_init(self.init_scheme, 'fc8'),
                     dtype=dtype, param_dtype=param_dtype, name='fc8')(x)
        self._record('fc8', x)
        return x.astype(jnp.float32)
