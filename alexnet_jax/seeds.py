"""Seed policy: which seeds a config trains, each seed's own config, how they share the machine
(`resolve_mode`) and the seed axis of a step (`over_seeds`). The worker processes that run
seeds side by side are seed_workers.py's; the loop is train.py's.
"""

import os

import jax

from alexnet_jax import errors

MODES = ('auto', 'vmap', 'map', 'sequential', 'processes')


def seed_list(config) -> list:
    return [int(config.seed) + k for k in range(int(config.get('num_seeds', 1)))]


def seed_config(config, seed: int):
    """The standalone config of one seed (what its seed<k>/ workdir records)."""
    c = config.copy_and_resolve_references()
    with c.unlocked():  # A config file may have no num_seeds field.
        c.seed, c.num_seeds = seed, 1
    return c


def processes_supported() -> bool:
    """'processes' pins workers to cores (Linux) and runs them beside one process."""
    return hasattr(os, 'sched_setaffinity') and jax.process_count() == 1


def check_mode(config, num_seeds: int, on_device: bool) -> str:
    """config.seeds_mode's name and what 'vmap'/'map' need, without starting jax's backend
    (validation runs this before jax.distributed.initialize)."""
    mode = config.get('seeds_mode', 'auto')
    errors.check(mode in MODES, 'seeds_mode', f'{mode!r} is not one of {list(MODES)}.')
    errors.check(num_seeds == 1 or mode not in ('vmap', 'map') or on_device, 'seeds_mode',
                 f'{mode!r} needs device-resident training data (data.device_resident=auto '
                 'below data.device_max_bytes with train_augment=small, or always); raise '
                 'data.device_max_bytes or use seeds_mode=sequential.')
    return mode


def resolve_mode(config, num_seeds: int, on_device: bool) -> str:
    """'single' for one seed, else config.seeds_mode, checked; 'auto' is the faster here
    (benchmarks/RESULTS.md): 'vmap' on GPU/TPU, 'processes' on a multi-core CPU (XLA:CPU steps
    stacked seeds ~5x slower, and one run does not keep 2 cores busy), else 'sequential'.
    'vmap' and 'map' need `on_device` (device-resident) data: seeds gather batches in the step."""
    mode = check_mode(config, num_seeds, on_device)
    if num_seeds == 1:
        return 'single'
    if mode == 'auto':
        if jax.default_backend() in ('gpu', 'tpu'):
            return 'vmap' if on_device else 'sequential'
        several = processes_supported() and len(os.sched_getaffinity(0)) > 1
        return 'processes' if several else 'sequential'
    errors.check(mode != 'processes' or processes_supported(), 'seeds_mode',
                 "'processes' needs one process on a Linux host (it pins workers to cores); "
                 'use seeds_mode=sequential.')
    return mode


def over_seeds(fn, mode: str, num_seeded: int = 1):
    """`fn` for arguments whose first `num_seeded` have a leading seed axis (the outputs get
    one too), the rest shared by the seeds: 'vmap' batches the seeds in one program, 'map'
    steps them one after another in it (lax.map: unbatched convolutions), 'single' drops the
    axis of one seed inside, so a plain run compiles the plain program."""
    def run(*args):
        seeded, shared = args[:num_seeded], args[num_seeded:]
        if mode == 'vmap':
            return jax.vmap(lambda *s: fn(*s, *shared))(*seeded)
        if mode == 'map':
            return jax.lax.map(lambda s: fn(*s, *shared), seeded)
        out = fn(*jax.tree.map(lambda x: x[0], seeded), *shared)
        return jax.tree.map(lambda x: x[None], out)
    return run
