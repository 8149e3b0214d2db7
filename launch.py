r"""Trains and evaluates AlexNet: one command on a laptop, a GPU box or a TPU pod.

  python launch.py --config=configs/alexnet.py:digits --workdir=/tmp/digits
  python launch.py --config=configs/alexnet.py --config.model.groups=2 --workdir=gs://b/run

Several processes (each with its own devices) join with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I; on TPU pods and SLURM they are detected automatically. Their
--workdir must be one directory every host sees (GCS, NFS). Rerunning on a workdir resumes it.
The config is validated once, here; `run` routes it (evaluation only, or training).
"""

from absl import app
from absl import flags
from absl import logging
from etils import epy

from alexnet_jax import cli

with epy.lazy_imports():  # They load jax: `--help` and a mistyped flag answer before it loads.
    import jax
    from alexnet_jax import parallel
    from alexnet_jax import workdirs

cli.define_config_flag()
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, plots, results.',
                    required=True)
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 (multi-process).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process).')
flags.DEFINE_integer('process_id', None, 'This process\'s index in [0, num_processes).')
FLAGS = flags.FLAGS


@cli.one_line_errors
def main(argv):
    if len(argv) > 1:
        cli.fail(f'unexpected arguments {argv[1:]}; configure with --config.<field>=<value>.')
    config = cli.validated_config()
    workdir = cli.local_path(FLAGS.workdir, '--workdir')
    if config.get('init_from'):
        config.init_from = cli.local_path(config.init_from, '--config.init_from')
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
    cli.use_compilation_cache()
    from alexnet_jax import resume  # pylint: disable=import-outside-toplevel
    resume.check_resume(config, workdir)  # Before TensorFlow and the data: seconds.
    log_setup(config, workdir)
    check_some_seed_trained(run(config, workdir), workdir)


def run(config, workdir: str) -> dict:
    """A validated config's job: evaluate only (config.eval_only) or train its seeds."""
    # Imported here, after the flags and the config are checked: they load TensorFlow (~6 s),
    # and a typo in a flag should fail in a second or two.
    from alexnet_jax import evaluation  # pylint: disable=import-outside-toplevel
    from alexnet_jax import train  # pylint: disable=import-outside-toplevel
    if config.get('eval_only'):
        return evaluation.eval_only(config, workdir)
    return train.train_and_evaluate(config, workdir)


def check_some_seed_trained(out: dict, workdir: str) -> None:
    """Several seeds that all failed are an error (exit 1, one line), not a finished run; a seed
    that failed among finished ones is recorded in its workdir and the run is done."""
    runs = [r for r in out.values() if isinstance(r, dict)] if len(out) else []
    if runs and len(runs) == len(out) and all('failed' in r for r in runs):
        reasons = sorted({r['failed'].split(':')[0] for r in runs})
        cli.fail(f'every seed failed ({", ".join(reasons)}): see '
                 f'{workdirs.seed_dir(workdir, "<k>") / workdirs.FAILED}; '
                 f'lower --config.optim.learning_rate or check the data, then rerun.', code=1)


def log_setup(config, workdir: str) -> None:
    """Checks the batch splits over the devices; logs what runs where: the config file and the
    fields that differ from it, the processes and devices, the workdir (the run writes the whole
    config to the workdir once its checkpoint, if any, is known to fit it)."""
    for name in ('batch_size', 'eval_batch_size'):
        try:
            parallel.per_device_batch_size(config.train[name])
        except ValueError as e:
            cli.fail(str(e).replace('config.train.batch_size', f'config.train.{name}'))
    changes = cli.config_changes(config, cli.default_config())
    logging.info('%s %s in %s%s%s', 'Evaluating' if config.get('eval_only') else 'Training',
                 cli.config_file(), workdir, '' if config.get('eval_only') else
                 f' (the full config goes to {workdirs.CONFIG} there)',
                 ''.join(f'\n  {c}' for c in changes) if changes else '; no overrides.')
    logging.info('Process %d of %d; %d local / %d global devices: %s', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.local_devices())


if __name__ == '__main__':
    app.run(main, flags_parser=cli.parse_flags)
