"""What shows whether an ablation's switch acted, measured on the first evaluation batch.

Per layer: the share of its units (channels) ever active (output > 0 somewhere in the batch; a
ReLU unit that never is, is dead) and the activation scale (root mean square of its output).
Per LRN layer: its divisor (k + alpha' sum a^2)^beta at the 1st, 50th and 99th percentiles, the
99th relative to k^beta and the spread p99 / p1. LRN normalises only as far as its divisor
varies: a run whose spread stays within INACTIVE_LRN of 1 divided every activation by about the
same number (k^beta, or a uniformly raised divisor), a constant rescale, and an "LRN on vs off"
verdict there says nothing about normalisation. A matched control's constant divisor
(models.lrn_layer) is reported as `<lrn>/constant`.

One forward pass per seed, at the start of a fresh run and at its end; the loop writes them to
metrics record (split 'diagnostics') and its results.
"""

import functools

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data import preprocess

INACTIVE_LRN = 0.01  # A divisor spread p99 / p1 within 1% of 1: LRN inactive (a constant rescale).
PERCENTILES = (1, 50, 99)


def first_eval_images(config, mean, std) -> np.ndarray:
    """The first batch of config.data.eval_split as the net sees it (padding dropped; of the
    paper's 10 crops the center one), float32 [n, H, W, C] on the host."""
    from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
    config = config.copy_and_resolve_references()
    config.data.cache = 'never'  # One batch: a cache filled part-way is dropped with a warning.
    batch = next(input_pipeline.eval_iterator(config, config.data.eval_split))
    flat = {k: np.reshape(v, (-1,) + np.shape(v)[2:]) for k, v in batch.items()}
    keep = flat['mask'].astype(bool)
    images = preprocess.eval_images({'image': flat['image'][keep]}, config.data.image_size)
    if images.ndim == 5:
        images = images[:, 0]
    return np.asarray(preprocess.normalize_batch({'image': images}, mean, std))


@functools.partial(jax.jit, static_argnums=(0,))
def _measure(apply_fn, variables, images):
    _, state = apply_fn(variables, images, train=False, mutable=['intermediates'])
    out = {}
    for path, (value,) in traverse_util.flatten_dict(state['intermediates']).items():
        name, a = path[-1], value.astype(jnp.float32)
        if name.endswith('_divisor'):  # An LRN layer's (models.lrn_layer).
            q = jnp.percentile(a, jnp.asarray(PERCENTILES, jnp.float32))
            out.update({f'{name[:-len("_divisor")]}/divisor_p{p}': q[i]
                        for i, p in enumerate(PERCENTILES)})
        elif name.endswith('_constant'):  # A matched control's divisor.
            out[f'{name[:-len("_constant")]}/constant'] = a
        elif name.endswith('_out') and name.startswith(('conv', 'fc')):
            layer = name[:-len('_out')]
            out[f'{layer}/active'] = jnp.mean(jnp.any(a.reshape(-1, a.shape[-1]) > 0, axis=0))
            out[f'{layer}/rms'] = jnp.sqrt(jnp.mean(jnp.square(a)))
    return out


def measure(apply_fn, params, batch_stats, images, model_config) -> dict:
    """{'<layer>/active', '<layer>/rms', '<lrn>/divisor_p1|p50|p99', '<lrn>/p99_over_k_beta',
    '<lrn>/spread'} of one seed's weights (host trees) on `images` ('<lrn>/constant' for a
    matched control)."""
    variables = {'params': params, 'batch_stats': batch_stats or {}}
    out = {k: float(v) for k, v in _measure(apply_fn, variables, jnp.asarray(images)).items()}
    k_beta = float(model_config.lrn_k) ** float(model_config.lrn_beta)
    for key in [k for k in out if k.endswith('/divisor_p99')]:
        out[key.replace('/divisor_p99', '/p99_over_k_beta')] = out[key] / k_beta
        out[key.replace('/divisor_p99', '/spread')] = out[key] / out[key.replace('p99', 'p1')]
    return out


def summary(stats: dict) -> str:
    """`measure`'s numbers as one short log line: each LRN layer's p99 divisor over k^beta and
    its spread, the layer with the fewest units ever active (all of them go to the metrics record)."""
    parts = []
    for key, value in stats.items():
        if key.endswith('/p99_over_k_beta'):
            spread = stats.get(key.replace('p99_over_k_beta', 'spread'))
            parts.append(f'{key.split("/")[0].upper()} divisor p99 {value:.2f}x k^beta'
                         + ('' if spread is None else f', spread p99/p1 {spread:.2f}'))
    active = {k.split('/')[0]: v for k, v in stats.items() if k.endswith('/active')}
    if active:
        fewest = min(active, key=active.get)
        parts.append(f'fewest units ever active: {fewest} {100 * active[fewest]:.0f}%')
    return '; '.join(parts)


def photo_crops(size: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` random size x size crops (uint8 [count, size, size, 3]) of scikit-learn's two
    sample photographs (china.jpg, flower.jpg; shipped with it, no download): real-photo input
    to measure a net's LRN at init on, where ImageNet is not at hand."""
    from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y, x = (int(rng.integers(0, photo.shape[a] - size + 1)) for a in (0, 1))
        crops.append(photo[y:y + size, x:x + size])
    return np.stack(crops)


def lrn_inactive(stats: dict) -> bool:
    """True if every LRN layer's divisor spread p99 / p1 stayed within INACTIVE_LRN of 1 (and
    there is at least one measured LRN layer). Older records without the spread: p99 / k^beta."""
    rel = [v for k, v in stats.items() if k.endswith('/spread')] or [
        v for k, v in stats.items() if k.endswith('/p99_over_k_beta')]
    return bool(rel) and all(v < 1 + INACTIVE_LRN for v in rel)
