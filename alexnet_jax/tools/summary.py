r"""Per-layer table of AlexNet: output shape, weights, biases, MACs, activations.

  python -m alexnet_jax.tools.summary --config=configs/alexnet.py [--config.model.groups=2]

Everything is read off the live module (`jax.eval_shape` of init and apply, so nothing is
computed and no memory is allocated), never from a table of constants. The conventions are
printed side by side because the literature mixes them:

  * MACs: multiply-accumulates, k*k*(c_in/groups)*c_out*H*W for a conv, c_in*c_out for an FC.
  * "seed compute": the convention of a widely copied AlexNet layer table, conv
    (k*k*c_in/groups + 1)*c_out*H*W (a bias add counted as one op), FC weights only; and
    parameters "FC biases omitted", as that table does.
  * activations: every op's output counted once (conv, activation, LRN, BN, pool, dropout) plus
    the input: conv1's 55x55x96 three times, for the conv, its ReLU and its LRN.
"""

from __future__ import annotations  # models.AlexNet in signatures: not loaded for --help.

import dataclasses
import math

from absl import app
from absl import flags
from etils import epy

from alexnet_jax import cli

with epy.lazy_imports():  # Loaded on first use: --help answers before jax loads.
    import jax
    import jax.numpy as jnp
    from alexnet_jax import models

FLAGS = flags.FLAGS


@dataclasses.dataclass
class LayerRow:
    name: str
    output_shape: tuple   # Without the batch axis.
    weights: int = 0
    biases: int = 0
    macs: int = 0
    seed_compute: int = 0
    activations: int = 0

    @property
    def is_conv(self) -> bool:
        return self.name.startswith('conv')

    @property
    def is_fc(self) -> bool:
        return self.name.startswith('fc')


def _abstract_model_io(model: models.AlexNet, input_shape):
    x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape)))
    _, state = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros(x.shape), mutable=['intermediates']), variables)
    outputs = {k[:-len('_out')]: v[0].shape[1:] for k, v in state['intermediates'].items()
               if k.endswith('_out')}  # (Not the LRN layers' sown divisors.)
    return variables['params'], outputs


def layer_table(model: models.AlexNet, input_shape=(227, 227, 3)) -> list:
    """Rows for the input and every layer the model sows, in order."""
    params, outputs = _abstract_model_io(model, input_shape)
    rows = [LayerRow('input', tuple(input_shape), activations=math.prod(input_shape))]
    for name in models.LAYERS:
        if name not in outputs:
            continue
        shape = tuple(outputs[name])
        size = math.prod(shape)
        row = LayerRow(name, shape, activations=size)
        if name in params:
            kernel, bias = params[name]['kernel'].shape, params[name]['bias'].shape
            row.weights, row.biases = math.prod(kernel), math.prod(bias)
            positions = math.prod(shape[:-1])  # H*W for a conv, 1 for an FC.
            row.macs = row.weights * positions
            row.seed_compute = (row.weights + row.biases) * positions if row.is_conv else row.weights
            ops = 1                                   # the conv / dense output
            ops += 1 if name != 'fc8' else 0          # its activation
            ops += 1 if model.batch_norm and name != 'fc8' else 0
            ops += 1 if name in ('fc6', 'fc7') and model.dropout_rate > 0 else 0
            row.activations = size * ops
        rows.append(row)
    return rows


def totals(rows) -> dict:
    layers = [r for r in rows if r.weights]
    parts = {'': layers, 'conv_': [r for r in layers if r.is_conv],
             'fc_': [r for r in layers if r.is_fc]}
    t = {}
    for prefix, rs in parts.items():
        t[prefix + 'params'] = sum(r.weights + r.biases for r in rs)
        t[prefix + 'macs'] = sum(r.macs for r in rs)
        t[prefix + 'seed_compute'] = sum(r.seed_compute for r in rs)
    t['params_fc_biases_omitted'] = t['params'] - sum(r.biases for r in parts['fc_'])
    t['activations'] = sum(r.activations for r in rows)
    return t


def format_table(rows) -> str:
    header = f'{"layer":<7}{"output":>16}{"weights":>13}{"biases":>8}{"MACs":>15}' \
             f'{"seed compute":>15}{"activations":>13}'
    lines = [header, '-' * len(header)]
    for r in rows:
        shape = 'x'.join(map(str, r.output_shape))
        lines.append(f'{r.name:<7}{shape:>16}{r.weights:>13,}{r.biases:>8,}{r.macs:>15,}'
                     f'{r.seed_compute:>15,}{r.activations:>13,}')
    t = totals(rows)
    pct = lambda a, b: f'{100 * a / b:.1f}%' if b else '-'
    lines += [
        '-' * len(header),
        f'parameters (all biases):          {t["params"]:>15,}',
        f'parameters (FC biases omitted):   {t["params_fc_biases_omitted"]:>15,}',
        f'forward MACs:                     {t["macs"]:>15,}',
        f'forward compute (seed convention):{t["seed_compute"]:>15,}',
        f'activations (every op once):      {t["activations"]:>15,}',
        f'conv: {pct(t["conv_params"], t["params"])} of parameters, '
        f'{pct(t["conv_seed_compute"], t["seed_compute"])} of compute; '
        f'FC: {pct(t["fc_params"], t["params"])} of parameters, '
        f'{pct(t["fc_seed_compute"], t["seed_compute"])} of compute',
    ]
    return '\n'.join(lines)


@cli.one_line_errors
def main(argv):
    del argv
    config = cli.validated_config()
    size = FLAGS.image_size or config.data.image_size
    model = models.create_model(config.model)
    print(f'AlexNet summary ({config.get("variant", "?")} config), input {size}x{size}x'
          f'{FLAGS.channels}, groups={model.groups}, width={model.width}')
    print(format_table(layer_table(model, (size, size, FLAGS.channels))))


if __name__ == '__main__':
    cli.define_config_flag()
    flags.DEFINE_integer('image_size', None, 'Input side length; default config.data.image_size.')
    flags.DEFINE_integer('channels', 3, 'Input channels (3 for RGB, 1 for digits).')
    app.run(main, flags_parser=cli.parse_flags)
