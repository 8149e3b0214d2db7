"""Seeds side by side in worker processes ('processes' mode), one per share of the cores, so a
CPU machine trains several small runs at once; `shared_workers` keeps them for a sweep's points.
"""

from concurrent import futures
import contextlib
import ctypes
import multiprocessing
import os
import signal

from absl import logging
import jax
import numpy as np

from alexnet_jax import console
from alexnet_jax import errors
from alexnet_jax import preemption


def worker_cores(config, num_seeds: int) -> list:
    """Each worker's contiguous share of this process's cores: config.seed_workers workers
    (0: one per core), at most one per seed."""
    cores = sorted(os.sched_getaffinity(0))
    n = max(1, min(config.get('seed_workers', 0) or len(cores), num_seeds, len(cores)))
    return [[int(c) for c in share] for share in np.array_split(cores, n)]


def run_in_processes(train_one, config, workdir, seeds) -> dict:
    """`train_one(config, workdir, seed)` for each seed in spawned workers, one per share of
    the cores: two 1-core digits runs train ~1.5x the images/s of one 2-core run after another
    (benchmarks/RESULTS.md). Each worker loads once and runs seed after seed.

    SIGTERM/SIGINT, from the workers' start on, reach every worker: a training one saves and
    stops, seeds not started are left for the rerun. A worker's exception stops the others the
    same way, then is raised here. A kill -9 of this process kills the workers too.
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
                running = {pool.submit(_train_next, train_one, config, workdir, s): s
                           for s in seeds}
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            while running:
                done, _ = futures.wait(running, timeout=0.5, return_when=futures.FIRST_COMPLETED)
                for f in done:
                    seed = running.pop(f)
                    try:
                        result = f.result()
                    except futures.process.BrokenProcessPool:
                        stop.set()  # The pool is broken: closed below, a new one next time.
                        left = sorted([seed, *running.values()])
                        raise errors.EnvironmentFailure(
                            f'a seed worker process died (killed, or out of memory) with seeds '
                            f'{left} not finished; finished seeds are kept: rerun to resume.'
                        ) from None
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
            for s in seeds:  # Seeds the stop kept from starting: a rerun trains them.
                out.setdefault(s, {'preempted_at_step': None})
    return {s: out[s] for s in seeds if s in out}


_workers_live = None  # The worker pool: {'shares', 'pool', 'stop'} (`_workers`).
_keep_workers = False  # Inside `shared_workers`: the pool outlives a `run_in_processes` call.


@contextlib.contextmanager
def shared_workers():
    """Keeps the worker processes from one `run_in_processes` call to the next, so a sweep's
    later points skip their start (~10 s a point on 2 cores) and reuse what they loaded."""
    global _keep_workers  # pylint: disable=global-statement  (one pool per parent process)
    _keep_workers = True
    try:
        yield
    finally:
        _keep_workers = False
        _close_workers()


def _workers(shares):
    """(pool, stop event) with a worker per core share: the live pool if it fits, or new."""
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
    """A worker's setup before jax starts: death with its parent, SIGTERM/SIGINT ignored
    between runs (a run's PreemptionGuard catches them while it trains; a signal between runs
    must not break the pool), its cores (XLA and tf.data size their threads by them), and the
    parent's stop event, compilation cache, log level and console filter."""
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
    console.quiet()
    logging.set_verbosity(verbosity)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """SIGKILL from the kernel when the parent ends, kill -9 included: an orphan would train
    its queued seeds on, deaf to SIGTERM, holding their workdirs against the rerun. A kill
    mid-save is safe (orbax renames a complete save). The kernel's "parent" is the spawning
    thread: the one that calls `run_in_processes`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG)')
    if os.getppid() != parent:  # It died before the prctl: no signal will come.
        os.kill(os.getpid(), signal.SIGKILL)


def _train_next(train_one, config, workdir, seed) -> dict | None:
    """A worker's task: the seed's run, or None once the parent is stopping."""
    return None if _stop.is_set() else train_one(config, workdir, seed)
