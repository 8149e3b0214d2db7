r"""One prepared accelerator check: everything worth knowing about a machine, in one command.

  python benchmarks/accelerator_check.py                     # GPU/TPU: full sizes, < 10 min
  python benchmarks/accelerator_check.py --json=check.json   # also the numbers as JSON
  python benchmarks/accelerator_check.py --small             # shrunk sizes (default on CPU)

Five parts, each timed and run in a child process of its own (part 5: one per mode) with a time
allotment (they add up to --budget, 570 s; time a part leaves unused goes to the next), so a part
that raises, runs out of memory, crashes or hangs costs one line and the others still run:

  1. backend and devices: jax.default_backend(), jax.devices(), the device kind and memory;
  2. the train step (benchmarks/train_step.py, imported: the project's pmapped step against a
     plain `jax.jit` step) at 227 px, width 1, in float32 and bfloat16 at batch 256 and 512:
     images/s, achieved TFLOP/s, MFU against the device's dense peak, project / plain step time;
  3. the host input pipeline from the paper's 256x256 format (benchmarks/input_pipeline.py's
     photo folder, prepared with alexnet_jax.data.downsampled; uint8 batches as they cross to the
     device), images/s beside the step's;
  4. the digits demo (`train.train_and_evaluate` on configs/alexnet.py:digits, fresh workdir):
     wall time and test top-1;
  5. a 10-seed digits point (`train.train_and_evaluate` with num_seeds=10, 2 epochs, side jobs as
     a sweep point runs them: configs/ablations.py's DIGITS_RUN), seeds_mode 'vmap' and then
     'sequential', in fresh workdirs: seed-images/s = seeds x steps x batch / wall time.

MFU: training FLOPs = 3 x 2 x forward MACs per image (train_step.py) over the dense peak of one
device (train_step.PEAK_TFLOPS). float32 is measured against the **TF32** tensor-core peak
(H100/H200 SXM 494.5, A100 156 TFLOP/s): with jax's default matmul precision XLA:GPU runs float32
convolutions and matmuls on TF32 tensor cores on Ampere and Hopper (`jax.lax.Precision.DEFAULT`),
so that is the hardware the step uses; the check also prints float32 MFU against the non-tensor
FP32 peak (H100/H200 67, A100 19.5) and, if jax_default_matmul_precision is 'highest', uses
that peak. An unknown device (a CPU) prints MFU as '-' (or pass --peak_tflops).

The XLA compilation cache is a fresh directory in the check's temporary directory (unless
$JAX_COMPILATION_CACHE_DIR is set), shared by parts 4-5 as launch.py and sweeps use one: compile
times are cold ones. Exit status 0 when every part succeeded, 1 otherwise (all parts still run).
Every size has a flag (--batches=256,512, --seeds=10, ...; see --help); --parts picks parts.
--small (default on a CPU): step width 0.25, 99 px, batch 8 and 16; 64 JPEGs, 2 s per figure; a
60-step demo; 2 seeds x 6 steps: ~2 minutes on 2 CPU cores.
"""

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The sizes (full) and ones that run on a 2-core CPU in a minute or two (small).
FULL = dict(image_size=227, width=1.0, batches=[256, 512], dtypes=['float32', 'bfloat16'],
            step_steps=20, step_repeats=3, pipeline_images=1024, pipeline_seconds=10.0,
            demo_steps=None, seeds=10, seed_epochs=2.0, seed_steps=None)
SMALL = dict(image_size=99, width=0.25, batches=[8, 16], dtypes=['float32', 'bfloat16'],
             step_steps=2, step_repeats=2, pipeline_images=64, pipeline_seconds=2.0,
             demo_steps=60, seeds=2, seed_epochs=None, seed_steps=6)

# Parts in order, with their time allotments (seconds; they sum to the default --budget).
PARTS = {'devices': 30, 'step': 240, 'pipeline': 60, 'demo': 90, 'seeds_vmap': 75,
         'seeds_sequential': 75}
