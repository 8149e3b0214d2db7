"""Evaluation: top-k over every example of a split, the paper's 10 crops, padding masked; the
one eval step of training and of the evaluate tool.
"""

import functools
from typing import Any, Callable

from flax import struct
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data import preprocess
from alexnet_jax import parallel
from alexnet_jax import seeds as seeds_lib
from alexnet_jax.parallel import AXIS


class EvalState(struct.PyTreeNode):
    """What `eval_step` reads of a state: a training state has these fields too."""
    apply_fn: Callable = struct.field(pytree_node=False)
    params: Any = None
    batch_stats: Any = None


def topk_correct(scores, labels, k: int):
    """1.0 where `labels` is among the k highest `scores` (k clipped to the number of classes)."""
    k = min(k, scores.shape[-1])
    _, top = lax.top_k(scores, k)
    return jnp.any(top == labels[..., None], axis=-1).astype(jnp.float32)


def eval_step(state, batch, *, mean, std, crop_size, per_example: bool = False):
    """Sums of loss / top-1 / top-5 over the real (mask=True) examples of all devices; for
    the paper's 10-crop test (squares cut here, or crops) the softmax is averaged over crops.
    per_example: also this device's top-1 hits, int8 per example (-1 where padded), so a test
    error's interval can resample the test images (tools/stats.py)."""
    images = preprocess.normalize_batch(
        {'image': preprocess.eval_images(batch, crop_size)}, mean, std)
    n, crops = images.shape[0], (images.shape[1] if images.ndim == 5 else 1)
    logits = state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats},
                            images.reshape((n * crops,) + images.shape[-3:]), train=False)
    probs = jax.nn.softmax(logits).reshape(n, crops, -1).mean(axis=1)
    labels, mask = batch['label'], batch['mask'].astype(jnp.float32)
    nll = -jnp.log(jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0] + 1e-12)
    sums = {
        'loss': nll * mask,
        'top1': topk_correct(probs, labels, 1) * mask,
        'top5': topk_correct(probs, labels, 5) * mask,
        'count': mask,
    }
    totals = lax.psum(jax.tree.map(jnp.sum, sums), AXIS)
    if not per_example:
        return totals
    return totals, jnp.where(mask > 0, sums['top1'], -1.0).astype(jnp.int8)


def make_eval_step(mean, std, crop_size, devices=None, seeds: int = 0, per_example=False):
    """`eval_step` pmapped over AXIS with the data's normalisation (`preprocess.mean_std`) and
    the net's input size (config.data.image_size: the 10 crops' size). `seeds` > 0: for a state
    with a leading axis of that many seeds (the training loop's), the sums get one too, the
    seeds evaluated as the loop steps them (`seeds.over_seeds`). per_example: see eval_step."""
    step = functools.partial(eval_step, mean=mean, std=std, crop_size=crop_size,
                             per_example=per_example)
    if seeds:
        step = seeds_lib.over_seeds(step, 'vmap' if seeds > 1 else 'single')
    return jax.pmap(step, axis_name=AXIS, devices=devices)


def _totals(p_eval_step, state, config, split: str) -> dict:
    """Means over the split; with a per-example step also 'correct': the top-1 hits in the
    split's order, [seeds, examples] (or [examples]) bool, padding dropped."""
    from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
    totals, hits = None, []
    for batch in input_pipeline.eval_iterator(config, split):
        sums = p_eval_step(state, batch)
        if isinstance(sums, tuple):
            sums, each = sums
            hits.append(each)  # [devices, (seeds,) per_device]; fetched once, at the end.
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.tree.map(lambda x: np.asarray(x, np.float64), parallel.unreplicate(totals))
    count = np.maximum(totals.pop('count'), 1.0)
    means = {k: v / count for k, v in totals.items()}
    if hits:
        each = np.concatenate([np.moveaxis(np.asarray(h), 0, -2).reshape(
            np.shape(h)[1:-1] + (-1,)) for h in hits], axis=-1)  # Device-major = batch order.
        means['correct'] = each[..., each.reshape(-1, each.shape[-1])[0] >= 0] > 0
    return means


def evaluate(p_eval_step, state, config, split: str) -> dict:
    """Loss, top-1 and top-5 over every example of `split` (all hosts, padding masked)."""
    return {k: float(v) for k, v in _totals(p_eval_step, state, config, split).items()}


def evaluate_seeds(p_eval_step, state, config, split: str) -> list:
    """`evaluate` of each seed of a state with a seed axis, in one pass over the split (with a
    per-example step, each seed's 'correct' too: bool [examples])."""
    means = _totals(p_eval_step, state, config, split)
    return [{k: (v[i] if k == 'correct' else float(v[i])) for k, v in means.items()}
            for i in range(len(means['loss']))]
