r"""Trained AlexNets that already exist, as checkpoints of this codebase.

  python -m alexnet_jax.tools.convert --from=bvlc_npy --input=bvlc_alexnet.npy --output=/tmp/bvlc
  python -m alexnet_jax.tools.convert --from=torchvision --input=alexnet-owt-7be5be79.pth --output=/tmp/tv
  python -m alexnet_jax.tools.convert --from=torchvision --input=alexnet.npz --output=/tmp/tv  # no torch

What DIR holds (the layout of a training workdir, workdirs.py's, so every tool reads both):
the full config (model fields + the source's preprocessing in `data`, provenance and notes in
`pretrained`), and checkpoint step 0 holding {'params': {...}} (checkpoints.Checkpointer).

`evaluation.load(DIR) -> (config, model, variables)` reads it, as it reads a training workdir.
This module only converts: nothing outside alexnet_jax/tools imports it.
The output is written to a temporary directory next to DIR and renamed at the end: a failed
conversion leaves nothing behind, and an existing non-empty DIR is never touched.

bvlc_npy: the numpy dump of Caffe's bvlc_alexnet (Guerzhoy's bvlc_alexnet.npy), a pickled dict
layer -> [weights, biases]. What it is, checked against public sources:
  * made by an early ethereon/caffe-tensorflow (kaffe/core.py, DataReshaper): conv blobs
    (out, in, h, w) -> HWIO; the fc6 blob (4096, 256*6*6), whose columns are Caffe's CHW flatten
    of pool5, is reshaped to (4096, 256, 6, 6), transposed to (6, 6, 256, 4096) and reshaped to
    (9216, 4096). Its rows are therefore in HWC order, our NHWC flatten: no permutation. (So does
    Guerzhoy's myalexnet_forward.py, which feeds tf.reshape(maxpool5 NHWC) to fc6 directly.)
  * grouped conv2/4/5 kernels keep Caffe's per-group input channels, (5,5,48,256), (3,3,192,384),
    (3,3,192,256), and Caffe's groups are contiguous halves: XLA's feature_group_count layout.
  * BVLC/caffe models/bvlc_alexnet/deploy.prototxt: conv1 relu1 norm1 pool1, conv2 (group 2)
    relu2 norm2 pool2, conv3, conv4 (group 2), conv5 (group 2), pool5: ReLU -> LRN -> pool, the
    order of our module. (bvlc_reference_caffenet pools before it normalises; not this model.)
    LRN local_size 5, alpha 1e-4, beta 0.75 and k = 1 (caffe.proto's default; the prototxt sets
    none); Caffe divides alpha by local_size: lrn_convention='caffe', lrn_k=1.
  * Caffe rounds pooled sizes up, we round down; at 227 all are exact (55->27, 27->13, 13->6).
  * Preprocessing: BGR pixels in 0..255 minus the ILSVRC-2012 mean; 227 crops of 256 images.
    conv1's input channels are reversed here, so the converted net takes RGB like everything else
    in this codebase (exact: conv1 is linear in its input); data.mean_rgb is Caffe's mean pixel in
    RGB order. Caffe warps images to 256x256 and subtracts the mean *image*; we keep the aspect
    ratio and subtract the mean pixel (config.pretrained.notes says so).

torchvision: a state dict of torchvision.models.alexnet (features.0/3/6/8/10, classifier.1/4/6),
into architecture='torchvision': OIHW -> HWIO, Linear (out, in) -> (in, out), fc6's inputs
permuted from NCHW to NHWC flatten order. A .pth needs torch (optional: pip install torch);
an .npz of the same keys (np.savez(f, **{k: v.numpy() for k, v in sd.items()})) does not.
"""

import hashlib
import pathlib
import pickle
import shutil
import tempfile

from absl import app
from absl import flags
from etils import epy
import ml_collections
import numpy as np

from alexnet_jax import cli
from alexnet_jax import errors

with epy.lazy_imports():  # Loaded on first use: --help answers before jax loads.
    import jax
    import jax.numpy as jnp
    from alexnet_jax import checkpoints
    from alexnet_jax import models
    from alexnet_jax import validation
    from alexnet_jax import workdirs

SOURCES = ('bvlc_npy', 'torchvision')
LAYER_NAMES = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')
TORCHVISION_KEYS = {  # Our layer -> its module in torchvision's alexnet.
    'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6', 'conv4': 'features.8',
    'conv5': 'features.10', 'fc6': 'classifier.1', 'fc7': 'classifier.4', 'fc8': 'classifier.6'}
