"""Many seeds: config.num_seeds > 1 trains seeds seed .. seed + n - 1 together.

seeds_mode='processes' (auto on a multi-core CPU) runs them as ordinary runs side by side, one
spawned worker process per share of the cores. seeds_mode='sequential' runs them one after
another in this process. Both write seed<k>/ as a standalone run would.

seeds_mode='vmap' / 'map' (auto on GPU/TPU): one program. One process, one data load
(device-resident, device_data.py), one compile: the state and the run keys (dropout, data
order and augmentation) carry a leading seed axis and one pmapped step advances every seed
(`train.make_device_train_step`, seeds='vmap' batched or 'map' one after another inside the
step). Seed k's trajectory is standalone seed k's: its params, dropout keys
and data stream come from the same `initial_state` and `device_data.data_key` (equal up to float
reassociation in batched convolutions; tests/test_seeds.py).

Layout, as the sweep reads it: workdir/seed<k>/ holds seed k's config.json, metrics.jsonl,
learning curves, results.json (or failed.json, when its loss went non-finite: that seed stops
being reported, the others go on). The stacked state is one orbax checkpoint in
workdir/checkpoints (its fingerprint names the seeds); a rerun resumes it exactly. With data
that is not device-resident, 'auto' falls back to one run after another.
"""

from concurrent import futures
import contextlib
import ctypes
import functools
import json
import multiprocessing
import os
import signal
import time

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import checkpoints
from alexnet_jax import cli
from alexnet_jax.data import device_data
from alexnet_jax import evaluation
from alexnet_jax.data import input_pipeline
from alexnet_jax import metrics as metrics_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import preemption
from alexnet_jax.data import preprocess
from alexnet_jax import train
from alexnet_jax import validation
from alexnet_jax.parallel import AXIS


def seed_list(config) -> list:
    return [int(config.seed) + k for k in range(int(config.get('num_seeds', 1)))]


def seed_config(config, seed: int):
    """The standalone config of one seed (what seed<k>/config.json records)."""
    c = config.copy_and_resolve_references()
    c.seed, c.num_seeds = seed, 1
    return c


def seed_dir(workdir, seed: int) -> epath.Path:
    return epath.Path(workdir) / f'seed{seed}'


def train_seeds(config, workdir: str, seeds=None) -> dict:
    """Trains `seeds` (default: config's) of config; returns {seed: results dict or
    {'failed': reason}}; {'preempted_at_step': s} when stopped by a signal. `config` must be
    validated (launch.py and tools/sweep.py do it at the entry point)."""
    seeds = seed_list(config) if seeds is None else list(seeds)
    info = input_pipeline.get_info(config)
    mode = train.seeds_mode(config)
    on_device = device_data.enabled(config, info)
    if mode != 'sequential' and not on_device:
        validation.check(config.get('seeds_mode', 'auto') == 'auto', 'seeds_mode',
                         f'{config.seeds_mode!r} needs device-resident data, and '
                         f'{config.data.train_split!r} is not (data.device_resident='
                         f'{config.data.device_resident!r}); raise data.device_max_bytes or use '
                         'seeds_mode=sequential.')
        mode = 'sequential'
    if mode == 'processes':
        validation.check(train.processes_supported(), 'seeds_mode',
                         "'processes' needs one process on a Linux host (it pins workers to "
                         'cores); use seeds_mode=sequential.')
    if mode == 'processes' and len(seeds) > 1:
        return _train_in_processes(config, workdir, seeds)
    if mode in ('sequential', 'processes') or len(seeds) == 1:
        out = {}
        for s in seeds:  # A preempted seed stops the rest: rerun to resume.
            out[s] = _train_one(config, workdir, s)
            if 'preempted_at_step' in out[s]:
                break
        return out
    config = config.copy_and_resolve_references()
    config.seeds_mode = mode
    return _train_together(config, info, workdir, seeds)


