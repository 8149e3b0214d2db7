r"""Ablation sweeps: every grid point x seed through the same `train_and_evaluate` as launch.py.

  python -m alexnet_jax.tools.sweep --config=configs/ablations.py[:grid] --workdir=DIR
  python -m alexnet_jax.tools.sweep --config=configs/ablations.py:fig1 --workdir=DIR --print_commands
  python -m alexnet_jax.tools.sweep --config=configs/ablations.py:fig1 --workdir=DIR --collect

One workdir per point and seed (`DIR/<labels>/seed<k>`); a point's seeds train together
(side by side in worker processes on a CPU, the same workers for every point, or stepped together
in one vmapped program on GPU/TPU). Resumable for free: a finished point (its results) is skipped,
an interrupted one resumes from its checkpoint, a failed one is recorded (with the reason) and
skipped on the next run unless --retry_failed.
At the end: DIR/results.csv (one row per run), DIR/curves.csv (every logged step of every run),
DIR/results.md (per point and per effect, intervals over seeds and test images, censored epochs
to each threshold, Holm verdicts, diagnostics: alexnet_jax/tools/report.py) and the figures
DIR/<grid>_training_error.png and DIR/ablation_deltas.png. A grid with
`lr_search_rates` (Fig. 1) first searches each point's learning rate (alexnet_jax/tools/lr_search.py).
"""

from __future__ import annotations  # grid.Point in signatures: not loaded for --help.

import datetime
import functools
import pathlib
import statistics
import sys
import time

from absl import app
from absl import flags
from absl import logging
from etils import epy

from alexnet_jax import cli
from alexnet_jax import errors

with epy.lazy_imports():  # Loaded on first use: --help answers before jax loads.
    from alexnet_jax import workdirs
    from alexnet_jax.tools import grid
    from alexnet_jax.tools import lr_search
    from alexnet_jax.tools import report

FLAGS = flags.FLAGS


class Preempted(Exception):
    """A point's run stopped on SIGTERM/SIGINT after saving its checkpoint; the sweep stops."""


def run_point(sweep, point: grid.Point, root, *, retry_failed: bool = False) -> dict:
    """One point and seed (a run of Fig. 1's search): `run_seeds` with that seed alone."""
    return run_seeds(sweep, [point], root, retry_failed=retry_failed)[0]


def run_seeds(sweep, points: list, root, *, retry_failed: bool = False) -> list:
    """Trains the seeds of one grid point (`points` share a name) that have not finished (nor
    failed, unless `retry_failed`); returns their rows. A diverged seed is a result (its
    failure record; the grid goes on); a user's error or the machine failing stops the grid in one
    line, recording nothing (a rerun resumes); a preempted run raises Preempted (its checkpoint
    resumes it next time)."""
    from alexnet_jax import train  # Heavy; not needed for --print_commands.
    root = pathlib.Path(root)
    group = root / points[0].name
    grid.check_definition(sweep, points[0], group)  # Refuses a changed base or overrides.
    missing = [p for p in points if workdirs.read_results(root / p.dirname) is None
               and (retry_failed or workdirs.read_failure(root / p.dirname) is None)]
    if missing:
        for p in missing:
            workdirs.clear_failure(root / p.dirname)
        config = grid.point_config(sweep, missing[0])
        config.num_seeds = len(missing)
        logging.info('%s: training seeds %s.', points[0].name, [p.seed for p in missing])
        try:
            out = train.train_and_evaluate(config, str(group), seeds=[p.seed for p in missing])
        except cli.UserError:  # The user's to fix (data, workdir in use, disk): stop, one line.
            raise
        except Exception as e:  # pylint: disable=broad-except  (re-raised: one line or a bug)
            # Only a diverged run is a result (its seed recorded it): the machine failing
            # (a full disk, memory) stops the grid, records nothing, and a rerun resumes it;
            # anything else is a bug and keeps its traceback.
            failure = errors.environment_failure(e, points[0].name)
            if failure is None:
                raise
            raise failure from e
        if 'preempted_at_step' in out or any('preempted_at_step' in r for r in out.values()
                                             if isinstance(r, dict)):
            raise Preempted(f'{points[0].name} preempted')
    return [grid.result_row(sweep, p, root / p.dirname) for p in points]


def run_grid(sweep, points: list, root, *, retry_failed: bool = False) -> list:
    """Every point's seeds, one point after another, each announced with the grid's progress:
    'point 2/6 relu_nolrn, seeds 0-2, ETA 0:04:10' (the mean time of the points trained so far;
    finished points are skipped and not counted)."""
    rows, names, durations = [], list(dict.fromkeys(p.name for p in points)), []
    for i, name in enumerate(names, 1):
        group = [p for p in points if p.name == name]
        done = all(workdirs.read_results(pathlib.Path(root) / p.dirname) is not None
                   for p in group)
        eta = (str(datetime.timedelta(seconds=round(
            statistics.mean(durations) * (len(names) - i + 1)))) if durations else '-')
        logging.info('point %d/%d %s, seeds %s, ETA %s%s', i, len(names), name,
                     _span([p.seed for p in group]), eta, ' (finished)' if done else '')
        started = time.monotonic()
        rows += run_seeds(sweep, group, root, retry_failed=retry_failed)
        if not done:
            durations.append(time.monotonic() - started)
    return rows