CAFFE_MEAN_BGR = (104.0069879317889, 116.66876761696767, 122.6789143406786)  # ilsvrc_2012_mean.
TORCHVISION_MEAN = (0.485, 0.456, 0.406)   # Its transforms, on pixels scaled to [0, 1].
TORCHVISION_STD = (0.229, 0.224, 0.225)
DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / 'configs' / 'alexnet.py'


class ConvertError(errors.UserError, ValueError):
    """The input cannot be converted; the one-line message names the file, layer and shapes."""


# --- reading the sources ------------------------------------------------------------------------

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays in plain containers and nothing else (a pickle can run code)."""
    ALLOWED = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
               ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
               ('numpy', 'ndarray'), ('numpy', 'dtype'), ('collections', 'OrderedDict')}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f'it pickles {module}.{name}, not just numpy arrays')
        return super().find_class(module, name)


def _check_file(path: pathlib.Path) -> None:
    if not path.is_file():
        raise ConvertError(f'--input={path}: no such file.')
    if path.stat().st_size == 0:
        raise ConvertError(f'--input={path} is empty (0 bytes).')


def read_bvlc_npy(path) -> dict:
    """bvlc_alexnet.npy -> {layer: (weights, biases)}, without running arbitrary pickled code."""
    path = pathlib.Path(path)
    _check_file(path)
    what = 'the numpy dump of bvlc_alexnet (np.save of a dict layer -> [weights, biases])'
    try:
        with open(path, 'rb') as f:
            version = np.lib.format.read_magic(f)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, _, dtype = header(f)
            if dtype != object:
                raise ConvertError(f'--input={path} holds a {dtype} array of shape {shape}, not {what}.')
            obj = _NumpyOnlyUnpickler(f, encoding='latin1').load()
    except ConvertError:
        raise
    except Exception as e:  # pylint: disable=broad-except  (any failure: a bad or cut file)
        raise ConvertError(f'--input={path} is not {what}, or is truncated: '
                           f'{type(e).__name__}: {" ".join(str(e).split())[:200]}') from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise ConvertError(f'--input={path} holds a pickled {type(obj).__name__}, not {what}.')
    layers = {}
    for key, value in obj.items():
        name = key.decode('latin1') if isinstance(key, bytes) else str(key)
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, np.ndarray) for v in value)):
            raise ConvertError(f'--input={path}: layer {name} should be [weights, biases] arrays, '
                               f'got {type(value).__name__}.')
        layers[name] = tuple(value)
    _check_layer_names(path, layers, LAYER_NAMES)
    return layers


def read_torchvision(path) -> dict:
    """A torchvision alexnet state dict (.pth with torch, or .npz) -> {key: numpy array}."""
    path = pathlib.Path(path)
    _check_file(path)
    if path.suffix == '.npz':
        try:
            with np.load(path, allow_pickle=False) as npz:
                state = {k: npz[k] for k in npz.files}
        except Exception as e:  # pylint: disable=broad-except
            raise ConvertError(f'--input={path} is not a readable .npz state dict, or is '
                               f'truncated: {type(e).__name__}: {" ".join(str(e).split())[:200]}') from None
    else:
        try:
            import torch  # pylint: disable=import-outside-toplevel
        except ImportError:
            raise ConvertError(
                f'reading {path.name} (a torch file) needs torch: pip install torch (the CPU build '
                'is enough); or, where torch is, save it as .npz: np.savez("alexnet.npz", '
                '**{k: v.numpy() for k, v in torch.load(f).items()})') from None
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:  # pylint: disable=broad-except
            raise ConvertError(f'--input={path} is not a readable torch state dict, or is '
                               f'truncated: {type(e).__name__}: {" ".join(str(e).split())[:200]}') from None
        if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
            state = state['state_dict']
        if not isinstance(state, dict):
            raise ConvertError(f'--input={path} holds a {type(state).__name__}, not a state dict.')
        state = {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, 'detach')}
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    keys = [f'{TORCHVISION_KEYS[n]}.{p}' for n in LAYER_NAMES for p in ('weight', 'bias')]
    _check_layer_names(path, state, keys, what='keys')
    return state


def _check_layer_names(path, found: dict, expected, what='layers') -> None:
    missing = [k for k in expected if k not in found]
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        parts = ([f'missing {", ".join(missing)}'] if missing else []) + (
            [f'unexpected {", ".join(extra[:8])}{" ..." if len(extra) > 8 else ""}'] if extra else [])
        raise ConvertError(f'--input={path}: not an AlexNet of this kind ({what}: '
                           f'{"; ".join(parts)}).')


# --- mapping onto our model ----------------------------------------------------------------------

def _expected_params(config) -> dict:
    model = models.create_model(config.model)
    size = config.data.image_size
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    return variables['params']


def _check_shape(source: str, where: str, got, want, layout: str) -> None:
    if tuple(got) != tuple(want):
        raise ConvertError(f'{source}: {where} has shape {tuple(got)}, expected {tuple(want)} '
                           f'({layout}).')


def bvlc_params(layers: dict, config) -> dict:
    """Caffe dump -> our params (groups=2); conv1's input channels reversed from BGR to RGB."""
    expected = _expected_params(config)
    params = {}
    for name in LAYER_NAMES:
        w, b = (np.asarray(a, np.float32) for a in layers[name])
        want = expected[name]
        layout = 'HWIO, in-channels per group' if name.startswith('conv') else '(in, out)'
        _check_shape('bvlc_npy', f'layer {name} weights', w.shape, want['kernel'].shape, layout)
        _check_shape('bvlc_npy', f'layer {name} biases', b.shape, want['bias'].shape, 'out')
        if name == 'conv1':
            w = w[:, :, ::-1, :]  # BGR -> RGB.
        params[name] = {'kernel': np.ascontiguousarray(w), 'bias': b}
    return params


