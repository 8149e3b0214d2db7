r"""Evaluates a converted checkpoint or a training workdir the paper's way: center crop and
the 10 crops (4 corners + center, and their mirror images; softmax averaged), top-1 / top-5.

  python -m alexnet_jax.tools.evaluate --checkpoint=/tmp/digits                    # its test split
  python -m alexnet_jax.tools.evaluate --checkpoint=/tmp/bvlc --config=configs/alexnet.py \
      --split=validation --crops=both                                         # ImageNet val
  python -m alexnet_jax.tools.evaluate --checkpoint=/tmp/bvlc --config=configs/alexnet.py \
      --config.data.name=folder --config.data.folder_root=/data/imgs --split=val

--checkpoint: the net and its preprocessing (image_size, resize_size, mean_rgb, stddev_rgb) come
from the checkpoint's own config (evaluation.load). --config, if given, supplies the data
*source* (its data section minus those preprocessing fields, as in features.py) and
train.eval_batch_size; without it, the checkpoint's own data section is used.

Batches go through `evaluation.eval_step` pmapped over every device (and host), the last one
padded and masked, so every example of the split counts exactly once. Writes the results to
--output (a .json file or a directory), by default into DIR/eval/ (a workdir's own results,
from training, are left alone), and prints a table. This is `evaluation.evaluate_checkpoint`,
which `config.eval_only=True` in launch.py runs for a run's config (`evaluation.eval_only`).
"""

from absl import app
from absl import flags
from etils import epy

from alexnet_jax import cli

with epy.lazy_imports():  # Loaded on first use: --help answers before jax loads.
    from alexnet_jax import evaluation


def define_flags() -> None:
    flags.DEFINE_string('checkpoint', None, 'A converted checkpoint or a training workdir.')
    flags.DEFINE_string('split', None, 'Data split (default: the data\'s test_split).')
    flags.DEFINE_enum('crops', 'both', ['center', 'ten', 'both'],  # evaluation.CROPS,
                      'center: one center crop; ten: the paper\'s 10 crops; both.')
    flags.DEFINE_integer('eval_batch_size', None, 'Global eval batch (default: the config\'s).')
    flags.DEFINE_string('output', None, 'A .json path or a directory for the results '
                        '(default: CHECKPOINT/eval/).')
    cli.define_config_flag(default=None)  # Optional: another data source.


@cli.one_line_errors
def main(argv):
    FLAGS = flags.FLAGS  # pylint: disable=invalid-name
    if len(argv) > 1:
        cli.fail(f'unexpected arguments {argv[1:]}.')
    if not FLAGS.checkpoint:
        cli.fail('--checkpoint is required: python -m alexnet_jax.tools.evaluate --checkpoint=DIR '
                 '[--config=configs/alexnet.py] [--split=validation] [--crops=center|ten|both]')
    run_config = cli.validated_config() if FLAGS.config is not None else None
    evaluation.evaluate_checkpoint(cli.local_path(FLAGS.checkpoint, '--checkpoint'), run_config,
                                   split=FLAGS.split, crops=FLAGS.crops,
                                   eval_batch_size=FLAGS.eval_batch_size,
                                   output=cli.local_path(FLAGS.output, '--output'))


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
