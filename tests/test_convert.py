"""Converters: random weights of the exact published structure, converted, against an independent
numpy forward of the source network (NCHW, source weight layouts, source flatten order)."""

import ast
import io
import fractions
import os
import pathlib
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from alexnet_jax import evaluation
from alexnet_jax.tools import convert
from alexnet_jax import models

ROOT = pathlib.Path(__file__).resolve().parents[1]
CAFFE_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434])  # ilsvrc_2012_mean.npy
# Caffe bvlc_alexnet blobs (deploy.prototxt): name -> (out, in-per-group, k) or (out, in); groups.
CAFFE_BLOBS = {'conv1': ((96, 3, 11, 11), 1), 'conv2': ((256, 48, 5, 5), 2),
               'conv3': ((384, 256, 3, 3), 1), 'conv4': ((384, 192, 3, 3), 2),
               'conv5': ((256, 192, 3, 3), 2), 'fc6': ((4096, 9216), 1),
               'fc7': ((4096, 4096), 1), 'fc8': ((1000, 4096), 1)}
TORCH_SHAPES = {'features.0': (64, 3, 11, 11), 'features.3': (192, 64, 5, 5),
                'features.6': (384, 192, 3, 3), 'features.8': (256, 384, 3, 3),
                'features.10': (256, 256, 3, 3), 'classifier.1': (4096, 9216),
                'classifier.4': (4096, 4096), 'classifier.6': (1000, 4096)}


# --- an independent numpy forward, NCHW ----------------------------------------------------------