NUMBERS = {'devices': '1', 'step': '2', 'pipeline': '3', 'demo': '4', 'seeds_vmap': '5a',
           'seeds_sequential': '5b'}
TITLES = {'devices': 'backend and devices', 'step': 'train step',
          'pipeline': 'host input pipeline, 256x256 format', 'demo': 'digits demo',
          'seeds_vmap': 'seeds, seeds_mode=vmap',
          'seeds_sequential': 'seeds, seeds_mode=sequential'}

# Non-tensor-core FP32 peaks (TFLOP/s, dense), for the strict-fp32 MFU beside the TF32 one.
STRICT_FP32_TFLOPS = {'H100': 67.0, 'H200': 67.0, 'A100': 19.5}


def significant(x: float, digits: int = 3) -> str:
    """x with at least `digits` significant digits and no exponent (9.59, 95.9, 959, 9590): a
    test recomputing it from the other printed numbers compares like with like."""
    if x == 0 or abs(x) >= 10 ** (digits - 1):
        return f'{x:.0f}'
    return f'{x:.{digits - 1 - math.floor(math.log10(abs(x)))}f}'


NO_TENSORFLOW = 'TensorFlow is not installed'
DIGITS_TRAIN_EXAMPLES = 1257  # The digits' training split (alexnet_jax/data/digits.py).
NEEDS_TENSORFLOW = ('pipeline', 'demo')  # tf.data and TFDS; the seeds part has a synthetic path.


def have_tensorflow() -> bool:
    """False on an image with jax alone (e.g. a GPU image without TensorFlow): parts 3 and 4
    are skipped and part 5 runs on synthetic device-resident data."""
    try:
        import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        return False
    return True


