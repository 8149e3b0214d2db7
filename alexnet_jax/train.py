"""The one training loop, `train_and_evaluate(config, workdir)`, after flax's imagenet.

One seed or many: the state, the keys and the metrics carry a leading seed axis (size 1 for a
plain run); config.seeds_mode only decides how the step is compiled ('vmap', 'map') or that
each seed runs as a plain run ('sequential', 'processes'). Each seed owns a workdir (`Seed`)
laid out as a standalone run's, so a rerun in any mode resumes each seed.

Data parallel with `jax.pmap` over every device of every host: gradients, batch statistics and
metrics are averaged inside the step; the host waits for the devices only when a side job is
`due`. config.model_parallel=2: the same step on columns.py's (data x model) mesh instead.
Resuming is exact: state and plateau come from the checkpoint, the data restarts at its step,
and the dropout key of step s on device d is fold_in(fold_in(key(seed), s), d).
"""

import functools
import json
import math
import pathlib
import time
from typing import Any

from absl import logging
from etils import epath
from flax import traverse_util
import flax.linen as nn
from flax.training import dynamic_scale as dynamic_scale_lib
from flax.training import train_state
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax import checkpoints
from alexnet_jax import columns
from alexnet_jax.data import device_data
from alexnet_jax import diagnostics
from alexnet_jax import errors
from alexnet_jax import evaluation
from alexnet_jax import finetune
from alexnet_jax import metrics as metrics_lib
from alexnet_jax import models
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import preemption
from alexnet_jax import seed_workers
from alexnet_jax import seeds as seeds_lib
from alexnet_jax.data import preprocess
from alexnet_jax import workdirs
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
    """The state on the host, made by one jitted program: run eagerly, the optimizer's zeros
    would compile a small program per parameter shape, every run."""
    def init(rng):
        variables = model.init(rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32),
                               train=False)
        return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                                 batch_stats=variables.get('batch_stats', {}),
                                 dynamic_scale=dynamic_scale)
    # Host numpy leaves with fixed dtypes (the step, the lr and the loss scale are Python
    # scalars): the step's second call would otherwise see new types and compile again.
    return jax.tree.map(np.asarray, jax.jit(init)(rng))


MIN_LOSS_SCALE = 1.0  # An overflow at this scale is a real inf/NaN: the loop stops on it.


def create_dynamic_scale(o):
    """fp16 loss scaling (None unless config.optim.loss_scale): a step with non-finite
    gradients is skipped and the scale halved; it doubles after `growth_interval` good steps."""
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


def dropout_rng(key, step):
    """This device's dropout key for `step`: every device and every step draws its own masks."""
    return jax.random.fold_in(jax.random.fold_in(key, step), lax.axis_index(AXIS))


def train_step(state: TrainState, batch, *, dropout_key, mean, std, axis_name=AXIS):
    """One SGD step on this device's slice of a uint8 batch (normalised here); under pmap.
    axis_name=None: the whole batch in jit's global view (columns.py: the model-parallel net,
    its apply_fn drawing each device's dropout), where means over it are over all devices."""
    images = preprocess.normalize_batch(batch, mean, std)
    rng = (dropout_rng(dropout_key, state.step) if axis_name
           else jax.random.fold_in(dropout_key, state.step))
    pmean = (lambda tree: lax.pmean(tree, axis_name)) if axis_name else (lambda tree: tree)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
            rngs={'dropout': rng}, mutable=['batch_stats'])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
        return loss.mean(), (logits, updates)

    scaler = state.dynamic_scale
    if scaler is None:
        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        grads = pmean(grads)
    else:  # Scaled loss; grads unscaled and pmean'd inside, so all devices agree on `finite`.
        scaler, finite, (loss, (logits, updates)), grads = scaler.value_and_grad(
            loss_fn, has_aux=True, axis_name=axis_name)(state.params)
    new_state = state.apply_gradients(
        grads=grads, batch_stats=pmean(updates.get('batch_stats', {})))
    metrics = {
        'loss': loss,
        'top1': evaluation.topk_correct(logits, batch['label'], 1).mean(),
        'top5': evaluation.topk_correct(logits, batch['label'], 5).mean(),
    }
    metrics = pmean(metrics)
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
    """`train_step` pmapped, as the benchmarks time it. Not donated by default: under pmap XLA
    (jax 0.10) copies every donated buffer at the step's start (benchmarks/RESULTS.md). The
    dropout key is an argument, so another seed runs the same program."""
    step = jax.pmap(lambda state, batch, key: train_step(state, batch, dropout_key=key,
                                                         mean=mean, std=std),
                    axis_name=AXIS, in_axes=(0, 0, None),
                    donate_argnums=(0,) if donate_state else (), devices=devices)
    return lambda state, batch: step(state, batch, dropout_key)


