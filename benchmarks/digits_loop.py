r"""The digits demo's training loop against a bare `jax.jit` SGD step of the same model and batch.

  python benchmarks/digits_loop.py [--steps=20 --repeats=4] [--groups=2] [--lrn_share]

Bare step: benchmarks/plain_step.py's step (forward with dropout, cross-entropy, grads, SGD with
momentum) under `jax.jit` on one fixed device batch of 64 digits images (67 px, 1 channel).
Demo loop: what `python launch.py --config=configs/alexnet.py:digits` runs per step
(`train.step_runner`: device-resident data gathered and augmented in the step, the pmapped
train step, metrics kept on the device until a log step), side jobs (eval, checkpoints) off.
Both alternate in short rounds so machine load hits them alike; prints img/s of each (best
round) and the ratio loop / bare (goal >= 0.9). `--lrn_share` also times the bare step of the
same net without LRN in the same rounds and prints LRN's share of the bare step, by wall and by
CPU time (the steadier of the two on a shared machine).
"""

import os
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from alexnet_jax.data import device_data  # noqa: E402
from alexnet_jax.data import input_pipeline  # noqa: E402
from alexnet_jax import models  # noqa: E402
from alexnet_jax import parallel  # noqa: E402
from alexnet_jax import train  # noqa: E402
from configs import alexnet  # noqa: E402
from plain_step import plain_step_fn  # noqa: E402

flags.DEFINE_integer('steps', 20, 'Steps per round.')
flags.DEFINE_integer('repeats', 4, 'Alternating rounds.')
flags.DEFINE_string('variant', 'digits', 'configs/alexnet.py variant.')
flags.DEFINE_integer('groups', None, "config.model.groups (2: the paper's two-group net).")
flags.DEFINE_bool('lrn_share', False, 'Also time the bare step without LRN: LRN share of the step.')
FLAGS = flags.FLAGS


def main(argv):
    del argv
    config = alexnet.get_config(FLAGS.variant)
    if FLAGS.groups:
        config.model.groups = FLAGS.groups
    data = input_pipeline.facts(config)
    info = data.info
    batch = config.train.batch_size
    num_steps, spe = train.num_train_steps(config, data)
    state, key = train.initial_state(config, info, spe, num_steps)
    keys = {'dropout': key[None], 'data': device_data.data_key(config.seed)[None]}  # One seed.
    run_step = train.step_runner(config, data, keys, 0, 'single')
    p_state = parallel.replicate(jax.tree.map(lambda x: np.asarray(x)[None], state))
    log_every = config.train.log_every_steps

    def loop(n):
        nonlocal p_state
        pending = []
        for i in range(n):
            p_state, m = run_step(p_state)
            pending.append(m)
            if (i + 1) % log_every == 0:  # The loop fetches metrics only at log steps.
                jax.device_get(pending)
                pending = []
        return p_state.params

    tx = optax.sgd(config.optim.learning_rate, momentum=config.optim.momentum)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch,) + info.image_shape).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))

    def bare_step(lrn: bool):
        """`run(n)`: n bare steps of the config's net (with LRN or not)."""
        model = models.create_model(config.model).clone(lrn=lrn)
        params = jax.tree.map(jnp.asarray, state.params)  # LRN has no parameters.
        opt_state = tx.init(params)
        step = plain_step_fn(model, tx)

        def run(n):
            nonlocal params, opt_state
            for _ in range(n):
                params, opt_state, loss = step(params, opt_state, x, y, jax.random.key(1))
            return loss
        return run

    fns = {'bare': bare_step(config.model.lrn), 'loop': loop}
    if FLAGS.lrn_share:
        fns['bare_no_lrn'] = bare_step(False)
    times = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for fn in fns.values():  # Compile and warm up.
        jax.block_until_ready(fn(2))
    for _ in range(FLAGS.repeats):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(FLAGS.steps))
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    ips = {k: batch * FLAGS.steps / min(v) for k, v in times.items()}
    ratios = [b / l for b, l in zip(times['bare'], times['loop'])]
    print(f'{jax.default_backend()} x{jax.local_device_count()}, {FLAGS.variant}: batch {batch}, '
          f'{info.image_shape}, {FLAGS.steps} steps x {FLAGS.repeats} rounds')
    print(f'bare jit step: {ips["bare"]:.0f} img/s')
    print(f'demo loop:     {ips["loop"]:.0f} img/s')
    print(f'ratio loop / bare: best rounds {ips["loop"] / ips["bare"]:.3f}, median of paired '
          f'rounds {statistics.median(ratios):.3f}')
    if FLAGS.lrn_share:
        print(f'bare step without LRN: {ips["bare_no_lrn"]:.0f} img/s')
        paired = [1 - n / b for n, b in zip(times['bare_no_lrn'], times['bare'])]
        print(f'LRN share of the bare step: best rounds '
              f'{1 - min(times["bare_no_lrn"]) / min(times["bare"]):.1%}, median of paired '
              f'rounds {statistics.median(paired):.1%}, CPU time '
              f'{1 - min(cpu["bare_no_lrn"]) / min(cpu["bare"]):.1%}')


if __name__ == '__main__':
    app.run(main)
