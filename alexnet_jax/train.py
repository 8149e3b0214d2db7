"""Training and evaluation loop: `train_and_evaluate(config, workdir)`, after flax's imagenet.

Data parallel with `jax.pmap` over every device of every host (axis `parallel.AXIS`): the state
is replicated, each device takes its slice of the global batch, gradients, batch statistics and
metrics are averaged across devices inside the step. Side jobs (log, eval, checkpoint, plot)
each run at their own interval; the host waits for the devices only there.

Resuming is exact: the state (params, optimizer state, step) and the plateau tracker come from
the latest checkpoint, the data iterator restarts at that step, and the dropout key of step s
on device d is fold_in(fold_in(key(seed), s), d), a function of the step alone. The learning
rate is the configured one (`configured_learning_rate`); what else may change on resume is
checkpoints.RESUME_FIXED's rule. Process 0 locks the workdir for the run.
"""

import functools
import math
import os
import time
from typing import Any

from absl import logging
import flax.linen as nn
from flax.training import dynamic_scale as dynamic_scale_lib
from flax.training import train_state
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax import checkpoints
from alexnet_jax.data import device_data
from alexnet_jax import errors
from alexnet_jax import evaluation
from alexnet_jax import finetune
from alexnet_jax.data import input_pipeline
from alexnet_jax import metrics as metrics_lib
from alexnet_jax import models
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import preemption
from alexnet_jax.data import preprocess
from alexnet_jax import validation
from alexnet_jax.parallel import AXIS


class TrainState(train_state.TrainState):
    batch_stats: Any = None  # {} unless config.model.batch_norm.
    # flax's DynamicScale when config.optim.loss_scale='dynamic' (fp16), else None. In the state,
    # so the scale is checkpointed and a resumed run continues with it.
    dynamic_scale: Any = None


class NonFiniteLossError(errors.UserError, FloatingPointError):
    """The training loss became NaN or inf; the last checkpoint written is the last good one."""


def create_train_state(rng, model: nn.Module, tx: optax.GradientTransformation,
                       image_shape, dynamic_scale=None) -> TrainState:
    """Initialises parameters (and batch statistics) on the host, unreplicated.

    One jitted program makes the parameters and the optimizer state: run eagerly, the
    optimizer's zeros would compile a small program per parameter shape, every run."""
    def init(rng):
        variables = model.init(rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32),
                               train=False)
        return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                                 batch_stats=variables.get('batch_stats', {}))
    state = jax.tree.map(np.asarray, jax.jit(init)(rng))
    if dynamic_scale is not None:
        dynamic_scale = dynamic_scale.replace(
            fin_steps=np.asarray(dynamic_scale.fin_steps, np.int32),
            scale=np.asarray(dynamic_scale.scale, np.float32))
    # Host numpy leaves with fixed dtypes (step=0 is a Python int, the lr a weakly typed
    # scalar): the step's second call would otherwise see new types and compile again.
    return state.replace(step=np.zeros((), np.int32), dynamic_scale=dynamic_scale)


MIN_LOSS_SCALE = 1.0  # An overflow at this scale is a real inf/NaN: the loop stops on it.


def create_dynamic_scale(o):
    """Dynamic loss scaling for config.optim (fp16), or None when `loss_scale` is not set.

    The loss is multiplied by `scale` before the backward pass and the gradients divided by it
    after (then pmean'd, so every device sees the same gradients). A step whose gradients are
    not all finite is skipped (params, optimizer state and batch statistics kept) and the scale
    halved; after `loss_scale_growth_interval` finite steps in a row it doubles.
    """
    if o.get('loss_scale') is None:
        return None
    return dynamic_scale_lib.DynamicScale(
        growth_factor=2.0, backoff_factor=0.5, growth_interval=int(o.loss_scale_growth_interval),
        scale=float(o.loss_scale_init), minimum_scale=MIN_LOSS_SCALE)


def initial_state(config, info, steps_per_epoch: int, num_steps: int):
    """(fresh host state, dropout key), both from config.seed."""
    model = models.create_model(config.model)
    tx = optim.create_optimizer(config.optim, steps_per_epoch, num_steps,
                                freeze=config.get('freeze', ()))
    params_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    return create_train_state(params_key, model, tx, info.image_shape,
                              create_dynamic_scale(config.optim)), dropout_key


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def dropout_rng(key, step):
    """This device's dropout key for `step`: every device and every step draws its own masks."""
    return jax.random.fold_in(jax.random.fold_in(key, step), lax.axis_index(AXIS))


