"""The summary CLI reads the live module and reproduces the seed table's counts."""

import subprocess
import sys

import pytest

from alexnet_jax import models
from alexnet_jax.tools import summary
from tests.helpers import PAPER_CONVS, PAPER_FCS, expected_params

# Paper's output sides per conv at 227x227 (an independent transcription of the layer table).
CONV_SIDES = [55, 27, 13, 13, 13]


def seed_compute(groups):
    """The seed table's convention: conv (k*k*c_in/g + 1)*c_out*H*W, FC weights only."""
    conv = sum((k * k * cin // (groups if g else 1) + 1) * cout * side * side
               for (k, cin, cout, g), side in zip(PAPER_CONVS, CONV_SIDES))
    return conv + sum(i * o for i, o in PAPER_FCS)


@pytest.mark.parametrize('groups', [1, 2])
def test_totals_match_independent_formulas(groups):
    t = summary.totals(summary.layer_table(models.AlexNet(groups=groups)))
    assert t['params'] == expected_params(groups)
    assert t['params_fc_biases_omitted'] == expected_params(groups) - sum(o for _, o in PAPER_FCS)
    assert t['seed_compute'] == seed_compute(groups)
    macs = sum(k * k * cin // (groups if g else 1) * cout * side * side
               for (k, cin, cout, g), side in zip(PAPER_CONVS, CONV_SIDES))
    assert t['macs'] == macs + sum(i * o for i, o in PAPER_FCS)


def test_activation_count_follows_per_op_convention():
    rows = {r.name: r for r in summary.layer_table(models.AlexNet())}
    assert rows['input'].activations == 227 * 227 * 3
    assert rows['conv1'].activations == 55 * 55 * 96 * 2   # conv + ReLU (LRN is its own row)
    assert rows['lrn1'].activations == 55 * 55 * 96
    assert rows['fc6'].activations == 4096 * 3            # FC + ReLU + dropout
    no_dropout = {r.name: r for r in summary.layer_table(models.AlexNet(dropout_rate=0.0))}
    assert no_dropout['fc6'].activations == 4096 * 2


@pytest.mark.parametrize('width,size,groups', [(0.5, 99, 2), (0.25, 67, 1), (2.0, 131, 1)])
def test_any_width_and_input_size(width, size, groups):
    model = models.AlexNet(width=width, groups=groups, num_classes=10)
    rows = summary.layer_table(model, (size, size, 1))
    assert rows[1].output_shape[:2] == ((size - 11) // 4 + 1,) * 2
    params = sum(r.weights + r.biases for r in rows)
    import jax, jax.numpy as jnp
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 1))))
    assert params == sum(x.size for x in jax.tree.leaves(variables['params']))


def run_summary(*args):
    return subprocess.run([sys.executable, '-m', 'alexnet_jax.tools.summary', *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # Two CLI subprocesses.
def test_cli_prints_the_seed_numbers():
    out = run_summary('--config=configs/alexnet.py')
    assert out.returncode == 0, out.stderr
    for number in ['62,369,152', '62,378,344', '1,135,906,176', '1,135,256,096']:
        assert number in out.stdout
    grouped = run_summary('--config=configs/alexnet.py', '--config.model.groups=2')
    assert '60,965,224' in grouped.stdout


@pytest.mark.slow  # One CLI subprocess per case.
@pytest.mark.parametrize('override,message', [
    ('--config.model.activaton=tanh', 'Did you mean "activation"'),
    ('--config.model.groups=3', 'config.model.groups'),
    ('--config.model.lrn_convention=torch', 'config.model.lrn_convention'),
    ('--config.data.image_size=50', 'config.data.image_size'),
    ('--config=configs/alexnet.py:nope', "Unknown config variant 'nope'"),
])
def test_cli_bad_config_is_one_clear_line(override, message):
    out = run_summary('--config=configs/alexnet.py', override)
    assert out.returncode == 2
    assert message in out.stderr
    assert 'Traceback' not in out.stderr and len(out.stderr.strip().splitlines()) == 1
