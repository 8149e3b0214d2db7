"""`--help` of launch.py and of every tool: exit 0, `--config` listed with its variants or grids,
and nothing heavy (jax, TensorFlow) loaded to print it, so help answers in a second or two."""

import json
import subprocess
import sys

import pytest

from configs import ablations
from configs import alexnet
from tests.helpers import ROOT

# Runs an entry point as __main__ with --help and reports its exit code and what it loaded.
_PROBE = '''
import json, runpy, sys
target = sys.argv[1]
sys.argv = [target, '--help']
try:
    if target.endswith('.py'):
        runpy.run_path(target, run_name='__main__')
    else:
        runpy.run_module(target, run_name='__main__', alter_sys=True)
    code = 0
except SystemExit as e:
    code = e.code
print(json.dumps({'code': code, 'loaded': [m for m in ('jax', 'tensorflow', 'flax')
                                           if m in sys.modules]}))
'''

ENTRY_POINTS = {  # entry point -> a name its --config file defines
    'launch.py': 'digits',
    'alexnet_jax.tools.convert': 'digits',
    'alexnet_jax.tools.evaluate': 'digits',
    'alexnet_jax.tools.features': 'digits',
    'alexnet_jax.tools.figures': 'digits',
    'alexnet_jax.tools.summary': 'digits',
    'alexnet_jax.tools.sweep': 'fig1',
}


def test_the_names_are_the_config_files():
    assert 'digits' in alexnet.VARIANTS and 'fig1' in ablations.GRIDS


@pytest.mark.parametrize('target', sorted(ENTRY_POINTS))
def test_help_lists_config_without_loading_jax(target):
    p = subprocess.run([sys.executable, '-c', _PROBE, target], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=False)
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report == {'code': 0, 'loaded': []}, p.stderr[-2000:]
    assert '--config:' in p.stdout and ENTRY_POINTS[target] in p.stdout
    assert 'docs/' in p.stdout  # Where the fields are described.


def test_launch_help_exits_zero():
    p = subprocess.run([sys.executable, 'launch.py', '--help'], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    assert '--workdir' in p.stdout and '--config' in p.stdout