def train_step(state: TrainState, batch, *, dropout_key, mean, std):
    """One SGD step on this device's slice of the batch; runs under pmap over AXIS.

    batch: uint8 'image' (+ 'lighting'), 'label'; `preprocess.normalize_batch` with the data's
    per-channel `mean`/`std` makes the model input on the device.
    """
    images = preprocess.normalize_batch(batch, mean, std)
    rng = dropout_rng(dropout_key, state.step)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
            rngs={'dropout': rng}, mutable=['batch_stats'])
        return cross_entropy(logits, batch['label']).mean(), (logits, updates)

    scaler = state.dynamic_scale
    if scaler is None:
        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        grads = lax.pmean(grads, AXIS)
    else:  # Scaled loss; grads unscaled and pmean'd inside, so all devices agree on `finite`.
        scaler, finite, (loss, (logits, updates)), grads = scaler.value_and_grad(
            loss_fn, has_aux=True, axis_name=AXIS)(state.params)
    new_state = state.apply_gradients(
        grads=grads, batch_stats=lax.pmean(updates.get('batch_stats', {}), AXIS))
    metrics = {
        'loss': loss,
        'top1': evaluation.topk_correct(logits, batch['label'], 1).mean(),
        'top5': evaluation.topk_correct(logits, batch['label'], 5).mean(),
    }
    metrics = lax.pmean(metrics, AXIS)
    if scaler is not None:  # Overflow: keep the old params, optimizer state and statistics.
        keep = functools.partial(jax.tree.map, functools.partial(jnp.where, finite))
        new_state = new_state.replace(
            params=keep(new_state.params, state.params),
            opt_state=keep(new_state.opt_state, state.opt_state),
            batch_stats=keep(new_state.batch_stats, state.batch_stats), dynamic_scale=scaler)
        metrics['loss_scale'] = state.dynamic_scale.scale  # The scale this step used.
        metrics['skipped'] = 1.0 - finite.astype(jnp.float32)
    metrics['lr'] = optim.learning_rate(new_state.opt_state)  # The rate this step used.
    return new_state, metrics


def make_train_step(dropout_key, devices=None, donate_state: bool = False, *, mean, std):
    """`train_step` pmapped over AXIS, as the loop runs it; the benchmarks time this very function.

    The state is not donated by default: with pmap's per-device leading axis, XLA (jax 0.10)
    keeps the old params/momentum alive next to the aliased outputs by copying every donated
    buffer at the start of the step (see benchmarks/RESULTS.md: ~3 x the state in memory
    traffic per step, no memory saved, since the copies are as large as the state).
    The dropout key is an argument of the compiled step, not a constant in it, so another seed
    runs the same program (from the compilation cache).
    """
    step = jax.pmap(lambda state, batch, key: train_step(state, batch, dropout_key=key,
                                                         mean=mean, std=std),
                    axis_name=AXIS, in_axes=(0, 0, None),
                    donate_argnums=(0,) if donate_state else (), devices=devices)
    return lambda state, batch: step(state, batch, dropout_key)


def device_train_step(state: TrainState, keys, data, *, spec, mean, std):
    """`train_step` on the batch gathered and augmented on the device (device_data.py).

    keys: {'dropout', 'data'}, the run's keys (arguments, not constants: a vectorised run
    passes one per seed); data: the device-resident set (`device_data.place`).
    """
    batch = device_data.train_batch(data, keys['data'], state.step, spec)
    return train_step(state, batch, dropout_key=keys['dropout'], mean=mean, std=std)


SEED_MODES = ('vmap', 'map')


def make_device_train_step(spec, mean, std, seeds: str | None = None, devices=None):
    """`device_train_step` pmapped: (state, keys, data) -> (state, metrics), one dispatch a step.

    seeds='vmap': state, keys and metrics carry a leading seed axis and the seeds train as one
    batched program (jax.vmap); 'map': the same signature, seeds one after another inside the
    step (lax.map: one program, one compile, unbatched convolutions). The data set is shared.
    """
    fn = functools.partial(device_train_step, spec=spec, mean=mean, std=std)
    if seeds == 'vmap':
        fn = jax.vmap(fn, in_axes=(0, 0, None))
    elif seeds == 'map':
        one = fn
        fn = lambda state, keys, data: lax.map(lambda sk: one(*sk, data), (state, keys))  # noqa: E731
    elif seeds is not None:
        raise ValueError(f'seeds={seeds!r}: one of {SEED_MODES} or None.')
    return jax.pmap(fn, axis_name=AXIS, devices=devices)


