r"""Input pipeline images/s on ImageNet-like JPEGs, both formats, next to a PyTorch DataLoader.

  python benchmarks/input_pipeline.py                          # 512 images, 15 s per figure
  python benchmarks/input_pipeline.py --torch_python=/tmp/torch-venv/bin/python
  python benchmarks/input_pipeline.py --bench_model            # + the net's forward+backward

The images are real photo content: random crops of scikit-learn's two sample photos (offline),
rescaled to ImageNet's typical sizes (500x375, 375x500, 500x333, ...) and saved as JPEG quality
90 in a temporary root/train/<class>/ folder. The 256x256 format is that folder prepared by
`alexnet_jax.data.downsampled` (timed too). For each format it prints images/s and images/s
per core of the project's pipeline (`input_pipeline.train_iterator` / `eval_iterator`, uint8
batches as they cross to the device) for the paper's train transform and the 10-crop eval.
`--baseline_repo=DIR` also runs DIR's pipeline (another checkout of this project, e.g. before
the uint8 boundary) on the same full-size files in a subprocess, as a same-run baseline.
When `--torch_python` (default: this interpreter) imports torch and torchvision, a torchvision
ImageFolder + DataLoader (PIL; Resize(256), CenterCrop(256), RandomCrop(227), flip, ToTensor,
Normalize; num_workers = cores) reads the same full-size files in the same run; otherwise that column is skipped. Nothing is cached in memory: every image is
read and decoded each time. Timings on a shared machine vary: compare ratios within one run.
"""

import inspect
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from alexnet_jax.data import input_pipeline  # noqa: E402

config_flags.DEFINE_config_file('config', 'configs/alexnet.py', 'Config (data section used).')
flags.DEFINE_integer('num_images', 512, 'JPEGs written (ImageNet-like sizes).')
flags.DEFINE_float('seconds', 15.0, 'Seconds per measurement (after warm-up).')
flags.DEFINE_string('torch_python', sys.executable, 'A Python with torch + torchvision for the '
                    'DataLoader column (e.g. a separate venv); skipped if it cannot import them.')
flags.DEFINE_string('baseline_repo', None, "Another checkout whose pipeline runs on the same "
                    'full-size files (a subprocess), for a same-run comparison.')
flags.DEFINE_bool('bench_model', False, "Also time the configured net's forward+backward pass.")
flags.DEFINE_string('json', None, 'Also write the numbers to this JSON file.')
FLAGS = flags.FLAGS

# ImageNet's common sizes (width, height): most images are 500 on the longer side.
SIZES = [(500, 375), (375, 500), (500, 333), (333, 500), (500, 400), (400, 500), (500, 500),
         (450, 338), (640, 480)]


def write_photo_folder(root, num_images, num_classes=10, seed=0):
    """num_images JPEGs (quality 90) of random crops of real photos at ImageNet's sizes."""
    from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
    photos = load_sample_images().images  # Two 427x640 RGB photos.
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        photo = photos[i % len(photos)]
        w, h = SIZES[rng.integers(len(SIZES))]
        scale = rng.uniform(0.6, 1.0) * min(photo.shape[0] / h, photo.shape[1] / w)
        ch, cw = int(h * scale), int(w * scale)
        y, x = rng.integers(0, photo.shape[0] - ch + 1), rng.integers(0, photo.shape[1] - cw + 1)
        crop = tf.image.resize(photo[y:y + ch, x:x + cw], [h, w], antialias=True)
        data = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(tf.round(crop), 0, 255), tf.uint8),
                                 quality=90)
        path = os.path.join(root, 'train', f'class{i % num_classes:03d}', f'{i:06d}.jpg')
        tf.io.gfile.makedirs(os.path.dirname(path))
        tf.io.write_file(path, data)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def cpu_seconds(pid='self'):
    """User + system CPU seconds of process `pid` (all its threads) and all its descendants."""
    import glob  # pylint: disable=import-outside-toplevel  (also runs inside TORCH_SCRIPT)
    import os  # pylint: disable=import-outside-toplevel,reimported
    total = 0.0
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
        for path in glob.glob(f'/proc/{pid}/task/*/children'):
            with open(path) as f:
                total += sum(cpu_seconds(child) for child in f.read().split())
    except FileNotFoundError:  # A process that just ended.
        pass
    return total


