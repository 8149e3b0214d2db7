"""LARS, warmup + poly decay, and the TPU-pod variants lars4k / lars32k."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import alexnet
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import validation
from tests.helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('variant,batch', [('lars4k', 4096), ('lars32k', 32768)])
def test_pod_variants_validate_and_follow_the_linear_rule(variant, batch):
    c = alexnet.get_config(variant)
    validation.validate_config(c)
    assert c.train.batch_size == batch
    assert c.optim.learning_rate == pytest.approx(0.625 * batch / 256)  # Linear scaling rule.
    assert (c.optim.optimizer, c.optim.schedule) == ('lars', 'warmup_poly')
    assert c.model.batch_norm and not c.model.lrn
    # Per host / per device from the global batch: a v4-32-like pod (4 hosts x 4 chips) and a
    # 32-host x 8-core one.
    assert parallel.per_device_batch_size(batch, process_count=4, local_devices=4) == batch // 16
    assert parallel.per_device_batch_size(batch, process_count=32, local_devices=8) == batch // 256


def test_warmup_poly_schedule():
    c = alexnet.get_config('lars4k')
    lr, warmup, total = c.optim.learning_rate, 10, 110
    c.optim.warmup_steps, c.optim.warmup_epochs = warmup, None
    schedule = optim.create_schedule(c.optim, steps_per_epoch=10, num_steps=total)
    for t in (0, 5, 10, 35, 60, 109):
        expected = lr * t / warmup if t < warmup else lr * (1 - (t - warmup) / 100) ** 2
        assert float(schedule(t)) == pytest.approx(expected, rel=1e-5, abs=1e-6), t


def test_lars_update_matches_hand_computation():
    c = alexnet.get_config('lars4k')
    c.optim.schedule = 'constant'
    tx = optim.create_optimizer(c.optim, steps_per_epoch=1, num_steps=1)
    rng = np.random.RandomState(0)
    params = {'conv1': {'kernel': rng.randn(3, 3, 3, 8).astype(np.float32),
                        'bias': rng.randn(8).astype(np.float32)}}
    grads = {'conv1': {'kernel': rng.randn(3, 3, 3, 8).astype(np.float32),
                       'bias': rng.randn(8).astype(np.float32)}}
    updates, _ = tx.update(grads, tx.init(params), params)
    lr, wd, eta = c.optim.learning_rate, c.optim.weight_decay, c.optim.lars_trust_coefficient
    w, g = params['conv1']['kernel'].astype(np.float64), grads['conv1']['kernel']
    u = g + wd * w  # Weight decay on kernels, then the layer's trust ratio.
    trust = eta * np.linalg.norm(w) / np.linalg.norm(u)
    # First step: the momentum trace is the update itself.
    np.testing.assert_allclose(updates['conv1']['kernel'], -lr * trust * u, rtol=1e-5)
    # Biases: neither decayed nor trust-scaled.
    np.testing.assert_allclose(updates['conv1']['bias'], -lr * grads['conv1']['bias'], rtol=1e-6)


POD_RUN = textwrap.dedent('''
    import json, sys
    import jax
    from configs import alexnet
    from alexnet_jax import train
    assert jax.device_count() == 8, jax.devices()
    # The session's compilation cache (conftest) comes with the environment.
    out = {}
    for variant in ('lars4k', 'lars32k'):
        c = alexnet.get_config(variant)
        # Shrink the model and data only; the optimizer and schedule path stay the variant's.
        c.model.update(width=0.05, num_classes=10)
        c.data.update(name='fake', fake_shape=(70, 70, 3), fake_num_classes=10,
                      fake_train_examples=160, fake_eval_examples=16, resize_size=70,
                      image_size=67)
        c.train.update(batch_size=16, eval_batch_size=16, num_steps=2, log_every_steps=1,
                       eval_every_steps=0, checkpoint_every_steps=0, plot=False)
        workdir = sys.argv[1] + '/' + variant
        results = train.train_and_evaluate(c, workdir)
        lines = [json.loads(l) for l in open(workdir + '/metrics.jsonl')]
        out[variant] = {'results': results, 'train': [l for l in lines if l['split'] == 'train'],
                        'lr': c.optim.learning_rate, 'warmup_epochs': c.optim.warmup_epochs}
    print('RESULT ' + json.dumps(out))
''')


@pytest.mark.slow  # A subprocess with 8 devices, two runs.
def test_pod_variants_run_two_steps_on_8_devices(tmp_path):
    env = subprocess_env(8, CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2')
    proc = subprocess.run([sys.executable, '-c', POD_RUN, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split('RESULT ', 1)[1])
    for variant, run in out.items():
        assert run['results']['steps'] == 2 and np.isfinite(run['results']['test_loss'])
        train_records = run['train']
        assert [r['step'] for r in train_records] == [1, 2]
        assert all(np.isfinite(r['loss']) for r in train_records)
        # Warmup from 0: step t used lr * (t - 1) / warmup_steps, 10 steps per epoch here.
        warmup_steps = run['warmup_epochs'] * 160 // 16
        for r in train_records:
            assert r['lr'] == pytest.approx(run['lr'] * (r['step'] - 1) / warmup_steps), variant
