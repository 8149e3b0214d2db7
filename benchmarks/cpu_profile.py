r"""Where a plain Flax AlexNet train step spends its time on CPU, and what XLA:CPU knobs do.

  python benchmarks/cpu_profile.py --mode=layers     # fwd+bwd time of each conv / fc layer
  python benchmarks/cpu_profile.py --mode=variants   # whole step under XLA flags / dtypes
  python benchmarks/cpu_profile.py --mode=trace --trace_dir=/tmp/trace  # jax.profiler trace

`layers` times each layer's forward + backward alone (jit of the VJP), in NHWC (Flax's layout)
and NCHW, and reports its share of the sum. `variants` reruns a whole plain step (like
benchmarks/train_step.py's, minus weight decay) in a subprocess per variant, with the
XLA_FLAGS / dtype / batch given in VARIANTS, and prints ms/step min and median over --repeats rounds (the machine may be
shared: compare minima). `trace` writes a TensorBoard/Perfetto trace of a few steps.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_enum('mode', 'layers', ['layers', 'variants', 'trace', 'one'], 'What to run.')
flags.DEFINE_integer('batch', 16, 'Batch size.')
flags.DEFINE_integer('image_size', 227, 'Input side.')
flags.DEFINE_string('dtype', 'float32', 'Compute dtype (mode=one).')
flags.DEFINE_integer('steps', 3, 'Timed steps per round.')
flags.DEFINE_integer('repeats', 3, 'Rounds.')
flags.DEFINE_string('trace_dir', '/tmp/alexnet_cpu_trace', 'mode=trace output.')
flags.DEFINE_list('only', [], 'mode=variants: run only these variant names.')
FLAGS = flags.FLAGS

# name -> (extra XLA_FLAGS, dtype, batch or None for --batch)
VARIANTS = {
    'baseline': ('', 'float32', None),
    'onednn_custom_call': ('--xla_cpu_experimental_onednn_custom_call=true', 'float32', None),
    'fast_math': ('--xla_cpu_enable_fast_math=true', 'float32', None),
    'no_multithread_eigen': ('--xla_cpu_multi_thread_eigen=false', 'float32', None),
    'bfloat16': ('', 'bfloat16', None),
    'batch_x2': ('', 'float32', 'x2'),
}

LAYERS = [  # name, input HWC, kernel, stride, padding, out channels (the paper's net at 227)
    ('conv1', (227, 227, 3), 11, 4, 0, 96),
    ('conv2', (27, 27, 96), 5, 1, 2, 256),
    ('conv3', (13, 13, 256), 3, 1, 1, 384),
    ('conv4', (13, 13, 384), 3, 1, 1, 384),
    ('conv5', (13, 13, 384), 3, 1, 1, 256),
]
FCS = [('fc6', 9216, 4096), ('fc7', 4096, 4096), ('fc8', 4096, 1000)]


def _time(fn, *args):
    import jax  # pylint: disable=import-outside-toplevel
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / FLAGS.steps)
    return min(times), statistics.median(times)


def layers():
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from jax import lax  # pylint: disable=import-outside-toplevel
    n = FLAGS.batch
    rows = []
    for name, (h, w, c), k, s, p, o in LAYERS:
        for layout in ('NHWC', 'NCHW'):
            dn = ('NHWC', 'HWIO', 'NHWC') if layout == 'NHWC' else ('NCHW', 'OIHW', 'NCHW')
            x = jnp.ones((n, h, w, c) if layout == 'NHWC' else (n, c, h, w))
            kern = jnp.ones((k, k, c, o) if layout == 'NHWC' else (o, c, k, k)) * 0.01

            def f(x, kern, dn=dn, s=s, p=p):
                y, vjp = jax.vjp(lambda x, kk: lax.conv_general_dilated(
                    x, kk, (s, s), [(p, p), (p, p)], dimension_numbers=dn), x, kern)
                return vjp(y)
            best, med = _time(jax.jit(f), x, kern)
            out = (h + 2 * p - k) // s + 1
            gflop = 3 * 2 * n * out * out * k * k * c * o / 1e9
            rows.append((name, layout, best, med, gflop))
    for name, i, o in FCS:
        x, kern = jnp.ones((n, i)), jnp.ones((i, o)) * 0.01

        def g(x, kern):
            y, vjp = jax.vjp(jnp.dot, x, kern)
            return vjp(y)
        best, med = _time(jax.jit(g), x, kern)
        rows.append((name, '-', best, med, 3 * 2 * n * i * o / 1e9))
    total = sum(r[2] for r in rows if r[1] in ('NHWC', '-'))
    print(f'per-layer forward+backward, batch {n}, float32 (share: of the NHWC+fc sum '
          f'{1e3 * total:.0f} ms)')
    print(f'{"layer":<6} {"layout":<6} {"min ms":>8} {"med ms":>8} {"GFLOP/s":>8} {"share":>6}')
    for name, layout, best, med, gflop in rows:
        share = f'{100 * best / total:5.1f}%' if layout in ('NHWC', '-') else ''
        print(f'{name:<6} {layout:<6} {1e3 * best:>8.1f} {1e3 * med:>8.1f} '
              f'{gflop / best:>8.1f} {share:>6}')


def one():
    """The plain step (benchmarks/train_step.py) alone: prints JSON {min_ms, median_ms}."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import optax  # pylint: disable=import-outside-toplevel
    from alexnet_jax import models  # pylint: disable=import-outside-toplevel
    from configs import alexnet  # pylint: disable=import-outside-toplevel
    config = alexnet.get_config()
    config.model.dtype = FLAGS.dtype
    model = models.create_model(config.model)
    shape = (FLAGS.batch, FLAGS.image_size, FLAGS.image_size, 3)
    params = jax.jit(lambda k: model.init(k, jnp.zeros(shape[1:])[None]))(
        jax.random.key(0))['params']
    tx = optax.sgd(0.01, momentum=0.9)  # As benchmarks/train_step.py's plain step.

    from plain_step import plain_step_fn  # Imports jax: after XLA_FLAGS are set.
    step = plain_step_fn(model, tx)
    state = [params, tx.init(params)]
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    y = jnp.zeros(FLAGS.batch, jnp.int32)
    key = jax.random.key(1)

    def run():
        state[0], state[1], loss = step(state[0], state[1], x, y, key)
        return loss
    start = time.perf_counter()
    jax.block_until_ready(run())
    compile_s = time.perf_counter() - start
    best, med = _time(lambda: run())
    print('RESULT ' + json.dumps(dict(min_ms=1e3 * best, median_ms=1e3 * med,
                                      compile_s=compile_s)))