def device_train_step(state: TrainState, keys, data, *, spec, mean, std):
    """`train_step` on a batch gathered and augmented on the device from `data` (the
    device-resident set); keys: {'dropout', 'data'}, arguments so each seed passes its own."""
    batch = device_data.train_batch(data, keys['data'], state.step, spec)
    return train_step(state, batch, dropout_key=keys['dropout'], mean=mean, std=std)


def make_seeds_step(one, mode: str, devices=None):
    """`one(state, keys, data) -> (state, metrics)` pmapped over AXIS for a state, keys and
    metrics with a leading seed axis (`seeds.over_seeds`), one dispatch a step; `data` (a
    tf.data batch, or the device-resident set) is shared by the seeds."""
    return jax.pmap(seeds_lib.over_seeds(one, mode, num_seeded=2), axis_name=AXIS,
                    devices=devices)


def step_runner(config, data, keys, start_step: int, mode: str, devices=None):
    """state -> (state, metrics) of the next step, on device-resident data or on tf.data
    batches (one seed); `data`: the run's input_pipeline.Facts; state and keys ({'dropout',
    'data'}) have a leading seed axis."""
    keys = parallel.replicate(keys, devices)
    if data.on_device:
        one = functools.partial(device_train_step, spec=data.spec, mean=data.mean,
                                std=data.std)
        step = make_seeds_step(one, mode, devices)
        resident = device_data.place(device_data.load(config), devices)
        logging.info('Training data on the device (%s).', config.data.train_split)
        return lambda state: step(state, keys, resident)
    step = make_seeds_step(lambda state, keys, batch: train_step(
        state, batch, dropout_key=keys['dropout'], mean=data.mean, std=data.std), mode, devices)
    from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
    batches = parallel.prefetch_to_device(
        input_pipeline.train_iterator(config, start_step=start_step))
    return lambda state: step(state, keys, next(batches))


def num_train_steps(config, data=None) -> tuple[int, int]:
    """(total steps, steps per epoch); `data`: the run's input_pipeline.Facts (built if None)."""
    if data is None:
        from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
        data = input_pipeline.facts(config)
    if config.train.num_steps is not None:
        return int(config.train.num_steps), data.steps_per_epoch
    return int(math.ceil(config.train.num_epochs * data.steps_per_epoch)), data.steps_per_epoch


def due(step: int, every: int, last: int) -> bool:
    """The one timing rule of the side jobs: every `every` steps (0: never) and the last."""
    return step == last or (every > 0 and step % every == 0)


def train_and_evaluate(config, workdir: str, seeds=None) -> dict:
    """Trains (or resumes) a validated config's seeds and tests them: the results dict for a
    plain run, else {seed: results or {'failed': reason}}; 'preempted_at_step' after
    SIGTERM/SIGINT. A plain run trains in `workdir` and stops on a non-finite loss; several
    seeds (or a sweep's `seeds`) each in workdir/seed<k> (`train_seed`), where a non-finite loss
    fails that seed only. How seeds share the machine: `seeds.resolve_mode`."""
    from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
    checkpoints.check_keep(config.train.keep_checkpoints)  # Before any seed dir is made.
    config = finetune.resolve_config(config)  # init_from: its net and preprocessing.
    data = input_pipeline.facts(config)  # Checks the config's classes and batch against them.
    plain = seeds is None and config.get('num_seeds', 1) == 1
    workdirs.check_layout(workdir, several=not plain)
    seeds = seeds_lib.seed_list(config) if seeds is None else list(seeds)
    mode = seeds_lib.resolve_mode(config, len(seeds), data.on_device)
    if plain:
        return _train_seeds(config, data, [(int(config.seed), workdir)], 'single', raise_nan=True,
                            labelled=False)
    lock = workdirs.lock(workdir)  # One multi-seed run per workdir.
    if workdirs.checkpoint_dir(workdir).exists():
        logging.warning('%s holds all seeds stacked, as runs before the one loop saved them; it '
                        'is not resumed: each seed trains in %s/seed<k>.',
                        workdirs.checkpoint_dir(workdir), workdir)
    try:
        if mode == 'processes':
            return seed_workers.run_in_processes(train_seed, config, workdir, seeds)
        if mode == 'sequential':
            out = {}
            for s in seeds:  # A preempted seed stops the rest: rerun to resume.
                out[s] = train_seed(config, workdir, s, data)
                if 'preempted_at_step' in out[s]:
                    break
            return out
        return _train_seeds(config, data, [(s, workdirs.seed_dir(workdir, s)) for s in seeds],
                            mode)
    finally:
        lock.release()


