"""A rerun's early refusals: the checks on a workdir that need neither the data nor
TensorFlow, so launch.py makes them in seconds, before the heavy imports."""

import os

from etils import epath
from flax import traverse_util

from alexnet_jax import checkpoints
from alexnet_jax import finetune
from alexnet_jax import seeds as seeds_lib
from alexnet_jax import workdirs


def check_resume(config, workdir: str) -> None:
    """A rerun's refusals that need neither the data nor TensorFlow, so they come in seconds:
    another run holds `workdir`, or the config does not fit the run recorded there (its
    recorded config; the fields recorded as null or absent are left to
    `checkpoints.check_fits` on the checkpoint itself, which the run does on restoring it)."""
    if config.get('eval_only') or workdirs.is_url(workdir) or not os.path.isdir(workdir):
        return
    workdirs.lock(workdir).release()  # One held by a run: refused now, in one line.
    config = finetune.resolve_config(config)
    runs = ([(workdir, config)] if config.get('num_seeds', 1) == 1 else
            [(workdirs.seed_dir(workdir, s), seeds_lib.seed_config(config, s))
             for s in seeds_lib.seed_list(config)])
    flat = lambda c: traverse_util.flatten_dict(  # noqa: E731
        checkpoints.config_fingerprint(c), sep='.')
    for directory, run_config in runs:
        if (workdirs.has_checkpoint(directory)
                and (epath.Path(directory) / workdirs.CONFIG).exists()):
            theirs, ours = flat(workdirs.read_config(directory)), flat(run_config)
            keep = [k for k, v in theirs.items() if v is not None and k in ours]
            checkpoints.check_fits(  # Flat: taken as they are.
                {'fingerprint': {k: theirs[k] for k in keep}}, {k: ours[k] for k in keep},
                directory)