def rate(batches, count, seconds, warmup=3):
    """{'wall': images/s, 'cpu': images per CPU-second (this process and its children)} of an
    iterator of batches; `count(batch)` images each; measured after `warmup` batches."""
    for _ in range(warmup):
        next(batches)
    n, start, cpu = 0, time.perf_counter(), cpu_seconds()
    while time.perf_counter() - start < seconds:
        n += count(next(batches))
    return {'wall': n / (time.perf_counter() - start), 'cpu': n / (cpu_seconds() - cpu)}


def project_rates(pipeline, config, seconds) -> dict:
    """{'train', 'eval10'} images/s of `pipeline` (an input_pipeline module) on `config`."""
    one = dict(process_index=0, process_count=1, local_devices=1)

    def eval_forever():
        while True:
            yield from pipeline.eval_iterator(config, 'train', **one)
    train = pipeline.train_iterator(config, **one)
    out = {'train': rate(train, lambda b: b['image'].shape[1], seconds)}
    config = config.copy_and_resolve_references()
    config.data.eval_crops = 'ten'
    out['eval10'] = rate(eval_forever(), lambda b: int(b['mask'].sum()), seconds)
    return out


BASELINE_SCRIPT = r'''
import json, os, sys
repo, bench_dir, root, seconds = sys.argv[1:5]
sys.path[:0] = [repo, bench_dir]
from configs import alexnet
from alexnet_jax.data import input_pipeline
import input_pipeline as bench  # benchmarks/input_pipeline.py; uses the pipeline given to it.
c = alexnet.get_config()
d = c.data
d.name, d.folder_root, d.cache = 'folder', root, 'never'
d.train_split = d.eval_split = d.test_split = 'train'
print(json.dumps(bench.project_rates(input_pipeline, c, float(seconds))))
'''