def _span(seeds: list) -> str:
    """[0, 1, 2] -> '0-2'; seeds that are not a range, listed."""
    contiguous = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    return f'{seeds[0]}-{seeds[-1]}' if contiguous and len(seeds) > 1 else ','.join(map(str, seeds))


def print_commands(sweep, points, search, root) -> None:
    """One launch.py line per run; with a learning-rate search, its runs first, and the grid's
    own runs once ROOT/lr_search.json holds the choices (else a note on stderr)."""
    lines = [grid.command(sweep, p, lr_search.root_of(root)) for p in search]
    if search:
        saved = pathlib.Path(root) / 'lr_search.json'
        if not saved.exists():
            print(f'# The grid\'s own runs need the search\'s rates: run these, then the sweep '
                  f'(or rerun with --print_commands once {saved} exists).', file=sys.stderr)
            points = []
        else:
            choices = {k: v['chosen'] for k, v in lr_search.read(saved).items()}
            points = lr_search.apply(points, choices)
    print('\n'.join(lines + [grid.command(sweep, p, root) for p in points]))


def collect(sweep, points, root) -> None:
    """The report of the runs under `root` as they stand (made from --print_commands' lines by a
    scheduler, or a sweep still running): results.csv/md, curves.csv and the figures, with the
    runs not finished yet counted as missing."""
    rows = [grid.result_row(sweep, p, root / p.dirname) for p in points]
    if not any(r['status'] == 'done' for r in rows):
        cli.fail(f'no finished run of this grid under {root}: run the lines of --print_commands '
                 f'(each writes {root}/<point>/seed<k>), then --collect.', code=1)
    print(report.write(sweep, rows, root))
    for path in report.plot_figures(sweep, rows, root):
        print(f'wrote {path}')


@cli.one_line_errors
def main(argv):
    del argv
    sweep = FLAGS.config
    if sweep is None or 'axes' not in sweep:
        cli.fail('--config must be an ablation grid, e.g. --config=configs/ablations.py:pool')
    grid.check_sweep(sweep)
    points = grid.expand(sweep)
    root = pathlib.Path(cli.local_path(FLAGS.workdir, '--workdir'))
    search = lr_search.all_search_points(sweep) if lr_search.enabled(sweep) else []
    if FLAGS.print_commands:
        print_commands(sweep, points, search, root)
        return
    if FLAGS.collect:  # (A point's directory does not depend on its searched rate.)
        collect(sweep, points, root)
        return
    from alexnet_jax import validation
    base = pathlib.Path(cli.split_config_spec(sweep.base)[0])
    if not (base if base.is_absolute() else grid.REPO / base).is_file():
        cli.fail(f'config.base={sweep.base!r}: no such config file; e.g. '
                 f'--config.base=configs/alexnet.py:digits')
    try:  # The base config file's own errors (a bad variant), as cli.parse_flags treats them.
        grid.load_base_config(sweep.base)
    except (AttributeError, KeyError, ValueError, TypeError) as e:
        cli.fail(f'config.base={sweep.base!r} does not load ({type(e).__name__}: '
                 f'{" ".join(str(e).split())})')
    for p in search + points:  # Every point's config is checked before any training starts.
        try:
            validation.validate_config(grid.point_config(sweep, p))
        except (validation.ConfigError, KeyError) as e:
            cli.fail(f'grid point {p.name}: {e}')
    root.mkdir(parents=True, exist_ok=True)
    cli.use_compilation_cache()  # Each point's seeds after the first compile nothing.
    from alexnet_jax import seed_workers  # Heavy; not needed for --print_commands.
    try:
        with seed_workers.shared_workers():  # One set of seed worker processes for every point.
            notes = []
            if search:  # Fig. 1's protocol: each point trains at the rate its search found fastest.
                lr_search.check_recorded(sweep, root, points)  # Before anything is rewritten.
                choices = lr_search.run(sweep, root, functools.partial(
                    run_seeds, retry_failed=FLAGS.retry_failed))
                print((root / 'lr_search.md').read_text())
                points = lr_search.apply(points, choices)
                notes = ['Learning rates (lr_search.md): ' + ', '.join(
                    f'{name} {c["rate"]:g}' for name, c in choices.items()) + '.']
            rows = run_grid(sweep, points, root, retry_failed=FLAGS.retry_failed)
    except Preempted as e:  # SIGTERM/SIGINT: its checkpoint is saved; exit 0, like launch.py.
        print(f'Sweep stopped: {e}; rerun the same grid.command to resume.')
        return
    print(report.write(sweep, rows, root, notes))
    for path in report.plot_figures(sweep, rows, root):
        print(f'wrote {path}')


if __name__ == '__main__':
    cli.define_config_flag('configs/ablations.py')
    flags.DEFINE_string('workdir', None, 'Root directory: one subdirectory per point.', required=True)
    flags.DEFINE_bool('print_commands', False, 'Print one launch.py line per point and seed (a '
                      'scheduler runs them); run nothing.')
    flags.DEFINE_bool('collect', False, 'Write the report (results.csv/md, curves.csv, figures) '
                      'of the runs under --workdir as they stand; train nothing.')
    flags.DEFINE_bool('retry_failed', False, 'Run points that failed before again.')
    app.run(main, flags_parser=cli.parse_flags)
