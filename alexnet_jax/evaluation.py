"""Evaluation, the one module for it: top-k over every example of a split, the paper's 10
crops, padding masked. The eval step of training, the checkpoint loader of every tool
(`load`), and the evaluation of a checkpoint (`evaluate_checkpoint`: the evaluate tool's and
config.eval_only's, `eval_only`).
"""

import functools
import time
from typing import Any, Callable

from flax import struct
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import checkpoints
from alexnet_jax import errors
from alexnet_jax import models
from alexnet_jax.data import preprocess
from alexnet_jax import parallel
from alexnet_jax import records
from alexnet_jax import seeds as seeds_lib
from alexnet_jax import validation
from alexnet_jax import workdirs
from alexnet_jax.parallel import AXIS

CROPS = {'center': ('center',), 'ten': ('ten',), 'both': ('center', 'ten')}


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


def eval_step(state, batch, *, mean, std, crop_size, per_example: bool = False,
              mirror: bool = True, axis_name=AXIS):
    """Sums of loss / top-1 / top-5 over the real (mask=True) examples of all devices; for
    the paper's 10-crop test (squares cut here, or crops) the softmax is averaged over crops
    (the 5 unmirrored ones when not `mirror`: data trained without flips).
    per_example: also this device's top-1 hits, int8 per example (-1 where padded), so a test
    error's interval can resample the test images (tools/stats.py). axis_name=None: in jit's
    global view (columns.py), where the sums are over all devices already."""
    images = preprocess.normalize_batch(
        {'image': preprocess.eval_images(batch, crop_size, mirror)}, mean, std)
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
    totals = jax.tree.map(jnp.sum, sums)
    totals = lax.psum(totals, axis_name) if axis_name else totals
    if not per_example:
        return totals
    return totals, jnp.where(mask > 0, sums['top1'], -1.0).astype(jnp.int8)


def make_eval_step(mean, std, crop_size, devices=None, seeds: int = 0, per_example=False,
                   mirror: bool = True):
    """`eval_step` pmapped over AXIS with the data's normalisation (`preprocess.mean_std`) and
    the net's input size (config.data.image_size: the 10 crops' size). `seeds` > 0: for a state
    with a leading axis of that many seeds (the training loop's), the sums get one too, the
    seeds evaluated as the loop steps them (`seeds.over_seeds`). per_example, mirror (the
    config's data.random_flip): see eval_step."""
    step = functools.partial(eval_step, mean=mean, std=std, crop_size=crop_size,
                             per_example=per_example, mirror=mirror)
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


# -- a checkpoint: a converted one (tools/convert.py) or a training workdir -----------------------

def load(checkpoint):
    """(config, model, {'params'[, 'batch_stats']}) of DIR's latest step; DIR's own config
    defines the net and its preprocessing."""
    config, variables = checkpoints.load_variables(checkpoint)
    return config, models.create_model(config.model), variables


def with_data_from(config, data_config):
    """`config` with `data_config`'s data source but `config`'s preprocessing (a copy)."""
    config = config.copy_and_resolve_references()
    for key, value in data_config.items():
        if key not in preprocess.PREPROCESSING:
            config.data[key] = value
    return config


def evaluate_checkpoint(checkpoint, run_config=None, *, split: str | None = None,
                        crops: str = 'both', eval_batch_size: int | None = None,
                        output=None) -> dict:
    """Evaluates DIR on `split` (default: the data's test_split) with the center crop and/or
    the 10 crops, on DIR's data or `run_config`'s data source and eval batch size; writes the
    results (`workdirs.eval_results_path`), prints a table, returns them."""
    from alexnet_jax.data import sources  # pylint: disable=import-outside-toplevel  (TF)
    if crops not in CROPS:
        raise errors.InputError(f'--crops={crops!r} is not one of {list(CROPS)}.')
    config, model, variables = load(checkpoint)
    state = EvalState(apply_fn=model.apply, params=variables['params'],
                      batch_stats=variables.get('batch_stats', {}))
    config = with_data_from(config, (config if run_config is None else run_config).data)
    if run_config is not None and 'eval_batch_size' in run_config.get('train', {}):
        config.train.eval_batch_size = run_config.train.eval_batch_size
    if eval_batch_size:
        config.train.eval_batch_size = eval_batch_size
    validation.validate_config(config)
    split = split or config.data.test_split
    source = sources.get_source(config.data)
    validation.check_classes(config, source.num_classes,
                             f'{checkpoint} predicts those: evaluate on data with the same '
                             'classes (fine-tune with config.init_from for new ones)')
    results = {
        'checkpoint': str(checkpoint),
        'data': config.data.name,
        'split': split,
        'num_examples': int(source.num_examples(split)),
        'image_size': config.data.image_size,
    }
    if config.data.name == 'folder':
        results['folder_root'] = config.data.folder_root
    if config.data.get('mean_image', False):  # The training split's mean image, as trained.
        from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
        data_facts = input_pipeline.facts(config)
        mean_std = (data_facts.mean, data_facts.std)
    else:
        mean_std = preprocess.mean_std(config.data, source.channels)
    p_eval_step = make_eval_step(*mean_std, config.data.image_size,
                                 mirror=config.data.random_flip)
    state = parallel.replicate(state)
    for mode in CROPS[crops]:
        mode_config = config.copy_and_resolve_references()
        mode_config.data.eval_crops = mode
        t0 = time.time()
        results[mode] = evaluate(p_eval_step, state, mode_config, split)
        results[mode]['seconds'] = time.time() - t0
    path = workdirs.eval_results_path(checkpoint, output)
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        records.write(path, results, indent=2)
        print(table(results) + f'\nWrote {path}.')
    return results


def table(results: dict) -> str:
    lines = [f'{results["checkpoint"]} on {results["data"]} {results["split"]!r} '
             f'({results["num_examples"]} examples, {results["image_size"]}px crops)',
             f'{"crops":<8}{"top-1":>8}{"top-5":>8}{"err-1":>8}{"err-5":>8}{"loss":>8}']
    for mode in CROPS['both']:
        if mode in results:
            r = results[mode]
            lines.append(f'{mode:<8}{r["top1"]:>8.2%}{r["top5"]:>8.2%}{1 - r["top1"]:>8.2%}'
                         f'{1 - r["top5"]:>8.2%}{r["loss"]:>8.4f}')
    return '\n'.join(lines)


def eval_only(config, workdir: str) -> dict:
    """config.eval_only: evaluates the workdir's latest checkpoint, or else config.init_from,
    on config.data.test_split with config.data.eval_crops, into the workdir's eval record.
    Several seeds: each WORKDIR/seed<k>, as training laid them out ({seed: results})."""
    if config.get('num_seeds', 1) > 1:
        return {s: eval_only(seeds_lib.seed_config(config, s), str(workdirs.seed_dir(workdir, s)))
                for s in seeds_lib.seed_list(config)}
    checkpoint = workdir if workdirs.has_checkpoint(workdir) else config.get('init_from')
    validation.check(bool(checkpoint), 'eval_only',
                     f'{workdir} has no checkpoint to evaluate and config.init_from is not set; '
                     f'train there first or set --config.init_from=DIR.')
    return evaluate_checkpoint(checkpoint, config, split=config.data.test_split,
                               crops=config.data.eval_crops,
                               output=workdirs.eval_results_path(workdir))
