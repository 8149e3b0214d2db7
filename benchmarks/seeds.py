r"""Sequential vs vectorised seeds: S seeds of one digits grid point, per training step.

  python benchmarks/seeds.py [--num_seeds=3 --steps=10 --repeats=2 --variant=digits]

sequential: S single-seed device steps one after another (as S separate runs would do, minus
their compiles and data loads); map: one pmapped step that runs the S seeds one after another
inside (lax.map); vmap: one step batched over the seeds (jax.vmap: convolutions with a seed
batch of kernels). All on device-resident data, metrics left on the device. Prints seed-images/s
(S x batch x steps / time, best round) and compile seconds per mode; `train.seeds_mode`
and benchmarks/RESULTS.md record the choice.
"""

import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax.data import device_data  # noqa: E402
from alexnet_jax.data import input_pipeline  # noqa: E402
from alexnet_jax import parallel  # noqa: E402
from alexnet_jax import seeds as seeds_lib  # noqa: E402
from alexnet_jax import train  # noqa: E402
from configs import alexnet  # noqa: E402

flags.DEFINE_integer('num_seeds', 3, 'Seeds.')
flags.DEFINE_integer('steps', 10, 'Steps per round.')
flags.DEFINE_integer('repeats', 2, 'Rounds per mode (alternating).')
flags.DEFINE_string('variant', 'digits', 'configs/alexnet.py variant.')
flags.DEFINE_list('modes', ['sequential', 'map', 'vmap'], 'Modes to time.')
FLAGS = flags.FLAGS


def main(argv):
    del argv
    config = alexnet.get_config(FLAGS.variant)
    data = input_pipeline.facts(config)
    info = data.info
    seeds = list(range(FLAGS.num_seeds))
    configs = [seeds_lib.seed_config(config, s) for s in seeds]
    states, dkeys = zip(*[train.initial_state(c, info, 20, 200) for c in configs])
    keys = [{'dropout': k, 'data': device_data.data_key(s)} for k, s in zip(dkeys, seeds)]
    runners, compile_s = {}, {}
    for mode in FLAGS.modes:
        if mode == 'sequential':  # One seed's steps after another's, as separate runs.
            parts = [[parallel.replicate(jax.tree.map(lambda x: np.asarray(x)[None], st)),
                      train.step_runner(configs[0], data, jax.tree.map(lambda x: x[None], k), 0,
                                        'single')] for st, k in zip(states, keys)]

            def run(n, parts=parts):
                for part in parts:
                    for _ in range(n):
                        part[0], _ = part[1](part[0])
                return [p[0].params for p in parts]
        else:
            stacked = {'dropout': jnp.stack([k['dropout'] for k in keys]),
                       'data': jnp.stack([k['data'] for k in keys])}
            step = train.step_runner(configs[0], data, stacked, 0, mode)
            holder = [parallel.replicate(train.stack_seeds(states))]

            def run(n, step=step, holder=holder):
                for _ in range(n):
                    holder[0], _ = step(holder[0])
                return holder[0].params
        t = time.perf_counter()
        jax.block_until_ready(run(1))
        compile_s[mode] = time.perf_counter() - t
        runners[mode] = run
    best = {m: float('inf') for m in runners}
    for _ in range(FLAGS.repeats):
        for mode, run in runners.items():
            t = time.perf_counter()
            jax.block_until_ready(run(FLAGS.steps))
            best[mode] = min(best[mode], time.perf_counter() - t)
    images = len(seeds) * config.train.batch_size * FLAGS.steps
    print(f'{jax.default_backend()} x{jax.local_device_count()}, {FLAGS.variant}, '
          f'{len(seeds)} seeds, batch {config.train.batch_size}, {FLAGS.steps} steps x '
          f'{FLAGS.repeats} rounds')
    for mode in runners:
        print(f'{mode:>10}: {images / best[mode]:7.0f} seed-img/s  (first call incl. compile '
              f'{compile_s[mode]:.1f} s)')


if __name__ == '__main__':
    app.run(main)
