r"""Times the project's pmapped train step against a minimal plain `jax.jit` step, in one run.

  python benchmarks/train_step.py                       # AlexNet at 227, batch 32, fp32
  python benchmarks/train_step.py --dtype=bfloat16 --batch=256      # an accelerator
  python benchmarks/train_step.py --width=0.25 --image_size=99      # a quick CPU check
  python benchmarks/train_step.py --torch_python=/tmp/torchvenv/bin/python  # + PyTorch's step

Prints, for both steps: compile time, step time and images/s; then `ratio` = project step time
/ plain step time (the project's overhead: pmap, metrics, dropout-key folding, the injected
learning rate, loss scaling; goal <= 1.05), MFU = achieved FLOP/s / peak (training FLOPs per
image = 3 x 2 x forward MACs, from the summary of the live module) and the peak host memory.

The project step is `train.make_train_step`: `train.train_step` (the step the training loop
compiles, there wrapped by `train.make_seeds_step` for its seed axis) pmapped alone, on a state
from `train.initial_state`-equivalent parts of the config (paper recipe: SGD + momentum + weight
decay, plateau lr; fp16 adds dynamic loss scaling as the loop would). The plain step is written
here: the same model, cross-entropy and SGD-with-momentum-and-decay update under `jax.jit`, and
nothing else. `--devices=N` runs the project step over N devices with `--batch` per device
(simulate CPU devices with XLA_FLAGS=--xla_force_host_platform_device_count=N; they share the
CPU's cores, so only N=1 compares like with like there); the plain step always runs on one
device with the per-device batch.

`--torch_python=PY` (a Python with torch, e.g. a separate venv: the project does not depend on
it) also times the same net's step in PyTorch (benchmarks/torch_step.py, float32 only, a third
process run in the same alternating rounds) and prints `vs PyTorch` = PyTorch's step time /
the project's (> 1: the project is faster).
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from alexnet_jax import models  # noqa: E402
from plain_step import plain_step_fn  # noqa: E402
from alexnet_jax import optim  # noqa: E402
from alexnet_jax import parallel  # noqa: E402
from alexnet_jax.data import preprocess  # noqa: E402
from alexnet_jax.tools import summary  # noqa: E402
from alexnet_jax import train  # noqa: E402
from configs import alexnet  # noqa: E402

flags.DEFINE_integer('batch', 32, 'Per-device batch size.')
flags.DEFINE_integer('image_size', 227, 'Input side length.')
flags.DEFINE_integer('channels', 3, 'Input channels (1: the digits).')
flags.DEFINE_integer('num_classes', 1000, 'Classes.')
flags.DEFINE_float('width', 1.0, 'Width multiplier (model.width).')
flags.DEFINE_string('dtype', 'float32', 'Compute dtype: float32 | bfloat16 | float16 '
                    '(float16 turns on dynamic loss scaling in the project step).')
flags.DEFINE_integer('devices', 1, 'Devices for the project step (pmap).')
flags.DEFINE_integer('steps', 2, 'Timed steps per round (after one warm-up step).')
flags.DEFINE_integer('repeats', 6, 'Alternating rounds (project, plain, project, ...): short '
                     'rounds pair up under the same machine load.')
flags.DEFINE_float('peak_tflops', None, 'Peak TFLOP/s of one device, if not a known one.')
flags.DEFINE_bool('donate', False, 'Donate params/optimizer state to both steps (the loop does '
                  'not: see make_train_step).')
flags.DEFINE_string('json', None, 'Also write the numbers to this JSON file.')
flags.DEFINE_string('torch_python', None, 'A Python with torch: also time the same net in '
                    'PyTorch (benchmarks/torch_step.py) in the same rounds.')
FLAGS = flags.FLAGS

# Dense peak TFLOP/s per chip, by jax device_kind substring and compute dtype. fp32 on NVIDIA
# is TF32 tensor-core math (XLA's default matmul precision on Ampere/Hopper).
PEAK_TFLOPS = {
    'H100': {'bfloat16': 989.0, 'float16': 989.0, 'float32': 494.5},  # SXM; PCIe: 756 bf16.
    'H200': {'bfloat16': 989.0, 'float16': 989.0, 'float32': 494.5},
    'A100': {'bfloat16': 312.0, 'float16': 312.0, 'float32': 156.0},
    'TPU v4': {'bfloat16': 275.0, 'float16': 275.0, 'float32': 275.0},
    'TPU v5 lite': {'bfloat16': 197.0, 'float16': 197.0, 'float32': 197.0},  # v5e.
    'TPU v5e': {'bfloat16': 197.0, 'float16': 197.0, 'float32': 197.0},
}


def peak_tflops(device, dtype: str):
    if FLAGS.peak_tflops:
        return FLAGS.peak_tflops
    kind = getattr(device, 'device_kind', '')
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peaks[dtype]
    return None


def make_config():
    config = alexnet.get_config()
    config.model.update(num_classes=FLAGS.num_classes, width=FLAGS.width, dtype=FLAGS.dtype)
    config.data.image_size = FLAGS.image_size
    config.train.batch_size = FLAGS.batch * FLAGS.devices
    if FLAGS.dtype == 'float16':
        config.optim.loss_scale = 'dynamic'
    return config




def plain_optimizer(o):
    """The paper's SGD written out: decay on kernels, lr, momentum (as config.optim says)."""
    is_kernel = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, _: path[-1].key == 'kernel', params)
    return optax.chain(optax.add_decayed_weights(o.weight_decay, is_kernel),
                       optax.sgd(o.learning_rate, momentum=o.momentum))