def baseline_rates(root, seconds):
    """--baseline_repo's pipeline on the full-size files (its own config defaults), or None."""
    if not FLAGS.baseline_repo:
        return None
    done = subprocess.run([sys.executable, '-c', BASELINE_SCRIPT, FLAGS.baseline_repo,
                           os.path.dirname(os.path.abspath(__file__)), root, str(seconds)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


TORCH_SCRIPT = r'''
import json, os, sys, time
import torch
from torchvision import datasets, transforms
root, batch, workers, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
tfs = {
    'train': transforms.Compose([transforms.Resize(256), transforms.CenterCrop(256),
                                 transforms.RandomCrop(227), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), norm]),
    'eval10': transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(256), transforms.TenCrop(227),
        transforms.Lambda(lambda crops: torch.stack(
            [norm(transforms.functional.to_tensor(c)) for c in crops]))]),
}
out = {}
for name, tf in tfs.items():
    ds = datasets.ImageFolder(root, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=True, drop_last=True)
    def forever():
        while True:
            yield from loader
    out[name] = rate(forever(), lambda b: b[0].shape[0], seconds)
print(json.dumps(out))
'''


def torch_rates(root, batch, seconds):
    """The DataLoader's images/s on root/train, or None when torch/torchvision are missing."""
    python = FLAGS.torch_python
    probe = subprocess.run([python, '-c', 'import torch, torchvision'], capture_output=True)
    if probe.returncode:
        print(f'(DataLoader column skipped: {python} cannot import torch + torchvision)')
        return None
    script = inspect.getsource(cpu_seconds) + inspect.getsource(rate) + TORCH_SCRIPT
    done = subprocess.run([python, '-c', script, os.path.join(root, 'train'), str(batch),
                           str(cores()), str(seconds)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_model(config, batch=32, steps=3):
    """Prints what one forward+backward pass of the configured net consumes (images/s)."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from alexnet_jax import models  # pylint: disable=import-outside-toplevel
    model = models.create_model(config.model)
    size = config.data.image_size
    x = jnp.zeros((batch, size, size, 3), jnp.float32)
    params = model.init(jax.random.key(0), x[:1])
    rng = {'dropout': jax.random.key(1)}

    @jax.jit
    def grad(params, x):
        return jax.grad(lambda p: model.apply(p, x, train=True, rngs=rng).sum())(params)
    jax.block_until_ready(grad(params, x))
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(grad(params, x))
    images_per_s = batch * steps / (time.perf_counter() - start)
    print(f'model forward+backward on {jax.devices()[0].platform} ({size}px, batch {batch}): '
          f'{images_per_s:.1f} images/s')
    return images_per_s


def main(argv):
    del argv
    from alexnet_jax.data import downsampled  # pylint: disable=import-outside-toplevel
    n_cores, seconds = cores(), FLAGS.seconds
    results = {'cores': n_cores, 'num_images': FLAGS.num_images}
    with tempfile.TemporaryDirectory() as tmp:
        root, data_dir = os.path.join(tmp, 'photos'), os.path.join(tmp, 'tfds')
        write_photo_folder(root, FLAGS.num_images)
        sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs]
        print(f'{len(sizes)} JPEGs of real photo content at ImageNet sizes, mean '
              f'{np.mean(sizes) / 1024:.0f} KB; {n_cores} cores')
        start = time.perf_counter()
        downsampled.prepare(downsampled.get_builder('folder', data_dir, root))
        prep = FLAGS.num_images / (time.perf_counter() - start)
        print(f'prepare 256x256 copy: {prep:.0f} images/s = {prep / n_cores:.0f}/core '
              f'(includes TFDS writing and start-up)')
        results['prepare_256'] = prep

        config = FLAGS.config.copy_and_resolve_references()
        d = config.data
        d.train_split = d.eval_split = d.test_split = 'train'
        d.cache, d.folder_root, d.data_dir = 'never', root, data_dir  # Decode every time.
        for fmt, name in (('full-size', 'folder'), ('256x256', 'downsampled')):
            d.name, d.downsample_source = name, 'folder'
            results[fmt] = project_rates(input_pipeline, config, seconds)
        results['dataloader'] = torch_rates(root, config.train.batch_size, seconds)
        results['baseline'] = baseline_rates(root, seconds)
        if FLAGS.bench_model:
            results['model'] = bench_model(config)

    torch, base = results['dataloader'], results['baseline']
    print('\nimages/s (wall clock), /core = that / cores, /cpu-s = images per CPU-second used '
          '(the per-core rate on an idle machine; robust to other jobs). ratio: of /cpu-s.')
    head = f'{"format":<10}{"transform":<15}{"images/s":>9}{"/core":>7}{"/cpu-s":>8}'
    for name, other in (('DataLoader', torch), ('baseline', base)):
        if other:
            head += f'{name:>11}{"/core":>7}{"/cpu-s":>8}{"ratio":>7}'
    print(head)
    for fmt in ('full-size', '256x256'):
        for key, what in (('train', 'train (paper)'), ('eval10', 'eval 10 crops')):
            r = results[fmt][key]
            line = f'{fmt:<10}{what:<15}{r["wall"]:>9.0f}{r["wall"] / n_cores:>7.0f}{r["cpu"]:>8.0f}'
            for other in (torch, base):
                if other and fmt == 'full-size':
                    o = other[key]
                    line += (f'{o["wall"]:>11.0f}{o["wall"] / n_cores:>7.0f}{o["cpu"]:>8.0f}'
                             f'{r["cpu"] / o["cpu"]:>7.2f}')
            print(line)
    full, small = results['full-size'], results['256x256']
    print(f'\ngoal: train from 256x256 >= 1000 images/s per core: {small["train"]["cpu"]:.0f} '
          f'per CPU-second, {small["train"]["wall"] / n_cores:.0f} per core of wall time')
    if torch:
        print(f'goal: full-size train >= 2.5x the DataLoader per core: '
              f'{full["train"]["cpu"] / torch["train"]["cpu"]:.2f}x per CPU-second, '
              f'{full["train"]["wall"] / torch["train"]["wall"]:.2f}x wall')
    if base:
        print(f'goal: 10-crop eval >= 4x the baseline: '
              f'{full["eval10"]["cpu"] / base["eval10"]["cpu"]:.2f}x per CPU-second, '
              f'{full["eval10"]["wall"] / base["eval10"]["wall"]:.2f}x wall')
    if FLAGS.json:
        with open(FLAGS.json, 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    app.run(main)