def train_seed(config, workdir, seed: int, data=None) -> dict:
    """Seed `seed` of a resolved config alone in workdir/seed<k>, as a plain run trains
    ('sequential'; 'processes', where a worker builds its own `data` facts); a non-finite loss
    fails the seed (recorded), not the run."""
    if data is None:
        from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
        data = input_pipeline.facts(config)
    directory = workdirs.seed_dir(workdir, seed)
    workdirs.check_layout(directory, several=False)
    try:
        return _train_seeds(config, data, [(seed, directory)], 'single', raise_nan=True)
    except NonFiniteLossError as e:
        return {'failed': workdirs.record_failure(directory, e)}


def starting_state(config, fresh, ckpt, steps_per_epoch: int, num_steps: int):
    """Where a seed's state comes from, decided here only: its checkpoint (a resume: the state,
    the plateau and the meta saved with it), else init_from's weights (a fresh fine-tuning run),
    else `fresh` (`initial_state`'s); then the configured learning rate into it
    (`optim.configured_learning_rate`). Returns (state, plateau, the checkpoint's meta or None)."""
    state, meta, restored = fresh, None, ckpt.restore(fresh)
    if restored is not None:
        state, meta = restored
        logging.info('Resumed from step %d of %s.', int(state.step), ckpt.workdir)
    elif config.get('init_from'):  # Only a fresh run: a resumed one has its own weights.
        state = finetune.load_into(state, config.init_from)
    plateau = optim.Plateau.from_config(config.optim, (meta or {}).get('plateau'))
    state = optim.configured_learning_rate(state, config.optim, plateau, steps_per_epoch,
                                           num_steps)
    return state, plateau, meta


def resumed_config(config, workdir, step: int):
    """(the config a resumed run records, the changes its config record lists): against the
    recorded config, every field that differs is a change from step `step` + 1 on (after the
    earlier resumes' changes), so the record says what each part of the run trained with; a
    changed data.eval_split is named (keep-best and the plateau schedule read it). init_from stays
    the recorded one: a resume restores its own weights, another init_from is ignored (warned)."""
    if not (epath.Path(workdir) / workdirs.CONFIG).is_file():
        return config, []
    recorded = workdirs.read_config(workdir)
    if config.get('init_from') != recorded.get('init_from'):
        logging.warning('config.init_from=%s is ignored: %s resumes its own checkpoint (step '
                        '%d), which started from %s.', config.get('init_from'), workdir, step,
                        recorded.get('init_from') or 'a fresh initialisation')
        config = config.copy_and_resolve_references()
        config.init_from = recorded.get('init_from')
    flat = lambda c: traverse_util.flatten_dict(  # noqa: E731  (JSON values, as recorded)
        json.loads(json.dumps(c.to_dict(), default=str)), sep='.')
    was, now = flat(recorded), flat(config)
    changes = [{'from_step': step + 1, 'field': k, 'was': was.get(k), 'now': now.get(k)}
               for k in sorted(was.keys() | now.keys()) if was.get(k) != now.get(k)]
    if any(c['field'] == 'data.eval_split' for c in changes):
        logging.warning('config.data.eval_split=%r (the run so far validated on %r): keep-best '
                        'and the plateau schedule read the new split from step %d on.',
                        now['data.eval_split'], was.get('data.eval_split'), step + 1)
    return config, workdirs.read_changes(workdir) + changes