def torch_spec(config) -> dict:
    """The configured AlexNet (paper architecture, groups 1) as benchmarks/torch_step.py's spec."""
    m = config.model
    convs = [[models.scaled_features(features, m.width * scale, 1), kernel, stride, padding]
             for (_, features, kernel, stride, padding, _), scale
             in zip(models.CONV_SPECS, m.conv_scale)]
    return dict(batch=FLAGS.batch, image_size=FLAGS.image_size, channels=FLAGS.channels,
                num_classes=FLAGS.num_classes, convs=convs,
                fc=models.scaled_features(models.FC_FEATURES, m.width, 1),
                lrn=[m.lrn_k, m.lrn_n, m.lrn_alpha, m.lrn_beta] if m.lrn else None,
                pool=[m.pool_window, m.pool_stride], dropout=m.dropout_rate)


def torch_runner(config):
    """`run(steps)` -> (wall, CPU) seconds per step of PyTorch's step in a process of
    --torch_python, or None (with a message) for a net torch_step.py does not write."""
    m = config.model
    if FLAGS.dtype != 'float32' or m.architecture != 'paper' or m.groups != 1 or (
            m.lrn and (m.lrn_convention, m.lrn_divisor) != ('paper', 'local')):
        print('(PyTorch step skipped: it is written for the paper net in float32)')
        return None
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_step.py')
    try:
        proc = subprocess.Popen([FLAGS.torch_python, script, json.dumps(torch_spec(config))],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = proc.stdout.readline().strip() == 'ready'
    except OSError:
        ready = False
    if not ready:
        raise app.UsageError(f'--torch_python={FLAGS.torch_python} cannot run {script} (its '
                             f'error is above): name a Python with torch, e.g. made by python3 '
                             f'-m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch')

    def run(steps):
        proc.stdin.write(f'{steps}\n')
        proc.stdin.flush()
        wall, cpu = proc.stdout.readline().split()
        return float(wall), float(cpu)
    return run


def time_steps(run, steps: int) -> tuple[float, float]:
    """(wall, process CPU) seconds per step over `steps` calls of `run()` (which returns
    something to block on). CPU time (all threads) barely moves when other processes share
    the cores, wall time does: on a shared CPU compare the CPU-time ratio."""
    jax.block_until_ready(run())  # Warm-up: the first call after a switch pays cache misses.
    start, cpu = time.perf_counter(), time.process_time()
    out = None
    for _ in range(steps):
        out = run()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def timed_first_call(run) -> float:
    start = time.perf_counter()
    jax.block_until_ready(run())
    return time.perf_counter() - start


def main(argv):
    del argv
    config = make_config()
    model = models.create_model(config.model)
    shape = (FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
    devices = jax.local_devices()[:FLAGS.devices]
    if len(devices) < FLAGS.devices:
        raise app.UsageError(f'--devices={FLAGS.devices} but only {len(devices)} local devices '
                             f'(CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N).')
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (FLAGS.batch,) + shape, dtype=np.uint8)  # As the loop's.
    mean, std = preprocess.mean_std(config.data, FLAGS.channels)
    labels = rng.integers(0, FLAGS.num_classes, FLAGS.batch).astype(np.int32)

    # The project's step: the very function the training loop pmaps.
    tx = optim.create_optimizer(config.optim, steps_per_epoch=1000, num_steps=100_000)
    params_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    state = train.create_train_state(params_key, model, tx, shape,
                                     train.create_dynamic_scale(config.optim))
    p_state = parallel.replicate(state, devices)
    p_step = train.make_train_step(dropout_key, devices=devices, donate_state=FLAGS.donate,
                                   mean=mean, std=std)  # Normalises the uint8 batch inside.
    batch = parallel.replicate({'image': images, 'label': labels}, devices)  # On device.

    def project():
        nonlocal p_state
        p_state, metrics = p_step(p_state, batch)
        return metrics['loss']

    # The plain step, on the same initial parameters.
    plain_tx = plain_optimizer(config.optim)
    params = jax.device_put(jax.tree.map(jnp.array, state.params), devices[0])
    opt_state = plain_tx.init(params)
    plain = plain_step_fn(model, plain_tx, donate=FLAGS.donate)
    x = jax.device_put((images - mean) / std, devices[0])  # The same input, already float.
    y = jax.device_put(labels, devices[0])
    key = jax.random.key(1)

    def plain_run():
        nonlocal params, opt_state
        params, opt_state, loss = plain(params, opt_state, x, y, key)
        return loss

    torch_run = torch_runner(config) if FLAGS.torch_python else None  # Fails before compiling.
    compile_project = timed_first_call(project)
    compile_plain = timed_first_call(plain_run)
    project_times, plain_times, project_cpu, plain_cpu, torch_times = [], [], [], [], []
    for _ in range(FLAGS.repeats):  # Alternate, so drift in machine load hits both alike.
        for run, wall, cpu in ((project, project_times, project_cpu),
                               (plain_run, plain_times, plain_cpu)):
            w, c = time_steps(run, FLAGS.steps)
            wall.append(w)
            cpu.append(c)
        if torch_run:
            torch_times.append(torch_run(FLAGS.steps))
    best_project, best_plain = min(project_times), min(plain_times)
    ratios = [a / b for a, b in zip(project_times, plain_times)]
    cpu_ratio = min(project_cpu) / min(plain_cpu)

    macs = summary.totals(summary.layer_table(model, shape))['macs']
    train_flops = 6 * macs  # Forward 2 x MACs; backward twice the forward.
    peak = peak_tflops(devices[0], FLAGS.dtype)
    project_ips = FLAGS.devices * FLAGS.batch / best_project
    plain_ips = FLAGS.batch / best_plain
    achieved = project_ips / FLAGS.devices * train_flops / 1e12
    plain_achieved = plain_ips * train_flops / 1e12
    mfu = 100 * achieved / peak if peak else None
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB.
    print(f'device: {devices[0].device_kind} x{FLAGS.devices} ({jax.default_backend()}), '
          f'jax {jax.__version__}')
    print(f'config: batch {FLAGS.batch}/device, input {FLAGS.image_size}, width {FLAGS.width}, '
          f'dtype {FLAGS.dtype}, {FLAGS.steps} steps x {FLAGS.repeats} rounds')
    print(f'project step: {1e3 * best_project:8.1f} ms  {project_ips:9.1f} img/s  '
          f'compile {compile_project:.1f} s')
    print(f'plain step:   {1e3 * best_plain:8.1f} ms  {plain_ips:9.1f} img/s  '
          f'compile {compile_plain:.1f} s')
    print(f'ratio (project / plain step time): median of paired rounds '
          f'{statistics.median(ratios):.3f}, min {min(ratios):.3f}; of the best rounds '
          f'{best_project / best_plain:.3f}; CPU time {cpu_ratio:.3f} '
          f'({1e3 * min(project_cpu):.0f} / {1e3 * min(plain_cpu):.0f} ms CPU per step)')
    torch_result = {}
    if torch_times:
        best_torch = min(w for w, _ in torch_times)
        vs_torch = [t / p for (t, _), p in zip(torch_times, project_times)]
        torch_result = dict(torch_ms=1e3 * best_torch, torch_ips=FLAGS.batch / best_torch,
                            vs_torch_median=statistics.median(vs_torch),
                            vs_torch_best=best_torch / best_project,
                            vs_torch_cpu=min(c for _, c in torch_times) / min(project_cpu),
                            torch_round_ms=[1e3 * w for w, _ in torch_times])
        print(f'PyTorch step: {1e3 * best_torch:8.1f} ms  {FLAGS.batch / best_torch:9.1f} img/s  '
              f'(torch, {FLAGS.torch_python})')
        print(f'vs PyTorch (PyTorch / project step time, > 1: project faster): median of paired '
              f'rounds {torch_result["vs_torch_median"]:.3f}, min {min(vs_torch):.3f}, max '
              f'{max(vs_torch):.3f}; of the best rounds {torch_result["vs_torch_best"]:.3f}; '
              f'CPU time {torch_result["vs_torch_cpu"]:.3f}')
    print(f'training GFLOP/image: {train_flops / 1e9:.2f}; achieved {achieved:.3f} TFLOP/s per '
          f'device (plain {plain_achieved:.3f}); MFU '
          + (f'{mfu:.1f}%' if mfu is not None else 'n/a (unknown device: pass --peak_tflops)'))
    print(f'peak host memory: {max_rss:.2f} GiB')
    if FLAGS.json:
        with open(FLAGS.json, 'w') as f:
            json.dump(dict(
                device=devices[0].device_kind, devices=FLAGS.devices, batch=FLAGS.batch,
                image_size=FLAGS.image_size, width=FLAGS.width, dtype=FLAGS.dtype,
                project_ms=1e3 * best_project, plain_ms=1e3 * best_plain,
                project_ips=project_ips, plain_ips=plain_ips,
                ratio_median=statistics.median(ratios), ratio_best=best_project / best_plain,
                ratio_cpu_time=cpu_ratio, project_cpu_ms=1e3 * min(project_cpu),
                plain_cpu_ms=1e3 * min(plain_cpu),
                round_ratios=ratios, compile_project_s=compile_project,
                compile_plain_s=compile_plain, train_gflop_per_image=train_flops / 1e9,
                achieved_tflops=achieved, mfu_percent=mfu, peak_host_gib=max_rss,
                xla_flags=os.environ.get('XLA_FLAGS', ''), **torch_result), f, indent=2)


if __name__ == '__main__':
    app.run(main)