def conv(x, w, b, stride=1, pad=0, groups=1):
    """x [n, c, h, w], w [o, c/groups, kh, kw]; groups as separate convs on channel slices."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
    cols = cols[:, :, ::stride, ::stride]  # [n, c, oh, ow, kh, kw]
    ci, og = w.shape[1], w.shape[0] // groups
    outs = [np.einsum('ncyxij,ocij->noyx', cols[:, g * ci:(g + 1) * ci], w[g * og:(g + 1) * og],
                      optimize=True) for g in range(groups)]
    return np.concatenate(outs, axis=1) + b[None, :, None, None]


def maxpool(x, k=3, s=2):  # Floor mode (Caffe's ceil gives the same sizes for AlexNet).
    return np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s].max((-1, -2))


def caffe_lrn(x, n=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe's LRN (ACROSS_CHANNELS): x / (k + alpha/n * sum over n channels of x^2)^beta."""
    out = np.empty_like(x)
    c = x.shape[1]
    for i in range(c):
        s = (x[:, max(0, i - n // 2):min(c, i + n // 2 + 1)] ** 2).sum(1)
        out[:, i] = x[:, i] / (k + alpha / n * s) ** beta
    return out


def adaptive_avg_pool(x, size=6):
    """torch AdaptiveAvgPool2d: bin i covers [floor(i*n/size), ceil((i+1)*n/size))."""
    n, c, h, w = x.shape
    out = np.empty((n, c, size, size), x.dtype)
    for i in range(size):
        for j in range(size):
            h0, h1 = (i * h) // size, -((-(i + 1) * h) // size)
            w0, w1 = (j * w) // size, -((-(j + 1) * w) // size)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean((2, 3))
    return out


relu = lambda x: np.maximum(x, 0)  # noqa: E731


def caffe_forward(blobs, bgr):
    """bvlc_alexnet's deploy.prototxt: conv relu norm pool, ..., fc6 on pool5 flattened as CHW."""
    x = maxpool(caffe_lrn(relu(conv(bgr, *blobs['conv1'], stride=4))))
    x = maxpool(caffe_lrn(relu(conv(x, *blobs['conv2'], pad=2, groups=2))))
    x = relu(conv(x, *blobs['conv3'], pad=1))
    x = relu(conv(x, *blobs['conv4'], pad=1, groups=2))
    x = maxpool(relu(conv(x, *blobs['conv5'], pad=1, groups=2)))
    x = x.reshape(x.shape[0], -1)  # Caffe's blob order: C, H, W.
    for name in ('fc6', 'fc7'):
        x = relu(x @ blobs[name][0].T + blobs[name][1])
    return x @ blobs['fc8'][0].T + blobs['fc8'][1]


def torchvision_forward(sd, rgb):
    """torchvision.models.alexnet in eval mode."""
    p = lambda k: (sd[k + '.weight'], sd[k + '.bias'])  # noqa: E731
    x = maxpool(relu(conv(rgb, *p('features.0'), stride=4, pad=2)))
    x = maxpool(relu(conv(x, *p('features.3'), pad=2)))
    x = relu(conv(x, *p('features.6'), pad=1))
    x = relu(conv(x, *p('features.8'), pad=1))
    x = maxpool(relu(conv(x, *p('features.10'), pad=1)))
    x = adaptive_avg_pool(x).reshape(x.shape[0], -1)  # torch.flatten: C, H, W.
    x = relu(x @ sd['classifier.1.weight'].T + sd['classifier.1.bias'])
    x = relu(x @ sd['classifier.4.weight'].T + sd['classifier.4.bias'])
    return x @ sd['classifier.6.weight'].T + sd['classifier.6.bias']


def random_weights(shape, rng):
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def max_rel_diff(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def our_logits(directory, images_rgb_0_255):
    config, _, variables = evaluation.load(directory)
    params = variables['params']
    x = (images_rgb_0_255 - np.asarray(config.data.mean_rgb)) / np.asarray(config.data.stddev_rgb)
    model = models.create_model(config.model)
    return config, np.asarray(jax.jit(model.apply)({'params': params}, x.astype(np.float32)))


# --- bvlc_npy -----------------------------------------------------------------------------------

def caffe_blobs(rng):
    return {name: (random_weights(shape, rng), rng.normal(0, 0.1, shape[0]).astype(np.float32))
            for name, (shape, _) in CAFFE_BLOBS.items()}


def caffe_tensorflow_dump(blobs):
    """What ethereon/caffe-tensorflow (kaffe/core.py DataReshaper) made bvlc_alexnet.npy with:
    conv (o, i, h, w) -> (h, w, i, o); the FC after pool5 (o, c*h*w) -> (o, c, h, w) ->
    (h, w, c, o) -> (h*w*c, o); other FCs transposed."""
    dump = {}
    for name, (w, b) in blobs.items():
        if name.startswith('conv'):
            w = w.transpose(2, 3, 1, 0)
        elif name == 'fc6':
            w = w.reshape(4096, 256, 6, 6).transpose(2, 3, 1, 0).reshape(9216, 4096)
        else:
            w = w.T
        dump[name] = [np.ascontiguousarray(w), b]
    return dump


def test_bvlc_npy_matches_caffe_forward(tmp_path):
    rng = np.random.default_rng(0)
    blobs = caffe_blobs(rng)
    np.save(tmp_path / 'bvlc_alexnet.npy', caffe_tensorflow_dump(blobs), allow_pickle=True)
    out = convert.convert('bvlc_npy', tmp_path / 'bvlc_alexnet.npy', tmp_path / 'bvlc')

    rgb = rng.uniform(0, 255, (2, 227, 227, 3))
    config, logits = our_logits(out, rgb)
    bgr_nchw = (rgb[..., ::-1] - CAFFE_MEAN_BGR).transpose(0, 3, 1, 2).astype(np.float32)
    want = caffe_forward(blobs, bgr_nchw)
    assert max_rel_diff(logits, want) < 1e-4
    assert np.abs(want).max() > 1.0 and np.ptp(want) > 1.0  # Not a degenerate comparison.
    assert (config.model.groups, config.model.lrn_k, config.model.lrn_convention) == (2, 1.0, 'caffe')
    assert config.data.image_size == 227 and config.pretrained.source_channel_order == 'bgr'
    assert sorted(p.name for p in out.parent.iterdir()) == ['bvlc', 'bvlc_alexnet.npy']  # No tmp.


def test_torchvision_npz_matches_torch_forward(tmp_path):
    rng = np.random.default_rng(1)
    sd = {}
    for key, shape in TORCH_SHAPES.items():
        sd[key + '.weight'] = random_weights(shape, rng)
        sd[key + '.bias'] = rng.normal(0, 0.1, shape[0]).astype(np.float32)
    np.savez(tmp_path / 'alexnet.npz', **sd)
    out = convert.convert('torchvision', tmp_path / 'alexnet.npz', tmp_path / 'tv')

    rgb = rng.uniform(0, 255, (2, 224, 224, 3))
    config, logits = our_logits(out, rgb)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = torchvision_forward(sd, ((rgb / 255 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
    assert max_rel_diff(logits, want) < 1e-4
    assert np.ptp(want) > 1.0
    assert config.model.architecture == 'torchvision' and not config.model.lrn
    assert config.data.image_size == 224


@pytest.mark.parametrize('size', [5, 6, 7, 13])
def test_adaptive_avg_pool_matches_torch_formula(size):
    x = np.random.default_rng(size).normal(size=(2, size, size + 1, 3)).astype(np.float32)
    got = models.adaptive_avg_pool(x, 6)
    want = adaptive_avg_pool(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# --- bad inputs ----------------------------------------------------------------------------------

def tiny_bvlc(conv2_in=48):
    """The real conv1/conv2 shapes (checked first), tiny arrays for the rest."""
    d = {name: [np.zeros((1,), np.float32), np.zeros((1,), np.float32)] for name in CAFFE_BLOBS}
    d['conv1'] = [np.zeros((11, 11, 3, 96), np.float32), np.zeros(96, np.float32)]
    d['conv2'] = [np.zeros((5, 5, conv2_in, 256), np.float32), np.zeros(256, np.float32)]
    d['fc8'] = [np.zeros((4096, 1000), np.float32), np.zeros(1000, np.float32)]
    return d


def npy_bytes(obj):
    if not isinstance(obj, np.ndarray):  # As np.save(f, a_dict) stores a dict: a 0-d object array.
        obj, item = np.empty((), object), obj
        obj[()] = item
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    return buf.getvalue()


BAD_BVLC = [  # (file bytes, expected message fragment)
    (b'', 'is empty'),
    (npy_bytes(tiny_bvlc())[:300], 'truncated'),
    (b'\x80\x04K\x01.', 'is not the numpy dump'),             # A bare pickle, not .npy.
    (npy_bytes([1, 2, 3]), 'holds a pickled list'),
    (npy_bytes(np.zeros((3, 3), np.float32)), 'holds a float32 array'),
    (npy_bytes({'conv1': [fractions.Fraction(1, 3), 1]}), 'not just numpy arrays'),
    (npy_bytes({'conv1_1': [np.zeros(1), np.zeros(1)]}), 'missing conv1'),   # VGG-like.
    (npy_bytes(tiny_bvlc(conv2_in=96)),
     'layer conv2 weights has shape (5, 5, 96, 256), expected (5, 5, 48, 256)'),
]


@pytest.mark.parametrize('content,message', BAD_BVLC)
def test_bad_bvlc_files_fail_clearly_and_write_nothing(tmp_path, content, message):
    path = tmp_path / 'in.npy'
    path.write_bytes(content)
    with pytest.raises(convert.ConvertError) as e:
        convert.convert('bvlc_npy', path, tmp_path / 'out')
    assert message in str(e.value) and '\n' not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in.npy']


def tiny_torchvision(**changes):
    sd = {f'{k}.{p}': np.zeros((1,), np.float32) for k in TORCH_SHAPES for p in ('weight', 'bias')}
    sd['features.0.weight'] = np.zeros((64, 3, 11, 11), np.float32)
    sd['features.0.bias'] = np.zeros(64, np.float32)
    sd['classifier.6.bias'] = np.zeros(1000, np.float32)
    sd.update(changes)
    return {k: v for k, v in sd.items() if v is not None}


@pytest.mark.parametrize('changes,message', [
    ({'features.3.weight': np.zeros((192, 32, 5, 5), np.float32)},
     'features.3.weight (conv2) has shape (192, 32, 5, 5), expected (192, 64, 5, 5)'),
    ({'classifier.6.bias': None}, 'missing classifier.6.bias'),
    ({'features.1.weight': np.zeros(1)}, 'unexpected features.1.weight'),
])
def test_bad_torchvision_state_dicts(tmp_path, changes, message):
    np.savez(tmp_path / 'sd.npz', **tiny_torchvision(**changes))
    with pytest.raises(convert.ConvertError) as e:
        convert.convert('torchvision', tmp_path / 'sd.npz', tmp_path / 'out')
    assert message in str(e.value), str(e.value)
    assert not (tmp_path / 'out').exists()


def test_truncated_npz_and_pth_without_torch(tmp_path):
    np.savez(tmp_path / 'sd.npz', **tiny_torchvision())
    data = (tmp_path / 'sd.npz').read_bytes()
    (tmp_path / 'cut.npz').write_bytes(data[:len(data) // 2])
    with pytest.raises(convert.ConvertError, match='truncated'):
        convert.convert('torchvision', tmp_path / 'cut.npz', tmp_path / 'out')
    try:
        import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        (tmp_path / 'alexnet.pth').write_bytes(b'PK\x03\x04 not really')
        with pytest.raises(convert.ConvertError, match='pip install torch'):
            convert.convert('torchvision', tmp_path / 'alexnet.pth', tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_existing_output_is_left_alone(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    np.save(tmp_path / 'in.npy', tiny_bvlc(conv2_in=96), allow_pickle=True)
    for path in (tmp_path / 'in.npy', tmp_path / 'missing.npy'):
        with pytest.raises(convert.ConvertError):
            convert.convert('bvlc_npy', path, out)
    assert [p.name for p in out.iterdir()] == ['keep.txt'] and (out / 'keep.txt').read_text() == 'mine'


@pytest.mark.slow  # The CLI in a subprocess.
def test_cli_bad_file_is_one_line_and_nonzero(tmp_path):
    (tmp_path / 'in.npy').write_bytes(npy_bytes([1, 2]))
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
    r = subprocess.run([sys.executable, '-m', 'alexnet_jax.tools.convert', '--from=bvlc_npy',
                        f'--input={tmp_path / "in.npy"}', f'--output={tmp_path / "out"}'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    errors = [l for l in r.stderr.splitlines() if l.startswith('error:')]
    assert len(errors) == 1 and 'pickled list' in errors[0], r.stderr
    assert not (tmp_path / 'out').exists()


def test_pickled_code_is_not_run(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / 'pwned'),))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {'descr': '|O', 'fortran_order': False, 'shape': ()})
    (tmp_path / 'evil.npy').write_bytes(buf.getvalue() + pickle.dumps({'conv1': Boom()}, protocol=3))
    with pytest.raises(convert.ConvertError, match='not just numpy arrays'):
        convert.convert('bvlc_npy', tmp_path / 'evil.npy', tmp_path / 'out')
    assert not (tmp_path / 'pwned').exists()


def _imports(path: pathlib.Path) -> set:
    """Modules a source file imports (`import a.b`, `from a import b` -> 'a.b' and 'a')."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f'{node.module}.{alias.name}' for alias in node.names)
    return names


def test_convert_is_a_leaf_tool():
    """Imports point from tools to the core: no core module imports a tool, and only tools
    import convert (workdirs are read through alexnet_jax.checkpoints)."""
    package = pathlib.Path(__file__).resolve().parents[1] / 'alexnet_jax'
    files = {p.relative_to(package.parent).as_posix(): _imports(p) for p in package.rglob('*.py')}
    assert 'alexnet_jax/tools/convert.py' in files and 'alexnet_jax/checkpoints.py' in files
    importers = sorted(f for f, names in files.items() if 'alexnet_jax.tools.convert' in names)
    assert all(f.startswith('alexnet_jax/tools/') for f in importers), importers
    core_to_tools = sorted(f for f, names in files.items() if not f.startswith('alexnet_jax/tools/')
                           and any(n.startswith('alexnet_jax.tools') for n in names))
    assert 'alexnet_jax/checkpoints.py' not in core_to_tools
    assert not [f for f in core_to_tools if f in ('alexnet_jax/finetune.py', 'alexnet_jax/integrity.py',
                                                  'alexnet_jax/preemption.py')], core_to_tools