def device_step_inputs(config, info, keys, devices=None):
    """(pmapped device step, replicated keys, placed data) for config; keys as in
    `device_train_step`, with a leading seed axis when config.num_seeds > 1."""
    mean, std = preprocess.mean_std(config.data, info.image_shape[-1])
    seeds = seeds_mode(config) if config.get('num_seeds', 1) > 1 else None
    step = make_device_train_step(device_data.make_spec(config), tuple(mean.tolist()),
                                  tuple(std.tolist()), seeds,
                                  devices)
    data = device_data.place(device_data.load(config), devices)
    return step, parallel.replicate(keys, devices), data


def seeds_mode(config) -> str:
    """config.seeds_mode, with 'auto' -> the faster on this backend (benchmarks/RESULTS.md)."""
    mode = config.get('seeds_mode', 'auto')
    if mode != 'auto':
        return mode
    if jax.default_backend() in ('gpu', 'tpu'):
        return 'vmap'
    # XLA:CPU runs seeds stepped inside one program ~5x slower than one after another (batched
    # kernels become grouped convolutions; lax.map's loop body loses the fast conv path), and
    # one run does not keep 2 cores busy: runs side by side in processes, one per core.
    several = processes_supported() and len(os.sched_getaffinity(0)) > 1
    return 'processes' if several else 'sequential'


def processes_supported() -> bool:
    """seeds_mode='processes' pins workers to cores (Linux) and runs them beside one process."""
    return hasattr(os, 'sched_setaffinity') and jax.process_count() == 1


def step_runner(config, info, dropout_key, start_step: int):
    """state -> (state, metrics) of the next step: device-resident data or tf.data batches."""
    if device_data.enabled(config, info):
        keys = {'dropout': dropout_key, 'data': device_data.data_key(config.seed)}
        step, keys, data = device_step_inputs(config, info, keys)
        logging.info('Training data on the device (%s).', config.data.train_split)
        return lambda state: step(state, keys, data)
    mean, std = preprocess.mean_std(config.data, info.image_shape[-1])
    p_train_step = make_train_step(dropout_key, mean=mean, std=std)
    batches = parallel.prefetch_to_device(
        input_pipeline.train_iterator(config, start_step=start_step))
    return lambda state: p_train_step(state, next(batches))




def num_train_steps(config) -> tuple[int, int]:
    """(total steps, steps per epoch)."""
    steps_per_epoch = input_pipeline.steps_per_epoch(config)
    if config.train.num_steps is not None:
        return int(config.train.num_steps), steps_per_epoch
    return int(math.ceil(config.train.num_epochs * steps_per_epoch)), steps_per_epoch