def _train_one(config, workdir, seed) -> dict:
    """One seed as an ordinary run; a non-finite loss fails that seed only (failed.json)."""
    try:
        return train.train_and_evaluate(seed_config(config, seed), str(seed_dir(workdir, seed)))
    except train.NonFiniteLossError as e:
        return {'failed': record_failure(seed_dir(workdir, seed), e)}


def worker_cores(config, num_seeds: int) -> list:
    """The cores of each worker process for seeds_mode='processes': config.seed_workers
    processes (0: one per core, at most one per seed), each with its own contiguous share of
    this process's cores."""
    cores = sorted(os.sched_getaffinity(0))
    n = max(1, min(config.get('seed_workers', 0) or len(cores), num_seeds, len(cores)))
    return [[int(c) for c in share] for share in np.array_split(cores, n)]


def _train_in_processes(config, workdir, seeds) -> dict:
    """Seeds as ordinary runs (`_train_one`), several at once: one spawned worker process per
    share of the CPU cores, pinned to it. XLA:CPU does not keep 2 cores busy on a small net:
    two 1-core digits runs at once train ~1.5x the images/s of one 2-core run after another
    (benchmarks/RESULTS.md). Each worker imports and loads once and runs seed after seed
    (and, inside `shared_workers`, point after point).

    SIGTERM/SIGINT here, from the workers' start on, reach every worker: a training one saves
    its checkpoint and stops (a rerun resumes it), seeds not started are left for the rerun. A
    worker's exception (a real bug, a user error) stops the others the same way, then is raised
    here with its traceback. If this process is killed (kill -9), the kernel kills the workers.
    """
    config = config.copy_and_resolve_references()
    out = {}
    shares = worker_cores(config, len(seeds))

    def stop_workers():  # Repeated while stopping: a run that just started ignores signals.
        stop.set()  # Seeds not started yet stay for the rerun.
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):  # It exited since the listing.
                os.kill(child.pid, signal.SIGTERM)  # Training: save and stop; idle: ignored.

    # The guard from the start: a signal while the workers spawn stops the run as at any time.
    with preemption.PreemptionGuard() as guard:  # Also while the workers save and exit.
        pool, stop = _workers(shares)
        logging.info('Training seeds %s in %d processes on cores %s.', seeds, len(shares),
                     shares)
        try:
            # submit() spawns the workers; they inherit the blocked signals (through exec) and
            # keep them blocked until `_start_worker` ignores them. Else a SIGTERM or Ctrl-C
            # while a worker imports jax would kill it and break the pool (BrokenProcessPool).
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, preemption.PreemptionGuard.SIGNALS)
            try:
                running = {pool.submit(_train_next, config, workdir, s): s for s in seeds}
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            while running:
                done, _ = futures.wait(running, timeout=0.5, return_when=futures.FIRST_COMPLETED)
                for f in done:
                    seed, result = running.pop(f), f.result()
                    if result is not None:
                        out[seed] = result
                if stop.is_set() or guard.requested or any(
                        'preempted_at_step' in r for r in out.values()):
                    stop_workers()
        except BaseException:
            stop_workers()
            raise
        finally:
            if stop.is_set() or not _keep_workers:  # A stopped pool is not reused.
                _close_workers()
        if guard.requested:
            logging.warning('Stopped by %s: seeds that were training saved a checkpoint; rerun '
                            'to resume.', guard.signal_name)
    return {s: out[s] for s in seeds if s in out}


_workers_live = None  # The worker pool: {'shares', 'pool', 'stop'} (`_workers`).
_keep_workers = False  # Inside `shared_workers`: the pool outlives a `train_seeds` call.


@contextlib.contextmanager
def shared_workers():
    """Inside this block seeds_mode='processes' keeps its worker processes from one
    `train_seeds` call to the next, so a sweep's points after the first skip the workers'
    start (spawn, importing jax and TensorFlow: ~10 s a point on 2 cores) and reuse what each
    worker loaded (the device-resident data set)."""
    global _keep_workers  # pylint: disable=global-statement  (one pool per parent process)
    _keep_workers = True
    try:
        yield
    finally:
        _keep_workers = False
        _close_workers()


