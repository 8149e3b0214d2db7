r"""Weak scaling of the project's train step over 1, 2, 4, 8 devices, and end-to-end vs in-memory.

  python benchmarks/scaling.py                                  # CPU: simulated devices
  python benchmarks/scaling.py --width=1 --image_size=227 --batch=128 --dtype=bfloat16  # GPU/TPU

Each device count runs in its own process (on CPU with
XLA_FLAGS=--xla_force_host_platform_device_count=N; on a GPU/TPU host the first N real devices
are used, and counts above the local device count are skipped). The per-device batch is fixed
(weak scaling): the global batch grows with N. For each N it prints the compile time of the
train step, images/s in total and per device, and end-to-end images/s: the real input pipeline
(`input_pipeline.train_iterator` on `--data`, fake ImageNet-like uint8 images by default, or
digits; decode/augment/normalise in tf.data) feeding `parallel.prefetch_to_device` and the same
step, against the step on an in-memory device batch. `e2e ratio` = end-to-end / in-memory
images/s (goal >= 0.95: the input pipeline is never the bottleneck).

Simulated CPU devices share the machine's cores, so per-device images/s falls as 1/N there by
construction; what CPU runs do show is that compile time stays flat and the pipeline keeps up.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)

flags.DEFINE_list('devices', ['1', '2', '4', '8'], 'Device counts.')
flags.DEFINE_integer('batch', 16, 'Per-device batch size (fixed: weak scaling).')
flags.DEFINE_integer('image_size', 99, 'Input side length (227: the paper).')
flags.DEFINE_float('width', 0.25, 'Width multiplier (1.0: the paper).')
flags.DEFINE_string('dtype', 'float32', 'Compute dtype.')
flags.DEFINE_enum('data', 'fake', ['fake', 'digits'], 'Input for the end-to-end run.')
flags.DEFINE_integer('steps', 5, 'Timed steps per round.')
flags.DEFINE_integer('repeats', 2, 'Alternating rounds (in-memory, end-to-end); best counts.')
flags.DEFINE_string('json', None, 'Also write the table to this JSON file.')
flags.DEFINE_integer('worker', 0, 'Internal: run one device count in this process.')
FLAGS = flags.FLAGS


def make_config(num_devices: int):
    from configs import alexnet  # pylint: disable=import-outside-toplevel
    config = alexnet.get_config('digits' if FLAGS.data == 'digits' else 'fake')
    config.model.update(width=FLAGS.width, dtype=FLAGS.dtype)
    config.data.image_size = FLAGS.image_size
    if FLAGS.data == 'fake':  # uint8 images a little larger than the crop, paper augmentation.
        side = FLAGS.image_size + FLAGS.image_size // 8
        config.data.update(fake_shape=(side, side, 3), resize_size=side, fake_num_classes=1000,
                           fake_train_examples=max(4096, 4 * FLAGS.batch * num_devices))
    if FLAGS.dtype == 'float16':
        config.optim.loss_scale = 'dynamic'
    config.train.batch_size = FLAGS.batch * num_devices
    return config


def timed(fn, steps):
    import jax  # pylint: disable=import-outside-toplevel
    jax.block_until_ready(fn())
    start = time.perf_counter()
    out = None
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def worker(n: int) -> dict:
    import jax  # pylint: disable=import-outside-toplevel
    from alexnet_jax.data import input_pipeline
    from alexnet_jax import parallel
    from alexnet_jax.data import preprocess
    from alexnet_jax import train  # noqa: E402,C0415
    assert jax.local_device_count() >= n, (jax.local_devices(), n)
    devices = jax.local_devices()[:n]
    config = make_config(n)
    info = input_pipeline.get_info(config)
    state, key = train.initial_state(config, info, 1000, 100_000)
    state = parallel.replicate(state, devices)
    mean, std = preprocess.mean_std(config.data, info.image_shape[-1])
    step = train.make_train_step(key, devices=devices, mean=mean, std=std)
    host_batches = input_pipeline.train_iterator(config, process_index=0, process_count=1,
                                                 local_devices=n)
    fixed = next(parallel.prefetch_to_device(iter([next(host_batches)]), 1))  # On device.
    assert fixed['image'].shape[:2] == (n, FLAGS.batch), fixed['image'].shape
    stream = parallel.prefetch_to_device(host_batches)

    def in_memory():
        nonlocal state
        state, metrics = step(state, fixed)
        return metrics['loss']

    def end_to_end():
        nonlocal state
        state, metrics = step(state, next(stream))
        return metrics['loss']

    start = time.perf_counter()
    jax.block_until_ready(in_memory())
    compile_s = time.perf_counter() - start
    for _ in range(3):  # Warm the pipeline (threads, autotune) before timing it.
        jax.block_until_ready(end_to_end())
    mem, e2e = [], []
    for _ in range(FLAGS.repeats):
        mem.append(timed(in_memory, FLAGS.steps))
        e2e.append(timed(end_to_end, FLAGS.steps))
    images = FLAGS.batch * n
    return dict(devices=n, device_kind=devices[0].device_kind, compile_s=compile_s,
                step_ms=1e3 * min(mem), images_per_s=images / min(mem),
                images_per_s_per_device=FLAGS.batch / min(mem),
                e2e_images_per_s=images / min(e2e), e2e_ratio=min(mem) / min(e2e))


def main(argv):
    del argv
    if FLAGS.worker:
        print('RESULT ' + json.dumps(worker(FLAGS.worker)), flush=True)
        return
    rows = []
    for n in map(int, FLAGS.devices):
        env = dict(os.environ)
        flags_env = [f for f in env.get('XLA_FLAGS', '').split()
                     if not f.startswith('--xla_force_host_platform_device_count')]
        env['XLA_FLAGS'] = ' '.join(flags_env + [f'--xla_force_host_platform_device_count={n}'])
        env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
        args = [sys.executable, os.path.abspath(__file__), f'--worker={n}'] + [
            FLAGS[name].serialize() for name in ('batch', 'image_size', 'width', 'dtype', 'data',
                                                 'steps', 'repeats')]
        proc = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0 or 'RESULT ' not in proc.stdout:
            tail = proc.stderr.strip().splitlines()[-3:]
            print(f'{n} devices: failed ({" | ".join(tail)})', flush=True)
            continue
        row = json.loads(proc.stdout.split('RESULT ', 1)[1])
        rows.append(row)
        if len(rows) == 1:
            print(f'device: {row["device_kind"]}; per-device batch {FLAGS.batch}, input '
                  f'{FLAGS.image_size}, width {FLAGS.width}, {FLAGS.dtype}, data {FLAGS.data}')
            print(f'{"devices":>7} {"compile s":>9} {"step ms":>8} {"img/s":>8} '
                  f'{"img/s/dev":>9} {"e2e img/s":>9} {"e2e ratio":>9}')
        print(f'{n:>7} {row["compile_s"]:>9.1f} {row["step_ms"]:>8.1f} '
              f'{row["images_per_s"]:>8.1f} {row["images_per_s_per_device"]:>9.1f} '
              f'{row["e2e_images_per_s"]:>9.1f} '
              f'{row["e2e_ratio"]:>9.3f}', flush=True)
    if FLAGS.json:
        with open(FLAGS.json, 'w') as f:
            json.dump(rows, f, indent=2)


if __name__ == '__main__':
    app.run(main)