def _at(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (or resumes) one seed in `workdir`, evaluates on the test split; returns
    results.json's dict.

    `config` must be validated (validation.validate_config): launch.py and tools/sweep.py do
    it once, at the entry point. config.init_from: a fresh run starts from those weights
    (finetune.py); config.freeze: those layers stay fixed (optim.py). Several seeds
    (config.num_seeds > 1) train through seeds.train_seeds, evaluation alone
    (config.eval_only) through tools/evaluate.eval_only: launch.py routes both.
    """
    validation.check(config.get('num_seeds', 1) == 1, 'num_seeds',
                     f'{config.num_seeds} seeds train through seeds.train_seeds '
                     '(launch.py routes them); train_and_evaluate trains one.')
    config = finetune.resolve_config(config)  # init_from: its net and preprocessing.
    info = input_pipeline.get_info(config)
    validation.check(config.model.num_classes == info.num_classes, 'model.num_classes',
                     f'{config.model.num_classes} != {info.num_classes} classes in '
                     f'{config.data.name!r}; set --config.model.num_classes={info.num_classes}.')
    check_batch_fits(config, info)
    num_steps, steps_per_epoch = num_train_steps(config)
    t = config.train
    eval_every = steps_per_epoch if t.eval_every_steps is None else t.eval_every_steps

    state, dropout_key = initial_state(config, info, steps_per_epoch, num_steps)
    lock = checkpoints.lock_workdir(workdir)  # A second run on this workdir stops here.
    ckpt = recorder = None
    try:
        ckpt = checkpoints.Checkpointer(
            workdir, config_fingerprint=checkpoints.config_fingerprint(config),
            keep=t.keep_checkpoints, best_metric='val_top1', async_save=t.async_checkpoints)
        meta = {}
        restored = ckpt.restore(state)
        if restored is not None:
            state, meta = restored
            checkpoints.check_resume(meta, config, workdir)
            logging.info('Resumed from step %d of %s.', int(state.step), workdir)
        elif config.get('init_from'):  # Only a fresh run: a resumed one has its own weights.
            state = finetune.load_into(state, config.init_from)
        plateau = optim.Plateau.from_config(config.optim, meta.get('plateau'))
        state = configured_learning_rate(state, config.optim, plateau)
        # Only now, when the workdir is known to fit this config, is anything written to it:
        # a refused rerun leaves no config.json and no TensorBoard file behind.
        checkpoints.write_config(config, workdir)
        recorder = metrics_lib.Recorder(workdir, num_steps=num_steps,
                                        steps_per_epoch=steps_per_epoch,
                                        batch_size=t.batch_size, plot=t.plot)
        start_step = int(state.step)
        last_saved = start_step if restored is not None else None
        best_top1 = meta.get('best_val_top1', -math.inf)
        elapsed = meta.get('elapsed', 0.0)
        state = parallel.replicate(state)

        mean, std = preprocess.mean_std(config.data, info.image_shape[-1])
        p_eval_step = evaluation.make_eval_step(mean, std, config.data.image_size)

        def save(step, val=None):
            nonlocal last_saved
            meta = {'plateau': plateau.state(), 'elapsed': elapsed + time.time() - t0,
                    'best_val_top1': best_top1, 'fixed': checkpoints.resume_fixed(config),
                    'topology': checkpoints.topology()}
            ckpt.save(step, parallel.unreplicate(state), meta,
                      metrics=None if val is None else {'val_top1': val['top1']})
            last_saved = step

        t0 = time.time()
        val = None
        if start_step < num_steps:
            logging.info('Training steps %d..%d (%d per epoch).', start_step + 1, num_steps,
                         steps_per_epoch)
            run_step = step_runner(config, info, dropout_key, start_step)
            pending = []  # Device metrics since the last log; fetched only at log time.
            with preemption.PreemptionGuard() as guard:
                for step in range(start_step + 1, num_steps + 1):
                    state, step_metrics = run_step(state)
                    pending.append(step_metrics)
                    stop = guard.should_stop(step, t.log_every_steps)
                    is_eval = _at(step, eval_every, num_steps)
                    is_ckpt = _at(step, t.checkpoint_every_steps, num_steps) or stop
                    if _at(step, t.log_every_steps, num_steps) or is_ckpt or is_eval:
                        # Raises on NaN/inf, before an evaluation or a save.
                        log_train(recorder, step, pending, last_saved=last_saved)
                        pending = []
                    improved = False
                    if is_eval:
                        val = evaluation.evaluate(p_eval_step, state, config,
                                                  config.data.eval_split)
                        recorder.write(step, 'val', val)
                        state = update_plateau(plateau, state, val, config.optim, step)
                        improved = val['top1'] > best_top1
                        best_top1 = max(best_top1, val['top1'])
                    if is_ckpt or improved:  # Every new best is saved: keep-best ranks it.
                        save(step, val if is_eval else None)
                    if stop:
                        logging.warning('Preempted: saved step %d; rerun to resume.', step)
                        return {'preempted_at_step': step}
        ckpt.wait()
        elapsed += time.time() - t0
        return final_results(p_eval_step, state, config, val, num_steps, elapsed, recorder)
    finally:
        if ckpt is not None:
            ckpt.close()  # Waits for an async save in flight, even when stopping on NaN.
        if recorder is not None:
            recorder.close()
        lock.release()


def check_batch_fits(config, info) -> None:
    """A training batch larger than the training split would train 0 steps: refused up front."""
    d, batch = config.data, config.train.batch_size
    n = info.num_examples[d.train_split]
    validation.check(batch <= n, 'train.batch_size',
                     f'{batch} is larger than the {n} examples of split {d.train_split!r} of '
                     f'{d.name!r}; set --config.train.batch_size to at most {n}.')


def configured_learning_rate(state, o, plateau):
    """A restored state's learning rate for 'plateau' and 'constant', whose rate lives in the
    optimizer state: the configured base rate times the plateau reductions already taken, so
    a rerun with a new config.optim.learning_rate uses it (logged). Other schedules recompute
    the rate from the config at every step anyway."""
    if o.schedule not in ('plateau', 'constant'):
        return state
    old = np.asarray(optim.learning_rate(state.opt_state))
    new = o.learning_rate * (plateau.scale if o.schedule == 'plateau' else 1.0)
    if np.isclose(old, new, rtol=1e-6, atol=0):
        return state
    logging.warning('Learning rate %g in the checkpoint -> %g (config.optim.learning_rate=%g%s).',
                    float(old), new, o.learning_rate,
                    f' x {plateau.scale:g} for {plateau.reductions} plateau reduction(s)'
                    if o.schedule == 'plateau' and plateau.reductions else '')
    return state.replace(opt_state=optim.set_learning_rate(state.opt_state,
                                                           np.asarray(new, old.dtype)))


def log_train(recorder, step: int, pending: list, last_saved: int | None = None) -> None:
    """Averages the steps' device metrics, stops on a non-finite loss, writes them.

    With dynamic loss scaling a step that overflowed was skipped (nothing updated, the scale
    lowered): it is not an error unless its scale was already at MIN_LOSS_SCALE, and it is left
    out of the averages (its loss may be inf); `skipped_steps` counts such steps.
    """
    stacked = jax.tree.map(lambda *x: np.stack(x), *parallel.unreplicate(pending))
    losses = np.asarray(stacked['loss'])
    ok = np.isfinite(losses)
    if 'skipped' in stacked:
        skipped = np.asarray(stacked.pop('skipped')) > 0
        ok = np.where(skipped, np.asarray(stacked['loss_scale']) > MIN_LOSS_SCALE, ok)
        used = ~skipped if not skipped.all() else np.ones_like(skipped)  # Steps averaged.
        stacked = {k: (v if k == 'loss_scale' else v[used]) for k, v in stacked.items()}
        stacked['skipped_steps'] = np.array([skipped.sum()], np.float32)
        stacked['loss_scale'] = stacked['loss_scale'][-1:]  # The latest scale.
    if not np.all(ok):
        bad = step - len(losses) + 1 + int(np.argmin(ok))
        loss = losses[~ok][0]
        what = (f'loss is {loss}' if not np.isfinite(loss) else
                f'gradient is non-finite at loss scale {MIN_LOSS_SCALE}')
        then = (f'The last checkpoint (step {last_saved}) is intact: lower '
                'config.optim.learning_rate or check the data, then rerun to resume from it.'
                if last_saved is not None else
                'No checkpoint was saved yet: lower config.optim.learning_rate or check the '
                'data, then rerun (it starts from step 0).')
        raise NonFiniteLossError(f'Training {what} at step {bad}; stopping. {then}')
    recorder.write(step, 'train', {k: float(np.mean(v)) for k, v in stacked.items()},
                   num_steps_since=len(losses))


def update_plateau(plateau, state, val: dict, o, step: int):
    """The paper's schedule: lr / 10 when the validation error stops improving."""
    if o.schedule != 'plateau':
        return state
    if plateau.update(1.0 - val['top1']):
        lr = o.learning_rate * plateau.scale
        logging.info('Validation error plateaued at step %d: learning rate -> %g.', step, lr)
        lr = parallel.replicate(np.float32(lr))  # Same type and placement: no recompile.
        state = state.replace(opt_state=optim.set_learning_rate(state.opt_state, lr))
    return state


def final_results(p_eval_step, state, config, val, num_steps, elapsed, recorder) -> dict:
    """Test-split metrics (reusing the last eval when it is the same split) -> results.json."""
    d = config.data
    if val is None or d.test_split != d.eval_split:
        test = evaluation.evaluate(p_eval_step, state, config, d.test_split)
    else:
        test = val
    results = {
        'variant': config.get('variant', 'custom'),
        'test_split': d.test_split,
        'test_top1': test['top1'], 'test_top5': test['top5'], 'test_loss': test['loss'],
        'steps': num_steps,
        'train_seconds': elapsed,
        'images_per_second': num_steps * config.train.batch_size / max(elapsed, 1e-9),
    }
    recorder.write(num_steps, 'test', test)
    recorder.write_results(results)
    return results
