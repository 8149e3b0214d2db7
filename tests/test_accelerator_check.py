"""benchmarks/accelerator_check.py on the CPU: every section prints numbers, a failing or slow part
costs one line and the others still run."""

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from tests.helpers import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = 'benchmarks/accelerator_check.py'
# --small, shrunk further: each part does the least that still measures something.
TINY = ['--small', '--width=0.05', '--image_size=67', '--batches=8', '--dtypes=float32',
        '--step_steps=1', '--step_repeats=1', '--pipeline_images=16', '--pipeline_seconds=0.5',
        '--demo_steps=4', '--seeds=2', '--seed_steps=2']
NUM = r'(\d+(?:\.\d+)?)'


def _check(*args, timeout=600):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=subprocess_env(1),
                          capture_output=True, text=True, timeout=timeout)
    return done, time.perf_counter() - start


def _numbers(pattern, text):
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f'{pattern!r} not in:\n{text}'
    return [float(x) for x in match.groups()]


@pytest.mark.slow  # Seven processes (the check and its six parts), ~1 minute on 2 cores.
def test_every_section_prints_numbers(tmp_path):
    path = tmp_path / 'check.json'
    done, seconds = _check(*TINY, f'--json={path}')
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    for number in ('1', '2', '3', '4', '5a', '5b'):
        assert re.search(rf'^\[{number}\] .* \.\.\. ok, {NUM} s$', out, re.MULTILINE), out
    assert 'ERROR' not in out

    assert re.search(r'^  backend cpu; 1 device\(s\): ', out, re.MULTILINE), out
    # The step: img/s, ms/step, TFLOP/s; peak and MFU '-' (a CPU is no known device); plain
    # img/s, ratio, compile seconds. ms/step and img/s describe the same steps.
    ips, ms, tflops, plain, ratio, compile_s = _numbers(
        rf'^  float32 +8 +{NUM} +{NUM} +{NUM} +- +- +{NUM} +{NUM} +{NUM}$', out)
    assert ips > 0 and tflops > 0 and plain > 0 and ratio > 0 and compile_s > 0
    assert ips == pytest.approx(8 / (ms / 1e3), rel=0.05)  # ms printed to 0.1.
    assert ratio == pytest.approx(plain / ips, rel=0.01)  # One round: median = best.
    pipeline = _numbers(rf'train \(paper transform\): {NUM} img/s', out)[0]
    assert pipeline > 0
    steps, batch, wall, top1 = _numbers(
        rf'^  {NUM} steps x batch {NUM}: wall {NUM} s .*test top-1 {NUM}%', out)
    assert (steps, batch) == (4, 64) and wall > 0 and 0 <= top1 <= 100
    for number, mode in (('5a', 'vmap'), ('5b', 'sequential')):
        block = out.split(f'[{number}] seeds, seeds_mode={mode}')[1]
        seeds, steps, batch, wall, seed_ips = _numbers(
            rf'^  {NUM} seeds x {NUM} steps x batch {NUM}: wall {NUM} s, {NUM} seed-img/s', block)
        assert (seeds, steps, batch) == (2, 2, 64)
        # Printed to 3 significant digits and wall to 0.01 s: within 1% on a busy machine too.
        assert seed_ips == pytest.approx(seeds * steps * batch / wall, rel=0.01 + 0.005 / wall)
    total = _numbers(rf'^summary \(small sizes, total {NUM} s\):$', out)[0]
    assert total <= seconds
    for part in ('devices', 'step', 'pipeline', 'demo', 'seeds_vmap', 'seeds_sequential'):
        assert re.search(rf'^  {part} +ok +{NUM}  \S', out, re.MULTILINE), out

    report = json.loads(path.read_text())
    assert [p['status'] for p in report['parts']] == ['ok'] * 6
    assert report['sizes']['batches'] == [8] and report['small'] is True
    parts = {p['part']: p['result'] for p in report['parts']}
    assert parts['step']['points'][0]['mfu'] is None
    assert parts['demo']['steps'] == 4




@pytest.mark.parametrize('value,printed', [(9.59, '9.59'), (95.94, '95.9'), (959.4, '959'),
                                           (9594.0, '9594'), (0.01234, '0.0123'), (0.0, '0')])
def test_rates_print_three_significant_digits(value, printed):
    """A busy machine's 9.59 seed-img/s printed as '10' is 4% off what the other printed numbers
    give: rates keep 3 significant digits, so a test's 1% comparison holds at any speed."""
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    try:
        import accelerator_check  # pylint: disable=import-outside-toplevel
    finally:
        sys.path.remove(str(ROOT / 'benchmarks'))
    assert accelerator_check.significant(value) == printed
    assert float(printed) == pytest.approx(value, rel=0.005, abs=0.5 if value == 0 else 0)


def _without_tensorflow(tmp_path) -> dict:
    """An environment where `import tensorflow` (and tensorflow_datasets) fails, in every
    process it starts, as on a GPU image with jax, flax, optax and orbax only."""
    (tmp_path / 'sitecustomize.py').write_text(
        "import sys\nsys.modules['tensorflow'] = None\nsys.modules['tensorflow_datasets'] = None\n")
    return subprocess_env(1, PYTHONPATH=f'{tmp_path}{os.pathsep}{ROOT}')


@pytest.mark.slow  # A subprocess that imports jax.
def test_the_core_imports_without_tensorflow(tmp_path):
    code = ('import sys\n'
            'from alexnet_jax import models, optim, train, seeds, checkpoints, evaluation\n'
            'from alexnet_jax import diagnostics, metrics\n'
            'assert sys.modules["tensorflow"] is None  # Blocked, and never replaced.\n'
            'print(sorted(m for m in sys.modules if m.startswith("tensorflow")))\n')
    done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, env=_without_tensorflow(tmp_path), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "['tensorflow', 'tensorflow_datasets']"  # The blocks alone.
    blocked = subprocess.run([sys.executable, '-c', 'import tensorflow'], cwd=ROOT,
                             capture_output=True, text=True, env=_without_tensorflow(tmp_path))
    assert blocked.returncode != 0  # (So the import above was really without it.)


@pytest.mark.slow  # The check and its parts as subprocesses, ~1 minute on 2 cores.
def test_the_check_runs_the_step_and_seeds_without_tensorflow(tmp_path):
    done = subprocess.run([sys.executable, SCRIPT, *TINY], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=_without_tensorflow(tmp_path))
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    for number in ('1', '2', '5a', '5b'):
        assert re.search(rf'^\[{number}\] .* \.\.\. ok, {NUM} s$', out, re.MULTILINE), out
    for number in ('3', '4'):
        assert re.search(rf'^\[{number}\] .* \.\.\. skipped, {NUM} s\n'
                         r'  skipped: TensorFlow is not installed$', out, re.MULTILINE), out
    ips = _numbers(rf'^  float32 +8 +{NUM} ', out)[0]
    assert ips > 0
    for number in ('5a', '5b'):
        block = out.split(f'[{number}] seeds')[1]
        seeds, steps, batch, wall, seed_ips = _numbers(
            rf'^  {NUM} seeds x {NUM} steps x batch {NUM}: wall {NUM} s, {NUM} seed-img/s; '
            r'synthetic device-resident data', block)
        assert (seeds, steps, batch) == (2, 2, 64)
        assert seed_ips == pytest.approx(seeds * steps * batch / wall, rel=0.01 + 0.005 / wall)
    assert 'ERROR' not in out