class Seed:
    """One seed's side of the loop: its locked workdir, checkpoints (keep-best by validation
    top-1), metrics, plateau, best score and failure; its state is the checkpoint's (resume),
    init_from's (a fresh fine-tuning run) or a fresh one."""

    def __init__(self, config, data, seed: int, workdir, num_steps: int, steps_per_epoch: int,
                 label: str = '', stop_on_nan: bool = False):
        self.config = seeds_lib.seed_config(config, seed)
        self.seed, self.workdir, self.stop_on_nan = seed, str(workdir), stop_on_nan
        self.failed = self.results = None  # The NonFiniteLossError / the results dict.
        t = config.train
        self.lock = workdirs.lock(self.workdir)  # A second run here stops now.
        self.ckpt = self.recorder = None
        try:  # The fresh state first: a config error stops the run before orbax starts.
            fresh, self.dropout_key = initial_state(self.config, data.info, steps_per_epoch,
                                                    num_steps)
            self.ckpt = checkpoints.Checkpointer(
                self.workdir, config_fingerprint=checkpoints.config_fingerprint(
                    self.config, data.on_device),
                keep=t.keep_checkpoints, best_metric='val_top1', async_save=t.async_checkpoints)
            self.state, self.plateau, meta = starting_state(self.config, fresh, self.ckpt,
                                                            steps_per_epoch, num_steps)
        except BaseException:
            self.close()
            raise
        self.start = int(self.state.step)
        self.last_saved = None if meta is None else self.start
        self.changes = []
        if meta is not None:  # A resume: the record keeps what the run so far trained with.
            self.config, self.changes = resumed_config(self.config, self.workdir, self.start)
        meta = meta or {}
        self.best_top1 = meta.get('best_val_top1', -math.inf)
        self.elapsed = meta.get('elapsed', 0.0)
        self._recorder_args = dict(num_steps=num_steps, steps_per_epoch=steps_per_epoch,
                                   batch_size=t.batch_size, plot=t.plot, label=label,
                                   elapsed_before=self.elapsed)

    def begin(self) -> None:
        """Writes the config and opens the metrics once every seed fits its workdir, so a
        refused rerun leaves no file behind. An earlier attempt's failure record goes: this one
        writes its own if it fails too, and a finished run must not sit beside one."""
        workdirs.write_config(self.config, self.workdir, self.changes)
        workdirs.clear_failure(self.workdir)
        self.recorder = metrics_lib.Recorder(self.workdir, **self._recorder_args)

    def save(self, step: int, state, elapsed: float, val: dict | None = None) -> None:
        meta = {'plateau': self.plateau.state(), 'elapsed': self.elapsed + elapsed,
                'best_val_top1': self.best_top1}
        self.ckpt.save(step, state, meta,
                       metrics=None if val is None else {'val_top1': val['top1']})
        self.last_saved = step

    def fail(self, error: NonFiniteLossError) -> None:
        """No longer logged, evaluated or saved; a seed of several records its failure now, so
        a rerun or a sweep knows, however the run ends (a plain run raises it)."""
        self.failed = error
        if not self.stop_on_nan:
            self.results = {'failed': workdirs.record_failure(self.workdir, error)}

    def close(self) -> None:
        if self.ckpt is not None:
            self.ckpt.close()  # Waits for an async save in flight, even when stopping on NaN.
        if self.recorder is not None:
            self.recorder.close()
        self.lock.release()


def _train_seeds(config, data, seed_dirs, mode: str, raise_nan: bool = False,
                 labelled: bool = True) -> dict:
    """The loop for [(seed, workdir)], stepped together; seeds resumed at different steps
    (after a rerun in another mode) train in groups, one per start step. `labelled`: each log
    line starts with its run and seed ('relu_lrn seed 3: '), as seeds in worker processes or a
    sweep's points interleave."""
    num_steps, steps_per_epoch = num_train_steps(config, data)
    several = len(seed_dirs) > 1
    seeds, out = [], {}
    try:
        for s, directory in seed_dirs:
            label = f'{pathlib.Path(directory).parent.name} seed {s}: ' if labelled else ''
            seeds.append(Seed(config, data, s, directory, num_steps, steps_per_epoch,
                              label=label, stop_on_nan=raise_nan))
        for s in seeds:
            s.begin()
        with preemption.PreemptionGuard() as guard:
            for start in sorted({s.start for s in seeds}):
                group = [s for s in seeds if s.start == start]
                stopped = _train_group(config, data, group, mode if len(group) > 1 else 'single',
                                       num_steps, steps_per_epoch, guard)
                for s in group:
                    if s.failed and s.stop_on_nan:
                        raise s.failed
                    out[s.seed] = (s.results if s.failed or not stopped
                                   else {'preempted_at_step': stopped})
                if stopped:
                    logging.warning('Preempted: saved step %d; rerun to resume.', stopped)
                    break
    finally:
        for s in seeds:
            s.close()
    return out if several else out[seeds[0].seed]


