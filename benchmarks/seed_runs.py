r"""Whole seed runs, as a sweep point trains them: seeds_mode 'sequential' vs 'processes'.

  python benchmarks/seed_runs.py [--num_seeds=2 --variant=digits --epochs=4 --modes=...]

Each mode trains the same seeds from scratch (`train.train_and_evaluate`, fresh workdirs: data load,
compile or cache load, evaluations, checkpoints, everything a run does) and prints its wall
time and seed-images/s (seeds x steps x batch / wall). The modes alternate per round
(--repeats), so a busy machine slows both alike; compare the ratio within one run. The XLA
compilation cache is on, as in launch.py and the sweep (a first round also fills it).
"""

import os
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from alexnet_jax import cli  # noqa: E402
from alexnet_jax import train  # noqa: E402
from configs import alexnet  # noqa: E402

flags.DEFINE_integer('num_seeds', 2, 'Seeds per mode.')
flags.DEFINE_string('variant', 'digits', 'configs/alexnet.py variant.')
flags.DEFINE_float('epochs', 4.0, 'Epochs per run.')
flags.DEFINE_integer('repeats', 1, 'Rounds (the modes alternate within each).')
flags.DEFINE_list('modes', ['sequential', 'processes'], 'seeds_mode values to time.')
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.use_compilation_cache()
    config = alexnet.get_config(FLAGS.variant)
    config.train.num_epochs = FLAGS.epochs
    config.num_seeds = FLAGS.num_seeds
    num_steps, _ = train.num_train_steps(config)
    images = FLAGS.num_seeds * num_steps * config.train.batch_size
    walls = {m: [] for m in FLAGS.modes}
    for r in range(FLAGS.repeats):
        for mode in FLAGS.modes:
            config.seeds_mode = mode
            with tempfile.TemporaryDirectory() as workdir:
                start = time.perf_counter()
                out = train.train_and_evaluate(config, workdir)
                walls[mode].append(time.perf_counter() - start)
            assert all('test_top1' in v for v in out.values()), out
            logging.info('round %d %s: %.1f s', r, mode, walls[mode][-1])
    print(f'{FLAGS.num_seeds} seeds x {num_steps} steps x batch {config.train.batch_size} '
          f'({FLAGS.variant}, {FLAGS.epochs:g} epochs), {len(os.sched_getaffinity(0))} cores:')
    for mode, w in walls.items():
        print(f'  {mode:>10}: best {min(w):6.1f} s wall  {images / min(w):6.0f} seed-img/s  '
              f'(rounds: {", ".join(f"{x:.1f}" for x in w)})')
    if len(FLAGS.modes) == 2:
        a, b = FLAGS.modes
        print(f'  {b} / {a} speed: {min(walls[a]) / min(walls[b]):.2f}x')


if __name__ == '__main__':
    app.run(main)
