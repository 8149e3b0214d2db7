r"""What the two columns on two devices exchange and cost, against data parallelism.

  python benchmarks/columns.py                  # CPU: two simulated devices (set here)
  python benchmarks/columns.py --batch=128      # a two-GPU box (or any host with 2+ devices)

The same groups=2 net and the same global batch, stepped two ways on two devices: data parallel
(`train.make_train_step`: pmap, each device the whole net and half the batch, the gradients
all-reduced) and model parallel (config.model_parallel=2, alexnet_jax/columns.py: each device
one column and the whole batch, the columns' maps gathered before conv3, fc6, fc7 and fc8).
Per step it prints the bytes each device sends into collectives, read from the compiled
programs (the operands of every all-gather, all-reduce, reduce-scatter, collective-permute and
all-to-all in `jit(...).lower(...).compile().as_text()`), and the step time of each. It also
prints the forward difference of LRN per column (cuda-convnet's two-GPU net) against LRN across
all maps (Caffe's) on the batch.

Simulated CPU devices share the machine's cores: the time ratio there shows the overheads, not
what two GPUs would gain.
"""

import collections
import functools
import os
import re
import sys
import time

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax import columns  # noqa: E402
from alexnet_jax import models  # noqa: E402
from alexnet_jax import optim  # noqa: E402
from alexnet_jax import parallel  # noqa: E402
from alexnet_jax.data import preprocess  # noqa: E402
from alexnet_jax import train  # noqa: E402
from configs import alexnet  # noqa: E402

flags.DEFINE_integer('batch', 16, 'Global batch size (both ways).')
flags.DEFINE_integer('image_size', 227, 'Input side length.')
flags.DEFINE_float('width', 1.0, 'Width multiplier (model.width; 1.0: the paper).')
flags.DEFINE_float('lrn_alpha', 1e-4, "LRN's alpha (1.625625: the digits LRN grid's strongest, "
                   "at its [-1, 1] pixels, configs/ablations.py).")
flags.DEFINE_integer('steps', 3, 'Timed steps per round (after one warm-up step).')
flags.DEFINE_integer('repeats', 2, 'Alternating rounds (data parallel, model parallel).')
FLAGS = flags.FLAGS

COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter', 'collective-permute',
               'all-to-all')
INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%([\w.\-]+) = (.*?)\s([a-z][a-z0-9\-]*)\((.*)$')
ARRAY = re.compile(r'\b([a-z]+\d*)\[([\d,]*)\]')
BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4,
         's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8}


def _bytes(hlo_type: str) -> int:
    return sum(BYTES[dtype] * int(np.prod([int(d) for d in dims.split(',') if d]))
               for dtype, dims in ARRAY.findall(hlo_type))


def _group_size(attrs: str) -> int:
    """Devices in one replica group of a collective (1: it moves nothing)."""
    explicit = re.search(r'replica_groups=\{\{([\d,]*)\}', attrs)
    if explicit:
        return len(explicit.group(1).split(','))
    iota = re.search(r'replica_groups=\[\d+,(\d+)\]', attrs)
    if iota:
        return int(iota.group(1))
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", attrs)
    if mesh:
        sizes = dict(re.findall(r"'(\w+)'=(\d+)", mesh.group(1)))
        return int(np.prod([int(sizes[a]) for a in re.findall(r"'(\w+)'", mesh.group(2))]))
    return 2  # No groups printed: all devices (two here).


def collective_bytes(hlo: str) -> dict:
    """{collective: operand bytes a device sends per step} over the instructions of compiled
    HLO text: operands are named there, their sizes come from their own instructions' types;
    a collective over groups of one device moves nothing and a collective-permute is sent by
    its sources only (bytes x pairs / devices)."""
    devices = int(re.search(r'num_partitions=(\d+)', hlo).group(1)) if 'num_partitions' in hlo \
        else 2
    types, out = {}, collections.Counter()
    for line in hlo.splitlines():
        match = INSTRUCTION.match(line)
        if not match:
            continue
        name, hlo_type, op, rest = match.groups()
        types[name] = hlo_type
        op = op.removesuffix('-start')
        if op not in COLLECTIVES:
            continue
        operands, attrs = rest[:rest.index(')')], rest[rest.index(')'):]
        size = sum(_bytes(types[n]) for n in re.findall(r'%([\w.\-]+)', operands))
        if op == 'collective-permute':
            pairs = re.search(r'source_target_pairs=\{(.*?)\}\}', attrs)
            out[op] += size * (pairs.group(1).count('{') if pairs else 0) / devices
        elif _group_size(attrs) > 1:
            out[op] += size
    return dict(out)


def time_steps(run, steps: int) -> float:
    jax.block_until_ready(run())
    start = time.perf_counter()
    for _ in range(steps):
        out = run()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def mib(counts: dict) -> str:
    parts = ', '.join(f'{k} {v / 2**20:.2f}' for k, v in sorted(counts.items()))
    return f'{sum(counts.values()) / 2**20:9.2f} MiB  ({parts or "none"})'


def main(argv):
    del argv
    devices = jax.devices()[:2]
    if len(devices) < 2:
        raise app.UsageError('Needs two devices.')
    config = alexnet.get_config()
    config.model.update(groups=2, width=FLAGS.width, lrn_alpha=FLAGS.lrn_alpha)
    model = models.create_model(config.model)
    shape = (FLAGS.image_size,) * 2 + (3,)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (FLAGS.batch,) + shape, dtype=np.uint8)
    labels = rng.integers(0, config.model.num_classes, FLAGS.batch).astype(np.int32)
    mean, std = preprocess.mean_std(config.data, 3)
    tx = optim.create_optimizer(config.optim, steps_per_epoch=1000, num_steps=100_000)
    params_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    state = train.create_train_state(params_key, model, tx, shape)
    host_batch = {'image': images.reshape((2, -1) + shape), 'label': labels.reshape(2, -1)}

    # Data parallel: the loop's pmapped step (lowered here to read its collectives).
    dp = jax.pmap(functools.partial(train.train_step, dropout_key=dropout_key, mean=mean,
                                    std=std), axis_name=parallel.AXIS, devices=devices)
    dp_state, dp_batch = parallel.replicate(state, devices), host_batch
    dp_hlo = dp.lower(dp_state, dp_batch).compile().as_text()

    # Model parallel: the loop's column step.
    cols = columns.Columns(model, devices)
    mp = cols.make_train_step(train.train_step, mean, std)
    mp_state = cols.replicate(train.stack_seeds([state]))
    keys, mp_batch = cols.replicate({'dropout': dropout_key[None]}), cols.batch(host_batch)
    mp_hlo = mp.lower(mp_state, keys, mp_batch).compile().as_text()

    def stepping(step, state, *args):
        """A call that runs `step` once on the state the last call left; its loss."""
        box = [state]

        def run():
            box[0], metrics = step(box[0], *args)
            return metrics['loss']
        return run
    dp_run, mp_run = stepping(dp, dp_state, dp_batch), stepping(mp, mp_state, keys, mp_batch)

    times = {'dp': [], 'mp': []}
    for _ in range(FLAGS.repeats):
        times['dp'].append(time_steps(dp_run, FLAGS.steps))
        times['mp'].append(time_steps(mp_run, FLAGS.steps))
    dp_t, mp_t = min(times['dp']), min(times['mp'])

    # LRN per column vs across all maps: the same parameters, the batch's logits.
    x = preprocess.normalize_batch({'image': images}, mean, std)
    across = np.asarray(model.apply({'params': state.params}, x))
    per_column = np.asarray(model.clone(lrn_per_column=True).apply(
        {'params': state.params}, x))
    diff = np.abs(per_column - across)

    print(f'device: {devices[0].device_kind} x2 ({jax.default_backend()}), jax {jax.__version__}')
    print(f'net: groups=2, width {FLAGS.width}, input {FLAGS.image_size}, global batch '
          f'{FLAGS.batch}; {FLAGS.steps} steps x {FLAGS.repeats} rounds, best round')
    print('bytes each device sends into collectives per step:')
    print(f'  data parallel  (gradient all-reduce): {mib(collective_bytes(dp_hlo))}')
    print(f'  model parallel (the columns):         {mib(collective_bytes(mp_hlo))}')
    print(f'step time: data parallel {1e3 * dp_t:.1f} ms, model parallel {1e3 * mp_t:.1f} ms '
          f'(model / data {mp_t / dp_t:.2f})')
    print(f'LRN (alpha {FLAGS.lrn_alpha:g}) per column vs across all maps, logits at init: '
          f'max |diff| {diff.max():.3g}, '
          f'relative to max |logit| {diff.max() / np.abs(across).max():.3g}')


if __name__ == '__main__':
    app.run(main)