def stack_seeds(trees):
    """Leaves stacked on a new seed axis, in the first tree's structure (the static fields of
    the states are equal but not identical objects)."""
    leaves = [jax.tree.leaves(t) for t in trees]
    return jax.tree.unflatten(jax.tree.structure(trees[0]),
                              [np.stack([np.asarray(v) for v in x]) for x in zip(*leaves)])


def _train_group(config, data, seeds: list, mode: str, num_steps: int, steps_per_epoch: int,
                 guard) -> int | None:
    """Trains seeds at the same step to num_steps and tests them (each Seed's `results`);
    returns the step it stopped at on a signal, else None."""
    t, d = config.train, config.data
    eval_every = steps_per_epoch if t.eval_every_steps is None else t.eval_every_steps
    # model_parallel=2: the columns on a (data x model) mesh, placed and stepped by columns.py.
    cols = (columns.Columns(models.create_model(config.model))
            if config.get('model_parallel', 1) > 1 else None)
    par = cols or parallel
    state = par.replicate(stack_seeds([s.state for s in seeds]))
    keys = {'dropout': jnp.stack([s.dropout_key for s in seeds]),
            'data': jnp.stack([device_data.data_key(s.seed) for s in seeds])}
    mean, std = data.mean, data.std
    probe = diagnostics.first_eval_images(config, mean, std)
    for s in seeds:
        if s.start == 0:  # The weights at init, before the first step.
            s.recorder.write_diagnostics(0, diagnostics.measure(
                s.state.apply_fn, s.state.params, s.state.batch_stats, probe, config.model))
        s.state = None  # The stacked copy is the state now.
    p_eval = (cols or evaluation).make_eval_step(mean, std, d.image_size, seeds=len(seeds),
                                                 mirror=d.random_flip)
    # The test pass keeps each example's top-1 hit (one host: the split's order), so a sweep's
    # test-error intervals resample the test images too (tools/stats.py); the last validation
    # pass too, when it is the test.
    p_test = (cols or evaluation).make_eval_step(mean, std, d.image_size, seeds=len(seeds),
                                                 per_example=jax.process_count() == 1,
                                                 mirror=d.random_flip)
    p_last = p_test if d.test_split == d.eval_split else p_eval
    start, val, t0 = seeds[0].start, None, time.time()
    if start > num_steps:  # A finished run rerun with fewer steps: its weights are step `start`'s.
        logging.warning('The checkpoint is at step %d, past this config\'s %d steps: testing it '
                        'as it is (its results say steps %d).', start, num_steps, start)
    if start < num_steps:
        logging.info('Training steps %d..%d (%d per epoch)%s.', start + 1, num_steps,
                     steps_per_epoch, f' of seeds {[s.seed for s in seeds]}' * (len(seeds) > 1))
        # seeds[0].config: a one-seed tf.data stream is that seed's (device-resident batches
        # follow each seed's data key, in `keys`).
        run_step = (cols.step_runner(seeds[0].config, data, keys, start, train_step) if cols
                    else step_runner(seeds[0].config, data, keys, start, mode))
        pending = []  # Device metrics since the last log; fetched only at log time.
        for step in range(start + 1, num_steps + 1):
            state, step_metrics = run_step(state)
            pending.append(step_metrics)
            stop = guard.should_stop(step, t.log_every_steps)
            is_eval = due(step, eval_every, num_steps)
            is_ckpt = due(step, t.checkpoint_every_steps, num_steps) or stop
            if due(step, t.log_every_steps, num_steps) or is_ckpt or is_eval:
                _log(seeds, step, pending)  # Fails a seed on NaN/inf, before eval or save.
                pending = []
                if all(s.failed for s in seeds):
                    return None
            improved = [False] * len(seeds)
            if is_eval:
                val = evaluation.evaluate_seeds(p_last if step == num_steps else p_eval,
                                                state, config, d.eval_split)
                improved = [_record_eval(s, step, v) for s, v in zip(seeds, val)]
                state = optim.update_plateaus([s.plateau for s in seeds],
                                              [not s.failed for s in seeds], state, val,
                                              config.optim, step, par.replicate)
            if is_ckpt or any(improved):  # Every new best is saved: keep-best ranks it.
                host = par.unreplicate(state)
                for i, s in enumerate(seeds):
                    if not s.failed and (is_ckpt or improved[i]):
                        s.save(step, jax.tree.map(lambda x, i=i: x[i], host), time.time() - t0,
                               val[i] if is_eval else None)
            if stop:
                return step
    for s in seeds:
        s.ckpt.wait()
    elapsed = time.time() - t0  # Training, as the results' train_seconds says.
    test = (val if val is not None and d.test_split == d.eval_split
            else evaluation.evaluate_seeds(p_test, state, config, d.test_split))
    # What the diagnostics read: the weights, not the optimizer state (as large again).
    weights = par.unreplicate((state.params, state.batch_stats))
    for i, (s, v) in enumerate(zip(seeds, test)):
        if not s.failed:
            params, batch_stats = jax.tree.map(lambda x, i=i: x[i], weights)
            s.recorder.write_diagnostics(max(num_steps, start), diagnostics.measure(
                state.apply_fn, params, batch_stats, probe, config.model))
            s.results = final_results(s, config, v, max(num_steps, start), s.elapsed + elapsed,
                                      mode, len(seeds))
    return None