def _workers(shares):
    """(pool, stop event) with one worker per core share: the live pool if it has these
    shares, else a new one."""
    global _workers_live  # pylint: disable=global-statement
    if _workers_live is not None and _workers_live['shares'] == shares:
        _workers_live['stop'].clear()
    else:
        _close_workers()
        context = multiprocessing.get_context('spawn')  # fork is unsafe once jax runs threads.
        queue, stop = context.SimpleQueue(), context.Event()
        for share in shares:
            queue.put(share)
        pool = futures.ProcessPoolExecutor(
            len(shares), mp_context=context, initializer=_start_worker,
            initargs=(queue, stop, os.getpid(), jax.config.jax_compilation_cache_dir,
                      jax.config.jax_persistent_cache_min_compile_time_secs,
                      logging.get_verbosity()))
        _workers_live = {'shares': shares, 'pool': pool, 'stop': stop}
    return _workers_live['pool'], _workers_live['stop']


def _close_workers() -> None:
    global _workers_live  # pylint: disable=global-statement
    if _workers_live is not None:
        _workers_live['pool'].shutdown(cancel_futures=True)
        _workers_live = None


_stop = None  # In a seed worker: the parent's event "start no more seeds" (_start_worker).


def _start_worker(queue, stop, parent, cache_dir, cache_min_seconds, verbosity) -> None:
    """A seed worker's setup, before jax starts its backend: death with its parent
    (`_die_with_parent`), SIGTERM/SIGINT ignored between runs (a run's PreemptionGuard catches
    them while it trains; a signal between runs must not kill the worker and, with it, the
    pool; they come blocked from the parent, and what came while blocked is dropped), its own
    cores (XLA and tf.data size their thread pools from them), the parent's stop event,
    compilation cache, log level and console filter."""
    global _stop  # pylint: disable=global-statement  (one per worker process)
    _die_with_parent(parent)
    for sig in preemption.PreemptionGuard.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, preemption.PreemptionGuard.SIGNALS)
    _stop = stop
    os.sched_setaffinity(0, queue.get())
    if cache_dir:
        jax.config.update('jax_compilation_cache_dir', cache_dir)
        jax.config.update('jax_persistent_cache_min_compile_time_secs', cache_min_seconds)
    logging.use_absl_handler()  # The parent's log format (no app.run here) and console filter:
    logging.get_absl_handler().addFilter(cli._QuietLibraries())  # pylint: disable=protected-access
    logging.set_verbosity(verbosity)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Has the kernel SIGKILL this worker when its parent ends, kill -9 included (Linux; the
    'processes' mode needs Linux). An orphaned worker would train its queued seeds on (~1 GB
    each), deaf to SIGTERM, and hold their workdirs against the rerun. Killing it mid-save is
    safe: orbax writes a checkpoint to a temporary directory and renames it when complete, and
    a rerun ignores the temporary one. The kernel's "parent" is the thread that spawned the
    worker: `submit`, in the thread that calls `train_seeds` (the main thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG)')
    if os.getppid() != parent:  # It died before the prctl: no signal will come.
        os.kill(os.getpid(), signal.SIGKILL)


def _train_next(config, workdir, seed) -> dict | None:
    """A worker's task: the seed's run, or None once the parent is stopping."""
    return None if _stop.is_set() else _train_one(config, workdir, seed)


def record_failure(workdir, error) -> str:
    """workdir/failed.json {'reason': ...}, as the sweep reads it; `error` is an exception or
    the reason already written out. Returns the reason."""
    reason = error if isinstance(error, str) else (
        f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}')
    logging.warning('%s failed: %s', workdir, reason)
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'failed.json').write_text(json.dumps({'reason': reason}) + '\n')
    return reason