def torchvision_params(state: dict, config) -> dict:
    """torchvision state dict -> our params: OIHW -> HWIO, (out, in) -> (in, out), fc6 NCHW -> NHWC."""
    expected = _expected_params(config)
    params = {}
    for name in LAYER_NAMES:
        key = TORCHVISION_KEYS[name]
        w, b = (np.asarray(state[f'{key}.{part}'], np.float32) for part in ('weight', 'bias'))
        want = expected[name]['kernel'].shape
        if name.startswith('conv'):
            _check_shape('torchvision', f'{key}.weight ({name})', w.shape,
                         (want[3], want[2], want[0], want[1]), 'OIHW')
            w = w.transpose(2, 3, 1, 0)
        else:
            _check_shape('torchvision', f'{key}.weight ({name})', w.shape, want[::-1], '(out, in)')
            w = w.T
        if name == 'fc6':  # Rows c*36 + h*6 + w (NCHW flatten) -> h*6*256 + w*256 + c (NHWC).
            c = params['conv5']['kernel'].shape[-1]
            side = int(round((w.shape[0] // c) ** 0.5))
            w = w.reshape(c, side, side, -1).transpose(1, 2, 0, 3).reshape(w.shape)
        _check_shape('torchvision', f'{key}.bias ({name})', b.shape, expected[name]['bias'].shape, 'out')
        params[name] = {'kernel': np.ascontiguousarray(w), 'bias': b}
    return params


def _num_classes(source: str, raw: dict) -> int:
    bias = raw['fc8'][1] if source == 'bvlc_npy' else raw[TORCHVISION_KEYS['fc8'] + '.bias']
    return int(np.asarray(bias).reshape(-1).shape[0])


def source_config(source: str, base, num_classes: int, input_path) -> ml_collections.ConfigDict:
    """`base` with the source's model fields and preprocessing (a copy; `base` is unchanged)."""
    config = ml_collections.ConfigDict(base.to_dict())  # Unlocked, no placeholders shared.
    m, d = config.model, config.data
    common = dict(num_classes=num_classes, activation='relu', width=1.0, batch_norm=False,
                  pool_window=3, pool_stride=2, dropout_rate=0.5, dtype='float32',
                  param_dtype='float32')
    if 'conv_scale' in m:
        common['conv_scale'] = (1.0,) * 5
    m.update(common)
    if source == 'bvlc_npy':
        m.update(dict(architecture='paper', groups=2, lrn=True, lrn_k=1.0, lrn_n=5, lrn_alpha=1e-4,
                      lrn_beta=0.75, lrn_convention='caffe'))
        d.update(dict(image_size=227, resize_size=256, mean_rgb=tuple(CAFFE_MEAN_BGR[::-1]),
                      stddev_rgb=(1.0, 1.0, 1.0)))
        notes = ('Caffe bvlc_alexnet: trained on BGR 0..255 images minus the ILSVRC-2012 mean; '
                 'conv1 input channels reversed at conversion, so the net takes RGB. Caffe warps '
                 'to 256x256 and subtracts the mean image (center-crop top-1 57.1%, top-5 80.2%); '
                 'here: shorter side 256 and the mean pixel.')
        channel_order = 'bgr'
    else:
        m.update(dict(architecture='torchvision', groups=1, lrn=False))
        d.update(dict(image_size=224, resize_size=256,
                      mean_rgb=tuple(255.0 * v for v in TORCHVISION_MEAN),
                      stddev_rgb=tuple(255.0 * v for v in TORCHVISION_STD)))
        notes = ('torchvision alexnet: Resize(256) (shorter side), CenterCrop(224), ImageNet '
                 'mean/std on [0, 1] pixels = mean_rgb/stddev_rgb on 0..255 (top-1 56.5%, top-5 79.1%).')
        channel_order = 'rgb'
    if 'eval_crops' in d:
        d.eval_crops = 'center'
    config.pretrained = ml_collections.ConfigDict(dict(
        source=source, input=str(pathlib.Path(input_path).resolve()),
        sha256=_sha256(input_path), source_channel_order=channel_order, channel_order='rgb',
        notes=notes))
    return config


def _sha256(path) -> str:
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


# --- writing the checkpoint --------------------------------------------------------------------

def write_pretrained(output_dir, config, params: dict, meta: dict) -> pathlib.Path:
    """Writes DIR's config and checkpoint step 0 atomically (temp dir next to DIR, renamed)."""
    out = pathlib.Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConvertError(f'--output={out} already exists and is not empty; remove it or choose '
                           'another directory.')
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{out.name}.tmp-', dir=out.parent))
    try:
        workdirs.write_config(config, tmp)
        with checkpoints.Checkpointer(str(tmp), config_fingerprint=checkpoints.config_fingerprint(config),
                                      keep=1, best_metric=None, async_save=False) as ckpt:
            ckpt.save(0, {'params': params}, meta)
        if out.exists():
            out.rmdir()  # Empty (checked above).
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# --- the conversion -----------------------------------------------------------------------------

def convert(source: str, input_path, output_dir, base_config=None) -> pathlib.Path:
    """Reads `input_path`, checks every layer, writes DIR; raises ConvertError on a bad input."""
    if source not in SOURCES:
        raise ConvertError(f'--from={source!r} is not one of {list(SOURCES)}.')
    raw = read_bvlc_npy(input_path) if source == 'bvlc_npy' else read_torchvision(input_path)
    base = default_config() if base_config is None else base_config
    config = source_config(source, base, _num_classes(source, raw), input_path)
    validation.validate_config(config)
    params = (bvlc_params if source == 'bvlc_npy' else torchvision_params)(raw, config)
    meta = {'source': source, 'input': config.pretrained.input, 'sha256': config.pretrained.sha256}
    return write_pretrained(output_dir, config, params, meta)


def default_config():
    """configs/alexnet.py's paper config (the base a conversion overrides)."""
    return cli.load_config_file(str(DEFAULT_CONFIG))


def define_flags() -> None:
    flags.DEFINE_enum('from', None, list(SOURCES), 'Format of --input.')
    flags.DEFINE_string('input', None, 'bvlc_alexnet.npy, or a torchvision alexnet .pth / .npz.')
    flags.DEFINE_string('output', None, 'Directory to create (must not exist, or be empty).')
    cli.define_config_flag(default=str(DEFAULT_CONFIG))  # Base config; model/data get overridden.


@cli.one_line_errors
def main(argv):
    del argv
    FLAGS = flags.FLAGS  # pylint: disable=invalid-name
    for name in ('from', 'input', 'output'):
        if not FLAGS[name].value:
            cli.fail(f'--{name} is required: python -m alexnet_jax.tools.convert '
                     '--from=bvlc_npy|torchvision --input=FILE --output=DIR')
    base = cli.validated_config()
    out = convert(FLAGS['from'].value, cli.local_path(FLAGS.input, '--input'),
                  cli.local_path(FLAGS.output, '--output'), base)
    print(f'Wrote {out} (its config + checkpoint step 0); load it with '
          f'alexnet_jax.evaluation.load({str(out)!r}).')


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
