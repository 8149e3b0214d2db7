r"""Evaluates a converted checkpoint or a training workdir the paper's way: center crop and
the 10 crops (4 corners + center, and their mirror images; softmax averaged), top-1 / top-5.

  python -m alexnet_jax.tools.evaluate --checkpoint=/tmp/digits                    # its test split
  python -m alexnet_jax.tools.evaluate --checkpoint=/tmp/bvlc --config=configs/alexnet.py \
      --split=validation --crops=both                                         # ImageNet val
  python -m alexnet_jax.tools.evaluate --checkpoint=/tmp/bvlc --config=configs/alexnet.py \
      --config.data.name=folder --config.data.folder_root=/data/imgs --split=val

--checkpoint: the net and its preprocessing (image_size, resize_size, mean_rgb, stddev_rgb) come
from DIR/config.json (checkpoints.load_variables). --config, if given, supplies the data *source*
(its data section minus those preprocessing fields, as in features.py) and
train.eval_batch_size; without it, the checkpoint's own data section is used.

Batches go through `evaluation.eval_step` pmapped over every device (and host), the last one
padded and masked, so every example of the split counts exactly once. Writes results.json to
--output (a .json file or a directory), by default DIR/eval/results.json (a workdir's own
results.json, from training, is left alone), and prints a table.

`config.eval_only=True` in launch.py does the same for a run's config: launch.py calls
`eval_only` below instead of training.
"""

import json
import time

from absl import app
from absl import flags
from etils import epath
import jax

from alexnet_jax import checkpoints
from alexnet_jax import cli
from alexnet_jax import evaluation
from alexnet_jax.tools import features
from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax import records
from alexnet_jax import seeds
from alexnet_jax.data import preprocess
from alexnet_jax import validation
from alexnet_jax.data import sources

CROPS = {'center': ('center',), 'ten': ('ten',), 'both': ('center', 'ten')}


def load_state(checkpoint):
    """(config, host EvalState: what eval_step reads) of a checkpoint DIR."""
    config, variables = checkpoints.load_variables(checkpoint)
    model = models.create_model(config.model)
    state = evaluation.EvalState(apply_fn=model.apply, params=variables['params'],
                                 batch_stats=variables.get('batch_stats', {}))
    return config, state


def eval_config(config, run_config=None, eval_batch_size: int | None = None):
    """The checkpoint's `config` with `run_config`'s data source and eval batch size (a copy)."""
    if run_config is None:
        config = config.copy_and_resolve_references()
    else:
        config = features.with_data_from(config, run_config.data)
        if 'train' in run_config and 'eval_batch_size' in run_config.train:
            config.train.eval_batch_size = run_config.train.eval_batch_size
    if eval_batch_size:
        config.train.eval_batch_size = eval_batch_size
    return config


def evaluate_checkpoint(checkpoint, run_config=None, *, split: str | None = None,
                        crops: str = 'both', eval_batch_size: int | None = None,
                        output=None) -> dict:
    """Evaluates DIR on `split` (default: the data's test_split); writes and returns results."""
    if crops not in CROPS:
        raise cli.InputError(f'--crops={crops!r} is not one of {list(CROPS)}.')
    config, state = load_state(checkpoint)
    config = eval_config(config, run_config, eval_batch_size)
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
    p_eval_step = evaluation.make_eval_step(
        *preprocess.mean_std(config.data, source.channels), config.data.image_size)
    state = parallel.replicate(state)
    for mode in CROPS[crops]:
        mode_config = config.copy_and_resolve_references()
        mode_config.data.eval_crops = mode
        t0 = time.time()
        results[mode] = evaluation.evaluate(p_eval_step, state, mode_config, split)
        results[mode]['seconds'] = time.time() - t0
    path = results_path(checkpoint, output)
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        records.write(path, results, indent=2)
        print(table(results) + f'\nWrote {path}.')
    return results


def results_path(checkpoint, output=None) -> epath.Path:
    """--output (a .json file, or a directory for results.json); default DIR/eval/results.json."""
    if output:
        path = epath.Path(output)
        return path if path.suffix == '.json' else path / 'results.json'
    return epath.Path(checkpoint) / 'eval' / 'results.json'


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


def has_checkpoint(workdir) -> bool:
    directory = epath.Path(workdir) / checkpoints.CHECKPOINT_SUBDIR
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def eval_only(config, workdir: str) -> dict:
    """config.eval_only: evaluates the workdir's latest checkpoint, or else config.init_from,
    on config.data.test_split with config.data.eval_crops; writes WORKDIR/eval/results.json.
    Several seeds: each WORKDIR/seed<k>, as training laid them out ({seed: results})."""
    if config.get('num_seeds', 1) > 1:
        return {s: eval_only(seeds.seed_config(config, s), str(seeds.seed_dir(workdir, s)))
                for s in seeds.seed_list(config)}
    checkpoint = workdir if has_checkpoint(workdir) else config.get('init_from')
    validation.check(bool(checkpoint), 'eval_only',
                     f'{workdir} has no checkpoint to evaluate and config.init_from is not set; '
                     f'train there first or set --config.init_from=DIR.')
    return evaluate_checkpoint(checkpoint, config, split=config.data.test_split,
                               crops=config.data.eval_crops, output=epath.Path(workdir) / 'eval')


def define_flags() -> None:
    flags.DEFINE_string('checkpoint', None, 'A converted checkpoint or a training workdir.')
    flags.DEFINE_string('split', None, 'Data split (default: the data\'s test_split).')
    flags.DEFINE_enum('crops', 'both', list(CROPS),
                      'center: one center crop; ten: the paper\'s 10 crops; both.')
    flags.DEFINE_integer('eval_batch_size', None, 'Global eval batch (default: the config\'s).')
    flags.DEFINE_string('output', None, 'results.json path or directory '
                        '(default: CHECKPOINT/eval/results.json).')
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
    evaluate_checkpoint(cli.local_path(FLAGS.checkpoint, '--checkpoint'), run_config,
                        split=FLAGS.split, crops=FLAGS.crops,
                        eval_batch_size=FLAGS.eval_batch_size,
                        output=cli.local_path(FLAGS.output, '--output'))


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