def _stack(trees):
    """Leaves stacked on a new leading (seed) axis, in the structure of the first tree (the
    states' static fields, e.g. the optimizer, are equal but not identical objects)."""
    leaves = [jax.tree.leaves(t) for t in trees]
    return jax.tree.unflatten(jax.tree.structure(trees[0]),
                              [np.stack([np.asarray(v) for v in x]) for x in zip(*leaves)])


def _train_together(config, info, workdir, seeds):
    """The seeds as one program (seeds_mode 'vmap' or 'map'). As `train.train_and_evaluate`,
    it holds the workdir's lock while it runs: a second run on the workdir stops at once."""
    lock = checkpoints.lock_workdir(workdir)
    try:
        return _train_together_locked(config, info, workdir, seeds)
    finally:
        lock.release()


def _train_together_locked(config, info, workdir, seeds):
    configs = [seed_config(config, s) for s in seeds]
    num_steps, steps_per_epoch = train.num_train_steps(config)
    t = config.train
    eval_every = steps_per_epoch if t.eval_every_steps is None else t.eval_every_steps
    states, dropout_keys = zip(*[train.initial_state(c, info, steps_per_epoch, num_steps)
                                 for c in configs])
    state = _stack(states)
    keys = {'dropout': jnp.stack(dropout_keys),
            'data': jnp.stack([device_data.data_key(s) for s in seeds])}
    fingerprint = dict(checkpoints.config_fingerprint(config), seeds=seeds)
    ckpt = checkpoints.Checkpointer(workdir, config_fingerprint=fingerprint,
                                    keep=t.keep_checkpoints, best_metric=None,
                                    async_save=t.async_checkpoints)
    recorders, val = {}, None
    try:
        meta = {}
        restored = ckpt.restore(state)
        if restored is not None:
            state, meta = restored
            checkpoints.check_resume(meta, config, workdir)
            logging.info('Resumed %d seeds from step %d of %s.', len(seeds), int(state.step[0]),
                         workdir)
        # Only now, when the workdir is known to fit this config, is anything written to it.
        for c, s in zip(configs, seeds):
            checkpoints.write_config(c, str(seed_dir(workdir, s)))
        recorders = {s: metrics_lib.Recorder(seed_dir(workdir, s), num_steps=num_steps,
                                             steps_per_epoch=steps_per_epoch,
                                             batch_size=t.batch_size, plot=t.plot) for s in seeds}
        plateaus = [optim.Plateau.from_config(config.optim, p)
                    for p in meta.get('plateau', [None] * len(seeds))]
        failed = {int(k): v for k, v in meta.get('failed', {}).items()}
        start_step, elapsed = int(state.step[0]), meta.get('elapsed', 0.0)
        state = parallel.replicate(state)
        mean, std = preprocess.mean_std(config.data, info.image_shape[-1])
        eval_one = functools.partial(evaluation.eval_step, mean=mean, std=std,
                                     crop_size=config.data.image_size)
        p_eval = jax.pmap(jax.vmap(eval_one, in_axes=(0, None)), axis_name=AXIS)
        t0 = time.time()

        def save(step):
            meta = {'plateau': [p.state() for p in plateaus], 'failed': failed,
                    'elapsed': elapsed + time.time() - t0,
                    'fixed': checkpoints.resume_fixed(config),
                    'topology': checkpoints.topology()}
            ckpt.save(step, parallel.unreplicate(state), meta)

        if start_step < num_steps:
            step_fn, p_keys, data = train.device_step_inputs(config, info, keys)
            pending = []
            with preemption.PreemptionGuard() as guard:
                for step in range(start_step + 1, num_steps + 1):
                    state, step_metrics = step_fn(state, p_keys, data)
                    pending.append(step_metrics)
                    stop = guard.should_stop(step, t.log_every_steps)
                    is_eval = train._at(step, eval_every, num_steps)  # pylint: disable=protected-access
                    is_ckpt = train._at(step, t.checkpoint_every_steps, num_steps) or stop  # pylint: disable=protected-access
                    if train._at(step, t.log_every_steps, num_steps) or is_ckpt:  # pylint: disable=protected-access
                        _log(recorders, seeds, failed, step, pending)
                        pending = []
                    if is_eval:
                        val = _evaluate(p_eval, state, config, config.data.eval_split, seeds)
                        for s in seeds:
                            if s not in failed:
                                recorders[s].write(step, 'val', val[s])
                        state = _update_plateaus(plateaus, state, val, config.optim, seeds)
                    if is_ckpt:
                        save(step)
                    if stop:
                        logging.warning('Preempted: saved step %d; rerun to resume.', step)
                        return {'preempted_at_step': step}
        ckpt.wait()
        elapsed += time.time() - t0
        d = config.data
        test = (val if val is not None and d.test_split == d.eval_split
                else _evaluate(p_eval, state, config, d.test_split, seeds))
        out = {}
        for s in seeds:
            if s in failed:
                out[s] = {'failed': record_failure(seed_dir(workdir, s), failed[s])}
                continue
            out[s] = {
                'variant': config.get('variant', 'custom'), 'test_split': d.test_split,
                'test_top1': test[s]['top1'], 'test_top5': test[s]['top5'],
                'test_loss': test[s]['loss'], 'steps': num_steps,
                'train_seconds': elapsed,  # Wall time of the whole program (all seeds).
                'seeds_together': len(seeds), 'seeds_mode': config.seeds_mode,
                'images_per_second': num_steps * t.batch_size / max(elapsed, 1e-9),
            }
            recorders[s].write(num_steps, 'test', test[s])
            recorders[s].write_results(out[s])
        return out
    finally:
        ckpt.close()
        for r in recorders.values():
            r.close()