def one_line(error: BaseException, limit: int = 300) -> str:
    text = ' '.join(f'{type(error).__name__}: {error}'.split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


# --- the parts (each runs in a child process: `--part NAME`) ------------------------------------

def _setup_child():
    sys.path.insert(0, ROOT)
    sys.path.insert(0, HERE)


def part_devices(args, out):
    import jax  # pylint: disable=import-outside-toplevel
    import jaxlib  # pylint: disable=import-outside-toplevel
    devices = jax.devices()
    memory = None
    try:
        stats = devices[0].memory_stats() or {}
        memory = stats.get('bytes_limit')
    except Exception:  # pylint: disable=broad-except  (CPU: not implemented)
        pass
    out.update(backend=jax.default_backend(), devices=[str(d) for d in devices],
               device_count=len(devices), device_kind=devices[0].device_kind,
               memory_gib=memory / 2 ** 30 if memory else None,
               jax=jax.__version__, jaxlib=jaxlib.__version__,
               matmul_precision=jax.config.jax_default_matmul_precision or 'default',
               host_cores=len(os.sched_getaffinity(0)))


def peak_for(kind: str, dtype: str, precision: str, override):
    """(peak TFLOP/s or None, what it is) for one device of `kind` computing in `dtype`."""
    import train_step  # pylint: disable=import-outside-toplevel
    if override:
        return override, 'given'
    for name, peaks in train_step.PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            if dtype == 'float32' and precision in ('highest', 'float32') \
                    and name in STRICT_FP32_TFLOPS:
                return STRICT_FP32_TFLOPS[name], f'{name} fp32 (precision {precision})'
            basis = 'TF32 tensor cores' if dtype == 'float32' and 'TPU' not in name else dtype
            return peaks.get(dtype), f'{name} {basis}'
    return None, 'unknown device'


def part_step(args, out):
    """benchmarks/train_step.py's main, once per (dtype, batch): its flags set, its JSON read."""
    import jax  # pylint: disable=import-outside-toplevel
    import train_step  # pylint: disable=import-outside-toplevel
    kind = jax.devices()[0].device_kind
    precision = jax.config.jax_default_matmul_precision or 'default'
    out.update(device_kind=kind, image_size=args.image_size, width=args.width,
               precision=precision, points=[])
    for dtype in args.dtypes:
        for batch in args.batches:
            point = dict(dtype=dtype, batch=batch)
            out['points'].append(point)
            path = os.path.join(args.part_dir, f'step_{dtype}_{batch}.json')
            try:
                train_step.FLAGS.unparse_flags()
                train_step.FLAGS([
                    'train_step.py', f'--batch={batch}', f'--dtype={dtype}',
                    f'--image_size={args.image_size}', f'--width={args.width}',
                    f'--steps={args.step_steps}', f'--repeats={args.step_repeats}',
                    f'--json={path}'])
                train_step.main([])
                with open(path) as f:
                    r = json.load(f)
                peak, basis = peak_for(kind, dtype, precision, args.peak_tflops)
                point.update(
                    ips=r['project_ips'], ms=r['project_ms'], plain_ips=r['plain_ips'],
                    ratio=r['ratio_median'], ratio_cpu=r['ratio_cpu_time'],
                    tflops=r['achieved_tflops'], gflop_per_image=r['train_gflop_per_image'],
                    compile_s=r['compile_project_s'], peak_tflops=peak, peak_basis=basis,
                    mfu=100 * r['achieved_tflops'] / peak if peak else None)
                strict = next((v for k, v in STRICT_FP32_TFLOPS.items() if k in kind), None)
                if dtype == 'float32' and strict:
                    point['mfu_strict_fp32'] = 100 * r['achieved_tflops'] / strict
            except Exception as e:  # pylint: disable=broad-except  (the next point still runs)
                point['error'] = one_line(e)
            _write(args.part_out, {'result': out})  # Done points survive a later timeout.
    failed = [p for p in out['points'] if 'error' in p]
    if failed:  # The others are printed all the same.
        raise RuntimeError(f'{len(failed)} of {len(out["points"])} points failed; first: '
                           f'{failed[0]["error"]}')


def part_pipeline(args, out):
    """benchmarks/input_pipeline.py's photo folder, prepared as the 256x256 format, read by the
    project's pipeline (train: the paper's transform; eval: 10 crops)."""
    from alexnet_jax.data import downsampled  # pylint: disable=import-outside-toplevel
    from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
    from configs import alexnet  # pylint: disable=import-outside-toplevel
    import input_pipeline as bench  # pylint: disable=import-outside-toplevel  (benchmarks/)
    root = os.path.join(args.part_dir, 'photos')
    data_dir = os.path.join(args.part_dir, 'tfds_256')
    t = time.perf_counter()
    bench.write_photo_folder(root, args.pipeline_images)
    out['write_s'] = time.perf_counter() - t
    t = time.perf_counter()
    downsampled.prepare(downsampled.get_builder('folder', data_dir, root))
    out['prepare_ips'] = args.pipeline_images / (time.perf_counter() - t)
    config = alexnet.get_config()
    d = config.data
    d.train_split = d.eval_split = d.test_split = 'train'
    d.cache, d.folder_root, d.data_dir = 'never', root, data_dir  # Decode every time.
    d.name, d.downsample_source = 'downsampled', 'folder'
    config.train.batch_size = config.train.eval_batch_size = min(args.batches)
    rates = bench.project_rates(input_pipeline, config, args.pipeline_seconds)
    out.update(images=args.pipeline_images, batch=min(args.batches), cores=bench.cores(),
               train_ips=rates['train']['wall'], train_per_cpu_s=rates['train']['cpu'],
               eval10_ips=rates['eval10']['wall'], eval10_per_cpu_s=rates['eval10']['cpu'])


def _digits_config(args):
    from configs import alexnet  # pylint: disable=import-outside-toplevel
    config = alexnet.get_config('digits')
    config.data.data_dir = os.path.join(args.work_dir, 'tfds')  # Built once, shared by 4 and 5.
    return config


def part_demo(args, out):
    from alexnet_jax import cli  # pylint: disable=import-outside-toplevel
    from alexnet_jax import train  # pylint: disable=import-outside-toplevel
    from alexnet_jax import validation  # pylint: disable=import-outside-toplevel
    from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
    cli.use_compilation_cache()
    config = _digits_config(args)
    if args.demo_steps:
        config.train.num_steps = args.demo_steps
    validation.validate_config(config)
    t = time.perf_counter()
    input_pipeline.get_info(config)  # Builds the embedded digits set on first use.
    out['data_s'] = time.perf_counter() - t
    t = time.perf_counter()
    results = train.train_and_evaluate(config, os.path.join(args.part_dir, 'run'))
    out.update(wall_s=time.perf_counter() - t, test_top1=100 * results['test_top1'],
               steps=results['steps'], batch=config.train.batch_size,
               train_seconds=results['train_seconds'],
               train_ips=results['images_per_second'])


def part_seeds(args, out, mode):
    if not have_tensorflow():
        return _synthetic_seeds(args, out, mode)
    from alexnet_jax import cli  # pylint: disable=import-outside-toplevel
    from alexnet_jax import train  # pylint: disable=import-outside-toplevel
    from alexnet_jax import validation  # pylint: disable=import-outside-toplevel
    from configs import ablations  # pylint: disable=import-outside-toplevel
    cli.use_compilation_cache()
    config = _digits_config(args)
    config.update_from_flattened_dict(dict(ablations.DIGITS_RUN))  # As a sweep point runs.
    config.num_seeds, config.seeds_mode = args.seeds, mode
    if args.seed_steps:
        config.train.num_steps = args.seed_steps
    else:
        config.train.num_epochs = args.seed_epochs
    validation.validate_config(config)
    num_steps, _ = train.num_train_steps(config)
    t = time.perf_counter()
    results = train.train_and_evaluate(config, os.path.join(args.part_dir, 'point'))
    wall = time.perf_counter() - t
    bad = {s: r for s, r in results.items() if 'test_top1' not in r}
    if bad or len(results) != args.seeds:
        raise RuntimeError(f'{len(results)} of {args.seeds} seeds returned; not trained: {bad}')
    batch = config.train.batch_size
    out.update(mode=mode, seeds=args.seeds, steps=num_steps, batch=batch,
               wall_s=wall, seed_ips=args.seeds * num_steps * batch / wall,
               test_top1=100 * sum(r['test_top1'] for r in results.values()) / len(results))


def _synthetic_seeds(args, out, mode):
    """Part 5 without TensorFlow: the loop's seeds step (`train.make_seeds_step` over
    `train.device_train_step`: 'vmap' all seeds in one program, 'sequential' one seed after
    another) on random uint8 images of the digits' size, resident on the device."""
    import functools  # pylint: disable=import-outside-toplevel
    import types  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from alexnet_jax import cli  # pylint: disable=import-outside-toplevel
    from alexnet_jax import parallel  # pylint: disable=import-outside-toplevel
    from alexnet_jax import seeds as seeds_lib  # pylint: disable=import-outside-toplevel
    from alexnet_jax import train  # pylint: disable=import-outside-toplevel
    from alexnet_jax.data import device_data  # pylint: disable=import-outside-toplevel
    from alexnet_jax.data import preprocess  # pylint: disable=import-outside-toplevel
    cli.use_compilation_cache()
    config = _digits_config(args)
    n, size, batch = DIGITS_TRAIN_EXAMPLES, config.data.image_size, config.train.batch_size
    rng = np.random.default_rng(0)
    data = device_data.place({'image': rng.integers(0, 256, (n, size, size, 1), np.uint8),
                              'label': rng.integers(0, 10, n).astype(np.int32)})
    per_device = parallel.per_device_batch_size(batch)
    spec = device_data.Spec(num_examples=n, host_batch=per_device * jax.local_device_count(),
                            per_device=per_device, pad=int(config.data.pad),
                            flip=bool(config.data.random_flip))
    steps = args.seed_steps or max(1, int(args.seed_epochs * n) // batch)
    info = types.SimpleNamespace(image_shape=(size, size, 1))
    mean, std = preprocess.mean_std(config.data, 1)
    one = functools.partial(train.device_train_step, spec=spec, mean=mean, std=std)
    groups = [list(range(args.seeds))] if mode == 'vmap' else [[s] for s in range(args.seeds)]
    wall = 0.0
    for group in groups:
        made = [train.initial_state(seeds_lib.seed_config(config, s), info, steps, steps)
                for s in group]
        state = parallel.replicate(train.stack_seeds([m[0] for m in made]))
        keys = parallel.replicate({
            'dropout': np.stack([jax.random.key_data(m[1]) for m in made]),
            'data': np.stack([jax.random.key_data(device_data.data_key(s)) for s in group])})
        keys = jax.tree.map(jax.random.wrap_key_data, keys)
        step = train.make_seeds_step(one, 'vmap' if len(group) > 1 else 'single')
        state, metrics = step(state, keys, data)  # Compiles; not timed.
        jax.block_until_ready(metrics)
        t = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, keys, data)
        jax.block_until_ready(metrics)
        wall += time.perf_counter() - t
    out.update(mode=mode, seeds=args.seeds, steps=steps, batch=batch, wall_s=wall,
               seed_ips=args.seeds * steps * batch / wall, test_top1=None, synthetic=True)


def _write(path, out):
    with open(path + '.tmp', 'w') as f:
        json.dump(out, f, indent=1)
    os.replace(path + '.tmp', path)


def run_part(args):
    """Child process: runs one part, writes {'result': ...} or {'error': one line}."""
    _setup_child()
    out = {}
    if args.part in NEEDS_TENSORFLOW and not have_tensorflow():
        _write(args.part_out, {'result': out, 'skipped': NO_TENSORFLOW})
        return 0
    try:
        if args.part.startswith('seeds_'):
            part_seeds(args, out, args.part[len('seeds_'):])
        else:
            globals()[f'part_{args.part}'](args, out)
        _write(args.part_out, {'result': out})
    except BaseException as e:  # pylint: disable=broad-except  (KeyboardInterrupt too)
        _write(args.part_out, {'result': out, 'error': one_line(e)})
        return 1
    return 0


# --- the parent: runs the parts, prints each, then the summary ----------------------------------

def spawn(name, args, limit, work_dir):
    """Runs part `name` in a child; (status, seconds, result, error)."""
    part_dir = os.path.join(work_dir, name)
    os.makedirs(part_dir, exist_ok=True)
    out_path, log_path = os.path.join(part_dir, 'result.json'), os.path.join(part_dir, 'log.txt')
    sizes = {k: getattr(args, k) for k in list(FULL) + ['peak_tflops']}
    cmd = [sys.executable, os.path.abspath(__file__), '--part', name, '--part_out', out_path,
           '--part_dir', part_dir, '--work_dir', work_dir, '--part_sizes', json.dumps(sizes)]
    start = time.perf_counter()
    with open(log_path, 'w') as log:
        child = subprocess.Popen(cmd, stdout=None if args.verbose else log,
                                 stderr=None if args.verbose else subprocess.STDOUT,
                                 start_new_session=True)  # Its own group: a timeout ends all of it.
        timed_out = False
        try:
            child.wait(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        except KeyboardInterrupt:
            os.killpg(child.pid, signal.SIGKILL)
            raise
    seconds = time.perf_counter() - start
    report = {}
    if os.path.exists(out_path):
        with open(out_path) as f:
            report = json.load(f)
    result = report.get('result', {})
    if timed_out:
        return 'timeout', seconds, result, (f'timed out after its {limit:.0f} s (more: '
                                            f'--budget or --timeout_scale)')
    if 'error' in report:
        return 'failed', seconds, result, report['error']
    if 'skipped' in report:
        return 'skipped', seconds, result, report['skipped']
    if child.returncode or 'result' not in report:
        return 'failed', seconds, result, (f'exit code {child.returncode}: '
                                           f'{_last_line(log_path) or "no output"}')
    return 'ok', seconds, result, None


def _last_line(path):
    try:
        with open(path, errors='replace') as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ''
    return lines[-1][:300] if lines else ''


def _num(x, fmt='.0f'):
    return '-' if x is None else format(x, fmt)


def _best_step(results):
    points = [p for p in results.get('step', {}).get('points', []) if 'ips' in p]
    return max(points, key=lambda p: p['ips']) if points else None


def show(name, result, results):
    """The part's lines (what it measured)."""
    r = result
    if name == 'devices':
        mem = f', {r["memory_gib"]:.0f} GiB' if r.get('memory_gib') else ''
        print(f'  backend {r["backend"]}; {r["device_count"]} device(s): '
              f'{", ".join(r["devices"])}')
        print(f'  device kind: {r["device_kind"]}{mem}; jax {r["jax"]}, jaxlib {r["jaxlib"]}; '
              f'matmul precision {r["matmul_precision"]}; {r["host_cores"]} host cores')
    elif name == 'step':
        print(f'  {r.get("device_kind", "?")}, {r.get("image_size")} px, width '
              f'{r.get("width"):g}; project = the pmapped step the loop runs, plain = a bare '
              f'jax.jit step; ratio = project / plain step time (median of paired rounds)')
        print(f'  {"dtype":<9}{"batch":>6}{"img/s":>10}{"ms/step":>9}{"TFLOP/s":>9}{"peak":>7}'
              f'{"MFU %":>7}{"plain img/s":>12}{"ratio":>7}{"compile s":>10}')
        for p in r.get('points', []):
            if 'error' in p:
                print(f'  {p["dtype"]:<9}{p["batch"]:>6}  failed: {p["error"]}')
                continue
            print(f'  {p["dtype"]:<9}{p["batch"]:>6}{p["ips"]:>10.1f}{p["ms"]:>9.1f}'
                  f'{p["tflops"]:>9.3f}{_num(p["peak_tflops"]):>7}{_num(p["mfu"], ".1f"):>7}'
                  f'{p["plain_ips"]:>12.1f}{p["ratio"]:>7.3f}{p["compile_s"]:>10.1f}')
        peaks = {p['peak_basis'] for p in r.get('points', []) if p.get('peak_tflops')}
        strict = [p for p in r.get('points', []) if 'mfu_strict_fp32' in p]
        if peaks:
            print(f'  peaks: {"; ".join(sorted(peaks))} (dense, per device)')
        if strict:
            print('  float32 MFU against the non-tensor FP32 peak instead: ' + ', '.join(
                f'batch {p["batch"]} {p["mfu_strict_fp32"]:.1f}%' for p in strict))
    elif name == 'pipeline':
        print(f'  {r["images"]} JPEGs (real photo content, ImageNet sizes) prepared as 256x256 at '
              f'{r["prepare_ips"]:.0f} img/s; batch {r["batch"]}, {r["cores"]} cores')
        print(f'  train (paper transform): {r["train_ips"]:.0f} img/s '
              f'({r["train_ips"] / r["cores"]:.0f}/core, {r["train_per_cpu_s"]:.0f} per CPU-s); '
              f'eval 10 crops: {r["eval10_ips"]:.0f} img/s')
        best = _best_step(results)
        if best:
            bound = 'the input bounds training' if r['train_ips'] < best['ips'] else \
                'the step bounds training'
            print(f'  beside the step ({best["dtype"]}, batch {best["batch"]}): '
                  f'{best["ips"]:.0f} img/s; pipeline / step = {r["train_ips"] / best["ips"]:.2f}: '
                  f'{bound}')
    elif name == 'demo':
        print(f'  {r["steps"]} steps x batch {r["batch"]}: wall {r["wall_s"]:.1f} s '
              f'(train_seconds {r["train_seconds"]:.1f}, {r["train_ips"]:.0f} img/s), '
              f'test top-1 {r["test_top1"]:.2f}%  (building the data set: {r["data_s"]:.1f} s)')
    elif name.startswith('seeds_'):
        test = (f'mean test top-1 {r["test_top1"]:.2f}%' if r.get('test_top1') is not None
                else f'synthetic device-resident data ({NO_TENSORFLOW}): no test')
        print(f'  {r["seeds"]} seeds x {r["steps"]} steps x batch {r["batch"]}: wall '
              f'{r["wall_s"]:.2f} s, {significant(r["seed_ips"])} seed-img/s; {test}')


def summary_line(name, result, results):
    r = result
    if not r:
        return ''
    if name == 'devices':
        return f'{r["backend"]}: {r["device_kind"]} x{r["device_count"]}'
    if name == 'step':
        best = _best_step(results)
        if not best:
            return ''
        mfu = '-' if best['mfu'] is None else f'{best["mfu"]:.1f}%'
        return (f'best {best["dtype"]} b{best["batch"]}: {best["ips"]:.0f} img/s, MFU {mfu}, '
                f'ratio {best["ratio"]:.2f}')
    if name == 'pipeline' and 'train_ips' in r:
        line = f'256x256 train {r["train_ips"]:.0f} img/s'
        best = _best_step(results)
        if best:
            line += (f' = {r["train_ips"] / best["ips"]:.2f}x the step '
                     f'({best["dtype"]} b{best["batch"]})')
        return line
    if name == 'demo' and 'wall_s' in r:
        return f'test top-1 {r["test_top1"]:.2f}% in {r["wall_s"]:.1f} s'
    if name.startswith('seeds_') and 'seed_ips' in r:
        line = f'{r["seed_ips"]:.0f} seed-img/s ({r["seeds"]} seeds)'
        other = results.get('seeds_vmap', {})
        if name == 'seeds_sequential' and 'seed_ips' in other:
            line += f'; vmap / sequential {other["seed_ips"] / r["seed_ips"]:.2f}x'
        return line
    return ''


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--small', action=argparse.BooleanOptionalAction, default=None,
                   help='Shrunk sizes (default: on when the backend is the CPU).')
    p.add_argument('--json', help='Also write every number to this JSON file.')
    p.add_argument('--parts', default=','.join(PARTS),
                   help=f'Comma-separated subset of {",".join(PARTS)} (devices always runs).')
    p.add_argument('--budget', type=float, default=None,
                   help=f'Seconds for all parts (default {sum(PARTS.values())}, of which the '
                   f'devices part keeps {PARTS["devices"]}; '
                   'times --timeout_scale).')
    p.add_argument('--timeout_scale', type=float, default=1.0,
                   help='Multiplies every allotment (a slow or busy machine).')
    p.add_argument('--peak_tflops', type=float, default=None,
                   help='Peak TFLOP/s of one device (for a device not in the table).')
    p.add_argument('--keep', help='Keep the temporary files (data, workdirs, logs) in this '
                   'directory instead of a temporary one.')
    p.add_argument('--verbose', action='store_true', help="Show the parts' own output.")
    ints = lambda s: [int(x) for x in s.split(',')]  # noqa: E731
    strs = lambda s: s.split(',')  # noqa: E731
    sizes = p.add_argument_group('sizes (default: the issue\'s full sizes, or --small\'s)')
    for name, kind, what in (
            ('image_size', int, 'step: input side'), ('width', float, 'step: model.width'),
            ('batches', ints, 'step: batches, e.g. 256,512'),
            ('dtypes', strs, 'step: compute dtypes, e.g. float32,bfloat16'),
            ('step_steps', int, 'step: timed steps per round'),
            ('step_repeats', int, 'step: alternating rounds'),
            ('pipeline_images', int, 'pipeline: JPEGs written'),
            ('pipeline_seconds', float, 'pipeline: seconds per measurement'),
            ('demo_steps', int, "demo: train.num_steps (default: the config's 12 epochs)"),
            ('seeds', int, 'seeds: num_seeds'),
            ('seed_epochs', float, 'seeds: train.num_epochs'),
            ('seed_steps', int, 'seeds: train.num_steps (overrides --seed_epochs)')):
        sizes.add_argument(f'--{name}', type=kind, default=None,
                           help=f'{what}; full {FULL[name]}, small {SMALL[name]}')
    # A child process's arguments (one part).
    for name in ('part', 'part_out', 'part_dir', 'work_dir', 'part_sizes'):
        p.add_argument(f'--{name}', help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.part:
        vars(args).update(json.loads(args.part_sizes))
        return run_part(args)

    parts = ['devices'] + [n for n in args.parts.split(',') if n and n != 'devices']
    unknown = [n for n in parts if n not in PARTS]
    if unknown:
        sys.exit(f'accelerator_check: unknown --parts {unknown}; choose from {list(PARTS)}')
    parts = [n for n in PARTS if n in parts]  # Always in the order.
    budget = (args.budget or sum(PARTS.values())) * args.timeout_scale
    # The devices part (seconds; it decides the sizes) keeps its 30 s; the others share the rest.
    scale = max(budget - PARTS['devices'], 0) / (sum(PARTS.values()) - PARTS['devices'])
    work_dir = args.keep or tempfile.mkdtemp(prefix='accelerator_check-')
    os.makedirs(work_dir, exist_ok=True)
    os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(work_dir, 'xla_cache'))
    start = time.perf_counter()
    allotted, results, rows = 0.0, {}, []
    print(f'accelerator check: {time.strftime("%Y-%m-%d %H:%M:%S")}, budget {budget:.0f} s, '
          f'temporary files in {work_dir}', flush=True)
    try:
        for name in parts:
            allotted += PARTS[name] if name == 'devices' else PARTS[name] * scale
            limit = allotted - (time.perf_counter() - start)  # Unused time carries over.
            if name == 'step':
                label = f'{TITLES[name]} at {args.image_size} px'
            else:
                label = TITLES[name]
            print(f'[{NUMBERS[name]}] {label} ...', end='\n' if args.verbose else '', flush=True)
            if limit < 1:
                status, seconds, result, error = 'skipped', 0.0, {}, 'no time left in --budget'
            else:
                status, seconds, result, error = spawn(name, args, limit, work_dir)
            results[name] = result
            print(f' {status}, {seconds:.1f} s', flush=True)
            if name == 'devices':
                small = args.small
                if small is None:
                    small = result.get('backend', 'cpu') == 'cpu'
                for k, v in (SMALL if small else FULL).items():
                    if getattr(args, k) is None:
                        setattr(args, k, v)
                args.small = small
                print(f'  sizes: {"small" if small else "full"} (step {args.image_size} px, '
                      f'width {args.width:g}, batch {",".join(map(str, args.batches))}, '
                      f'{",".join(args.dtypes)}; {args.seeds} seeds)', flush=True)
            try:
                if result:
                    show(name, result, results)
            except (KeyError, TypeError) as e:  # A part that stopped half-way.
                print(f'  (partial result: {one_line(e)})')
            if error:
                print(f'  {"skipped" if status == "skipped" else "ERROR"}: {error}', flush=True)
            rows.append(dict(part=name, status=status, seconds=seconds, error=error,
                             result=result))
            sys.stdout.flush()
    finally:
        total = time.perf_counter() - start
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)

    print(f'\nsummary ({"small" if args.small else "full"} sizes, total {total:.1f} s):')
    print(f'  {"part":<18}{"status":<9}{"seconds":>8}  result')
    for row in rows:
        what = summary_line(row['part'], row['result'], results) if row['status'] == 'ok' \
            else (row['error'] or '')
        print(f'  {row["part"]:<18}{row["status"]:<9}{row["seconds"]:>8.1f}  {what}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(small=args.small, total_seconds=total, budget_s=budget,
                           sizes={k: getattr(args, k) for k in FULL}, parts=rows), f, indent=2)
    return 0 if all(r['status'] == 'ok' or r['error'] == NO_TENSORFLOW for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