def _record_eval(seed, step: int, val: dict) -> bool:
    """Writes a seed's validation metrics; True if they are its best so far."""
    if seed.failed:
        return False
    seed.recorder.write(step, 'val', {k: v for k, v in val.items() if k != 'correct'})
    improved = val['top1'] > seed.best_top1
    seed.best_top1 = max(seed.best_top1, val['top1'])
    return improved


def _log(seeds, step: int, pending: list) -> None:
    """Logs each seed's metrics since the last log; a non-finite loss fails that seed only."""
    host = jax.tree.map(lambda *x: np.stack(x), *parallel.unreplicate(pending))  # [steps, seeds]
    for i, s in enumerate(seeds):
        if s.failed:
            continue
        try:
            log_train(s.recorder, step, jax.tree.map(lambda x, i=i: x[:, i], host),
                      last_saved=s.last_saved)
        except NonFiniteLossError as e:
            if len(seeds) > 1:
                logging.warning('Seed %d failed, the others go on: %s', s.seed, e)
            s.fail(e)


def log_train(recorder, step: int, stacked: dict, last_saved: int | None = None) -> None:
    """Writes the mean of one seed's metrics since the last log ({name: [steps]}); raises
    NonFiniteLossError on a non-finite loss. A loss-scaled step that overflowed was skipped:
    not an error above MIN_LOSS_SCALE, left out of the means, counted in `skipped_steps`."""
    stacked = dict(stacked)
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
        then = (f'The last checkpoint (step {last_saved}{_loss_at(recorder, last_saved)}) is '
                'finite: lower config.optim.learning_rate or check the data, then rerun to resume '
                'from it; if its loss is already far above the first steps\' it has diverged '
                'too: start again in a new --workdir.'
                if last_saved is not None else
                'No checkpoint was saved yet: lower config.optim.learning_rate or check the '
                'data, then rerun (it starts from step 0).') + (
                ' (In a sweep, a failed point is a result: rerun the sweep with --retry_failed '
                'to train it again.)')
        raise NonFiniteLossError(f'Training {what} at step {bad}; stopping. {then}')
    recorder.write(step, 'train', {k: float(np.mean(v)) for k, v in stacked.items()},
                   num_steps_since=len(losses))


def _loss_at(recorder, step: int) -> str:
    """', training loss L' of the last training log at or before `step` ('' without one)."""
    logged = [h for h in recorder.history if h['split'] == 'train' and h['step'] <= step]
    return f', training loss {logged[-1]["loss"]:.3g}' if logged else ''


def final_results(seed, config, test: dict, num_steps: int, elapsed: float, mode: str,
                  together: int) -> dict:
    """A seed's test-split metrics -> its results record (with the diagnostics at init and at
    the end, and the test examples' top-1 hits as a '0'/'1' string in the split's order)."""
    test = dict(test)
    correct = test.pop('correct', None)
    results = {
        'variant': config.get('variant', 'custom'),
        'test_split': config.data.test_split,
        'test_top1': test['top1'], 'test_top5': test['top5'], 'test_loss': test['loss'],
        'steps': num_steps,
        'train_seconds': elapsed,  # Wall time of the run (of all seeds stepped together).
        'images_per_second': num_steps * config.train.batch_size / max(elapsed, 1e-9),
    }
    if together > 1:
        results.update(seeds_together=together, seeds_mode=mode)
    results['diagnostics'] = seed.recorder.diagnostics()
    if correct is not None:
        results['test_correct'] = ''.join('1' if c else '0' for c in np.asarray(correct))
    seed.recorder.write(num_steps, 'test', test)
    seed.recorder.write_results(results)
    return results