def _log(recorders, seeds, failed, step, pending):
    """Per seed: train.log_train on its slice; a non-finite seed is marked failed, not fatal."""
    host = parallel.unreplicate(pending)  # Leaves [seeds].
    for i, s in enumerate(seeds):
        if s in failed:
            continue
        mine = [jax.tree.map(lambda x, i=i: np.asarray(x)[i:i + 1], m) for m in host]
        try:
            train.log_train(recorders[s], step, mine)  # Its unreplicate takes [0]: seed i.
        except train.NonFiniteLossError as e:
            logging.warning('seed %d failed: %s', s, e)
            failed[s] = f'{type(e).__name__}: {str(e).splitlines()[0]}'
    if len(failed) == len(seeds):
        raise train.NonFiniteLossError(f'Every seed stopped on a non-finite loss: {failed}')


def _evaluate(p_eval, state, config, split, seeds) -> dict:
    """{seed: {'loss', 'top1', 'top5'}} over every example of `split`, one pass for all seeds."""
    totals = None
    for batch in input_pipeline.eval_iterator(config, split):
        sums = p_eval(state, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.tree.map(np.asarray, parallel.unreplicate(totals))
    return {s: {k: float(totals[k][i]) / max(float(totals['count'][i]), 1.0)
                for k in ('loss', 'top1', 'top5')} for i, s in enumerate(seeds)}


def _update_plateaus(plateaus, state, val, o, seeds):
    """train.update_plateau per seed: each seed's lr follows its own validation error."""
    if o.schedule != 'plateau':
        return state
    changed = [p.update(1.0 - val[s]['top1']) for p, s in zip(plateaus, seeds)]
    if not any(changed):
        return state
    lr = np.asarray([o.learning_rate * p.scale for p in plateaus], np.float32)
    logging.info('Validation error plateaued: learning rates -> %s.', lr)
    return state.replace(opt_state=optim.set_learning_rate(state.opt_state,
                                                           parallel.replicate(lr)))