def variants():
    print(f'plain Flax AlexNet train step at {FLAGS.image_size}, {FLAGS.steps} steps x '
          f'{FLAGS.repeats} rounds per variant (one process each)')
    print(f'{"variant":<22} {"batch":>5} {"min ms":>8} {"med ms":>8} {"img/s":>7} {"compile s":>9}')
    for name, (xla_flags, dtype, batch) in VARIANTS.items():
        if FLAGS.only and name not in FLAGS.only:
            continue
        batch = FLAGS.batch * 2 if batch == 'x2' else (batch or FLAGS.batch)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
        env['XLA_FLAGS'] = ' '.join(f for f in (env.get('XLA_FLAGS', ''), xla_flags) if f)
        if not env['XLA_FLAGS']:
            del env['XLA_FLAGS']
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), '--mode=one', f'--dtype={dtype}',
             f'--batch={batch}', f'--image_size={FLAGS.image_size}', f'--steps={FLAGS.steps}',
             f'--repeats={FLAGS.repeats}'], env=env, capture_output=True, text=True, cwd=ROOT)
        if 'RESULT ' not in proc.stdout:
            print(f'{name:<22} failed: {proc.stderr.strip().splitlines()[-1:]}', flush=True)
            continue
        r = json.loads(proc.stdout.split('RESULT ', 1)[1])
        print(f'{name:<22} {batch:>5} {r["min_ms"]:>8.0f} {r["median_ms"]:>8.0f} '
              f'{1e3 * batch / r["min_ms"]:>7.1f} {r["compile_s"]:>9.1f}', flush=True)


def trace():
    import jax  # pylint: disable=import-outside-toplevel
    with jax.profiler.trace(FLAGS.trace_dir):
        one()
    print(f'trace in {FLAGS.trace_dir} (tensorboard --logdir, or ui.perfetto.dev)')


def main(argv):
    del argv
    {'layers': layers, 'variants': variants, 'trace': trace, 'one': one}[FLAGS.mode]()


if __name__ == '__main__':
    app.run(main)
