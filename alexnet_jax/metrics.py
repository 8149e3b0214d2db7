"""Where the loop's numbers go: clu writers (TensorBoard + log), the workdir's metrics record,
the console line with ETA, the learning curves and the results (process 0 writes; workdirs.py
names the files). Each console line is short: the full numbers go to the files.

Steps/s come from clu's `periodic_actions.ReportProgress` (also the work unit's progress note),
measured between two logged steps; the ETA leaves out the first of these intervals, which holds
the compilation, and takes the median of the others. clu's writers import TensorFlow (its
summary writer): where it is missing (a GPU image with jax alone) the numbers go to the metrics
record and the log only."""

import time

from absl import logging
from etils import epath
import jax

from alexnet_jax import diagnostics
from alexnet_jax import plots
from alexnet_jax import workdirs

try:
    from clu import metric_writers
    from clu import periodic_actions
except ImportError:  # No TensorFlow: see the module doc.
    metric_writers = periodic_actions = None

DRAW_SHARE = 0.05  # At most this share of the wall time goes to redrawing the plot.


class _Kept:
    """The writer ReportProgress reports to: keeps its last scalars (steps_per_sec) for the
    console line and the metrics record, which write them under their own names."""

    def __init__(self):
        self.scalars = {}

    def write_scalars(self, step, scalars):
        del step
        self.scalars.update(scalars)


class _NoWriter:
    """TensorBoard's place where TensorFlow is missing: the metrics record and the log keep all."""

    def write_scalars(self, step, scalars):
        del step, scalars

    def flush(self):
        pass

    def close(self):
        pass


class _Progress:
    """ReportProgress's steps/s where clu is missing: between two calls, to `writer`."""

    def __init__(self, writer):
        self.writer, self.last = writer, None

    def __call__(self, step: int, t: float | None = None) -> None:
        now = time.monotonic() if t is None else t
        if self.last is not None and now > self.last[1]:
            rate = (step - self.last[0]) / (now - self.last[1])
            self.writer.write_scalars(step, {'steps_per_sec': rate})
        self.last = (step, now)


class Recorder:
    def __init__(self, workdir, *, num_steps: int, steps_per_epoch: int, batch_size: int,
                 plot: bool = True, label: str = '', elapsed_before: float = 0.0):
        self.workdir, self.label = epath.Path(workdir), label  # label: 'seed 3: ' of several.
        # Wall seconds of the parts of the run before this one (a checkpoint's 'elapsed').
        self.elapsed_before, self.opened = elapsed_before, time.monotonic()
        self.lead = jax.process_index() == 0
        self.num_steps, self.steps_per_epoch, self.batch_size = num_steps, steps_per_epoch, batch_size
        self.plot = plot and self.lead
        if self.lead:
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.writer = (metric_writers.create_default_writer(
            str(self.workdir), just_logging=not self.lead) if metric_writers else _NoWriter())
        self.history = workdirs.read_metrics(self.workdir) if self.lead else []
        self.kept = _Kept()  # every_secs=0: reports at each logged step (it is called at those).
        self.progress = (periodic_actions.ReportProgress(
            num_train_steps=num_steps, writer=self.kept, every_secs=0.0) if periodic_actions
                         else _Progress(self.kept))
        self.started = time.monotonic()  # Until the first log, the steps since count from here.
        self.steady_rates = []  # Steps/s of the logged intervals after the first (compiling) one.
        self.drawn_at, self.draw_seconds, self.undrawn = -float('inf'), 0.0, False

    def write(self, step: int, split: str, scalars: dict, num_steps_since: int = 0) -> None:
        scalars = dict(scalars)
        if split == 'train':
            first = self.started is not None
            if first:  # A first call only starts ReportProgress's clock.
                self.progress(step - num_steps_since, self.started)
                self.started = None
            self.progress(step)
            rate = self.kept.scalars.get('steps_per_sec', 0.0)
            scalars.update(steps_per_second=rate, images_per_second=rate * self.batch_size)
            if not first and rate > 0:
                self.steady_rates.append(rate)
            logging.info('%sstep %d/%d (%.0f%%)  loss %.4f  top1 %.2f%%  lr %.3g  %.1f steps/s  '
                         '%.0f img/s  ETA %s', self.label, step, self.num_steps,
                         100 * step / self.num_steps, scalars['loss'], 100 * scalars['top1'],
                         scalars['lr'], rate, rate * self.batch_size, self.eta(step))
        else:
            logging.info('%sstep %d %s: loss %.4f  top1 %.2f%%  top5 %.2f%%', self.label, step,
                         split, scalars['loss'], 100 * scalars['top1'], 100 * scalars['top5'])
        self._append(step, split, scalars)
        if split == 'val' and self.plot:
            self.undrawn = True
            self.draw()

    def eta(self, step: int) -> str:
        """The time the remaining steps take at the median steady rate; '-' until two are
        measured (the first interval holds the train step's compilation, and one of the next
        the first evaluation's: the median of two or more leaves it out)."""
        if len(self.steady_rates) < 2:
            return '-'
        rates = sorted(self.steady_rates)
        seconds = (self.num_steps - step) / rates[len(rates) // 2]
        return time.strftime('%H:%M:%S', time.gmtime(seconds))

    def write_diagnostics(self, step: int, stats: dict) -> None:
        """diagnostics.measure's numbers at `step` (0: the weights at init); the log gets their
        summary line, the metrics record all of them."""
        logging.info('%sstep %d diagnostics: %s', self.label, step, diagnostics.summary(stats))
        self._append(step, 'diagnostics', stats)

    def diagnostics(self) -> dict:
        """{'init': ..., 'final': ...}: the first and last diagnostics records (a resumed run's
        init ones come from the metrics record)."""
        found = [{k: v for k, v in h.items() if k not in ('step', 'epoch', 'split',
                                                          'wall_seconds')}
                 for h in self.history if h['split'] == 'diagnostics']
        return {'init': found[0], 'final': found[-1]} if found else {}

    def _append(self, step: int, split: str, scalars: dict) -> None:
        """To TensorBoard, and (process 0) a metrics record with the run's wall seconds
        so far (those of earlier parts of a resumed run included)."""
        self.writer.write_scalars(step, {f'{split}/{k}': v for k, v in scalars.items()})
        if not self.lead:
            return
        record = {'step': step, 'epoch': step / self.steps_per_epoch, 'split': split,
                  'wall_seconds': self.elapsed_before + time.monotonic() - self.opened, **scalars}
        workdirs.append_metrics(self.workdir, record)
        self.history.append(record)

    def draw(self, force: bool = False) -> None:
        """Redraws the learning curves; unless `force`, only once DRAW_SHARE of the time since
        the last drawing would cover it: a small run evaluating every second or two would
        otherwise spend a fifth of its time in matplotlib. close() draws the last evals."""
        now = time.monotonic()
        if not self.undrawn or (not force and
                                self.draw_seconds > DRAW_SHARE * (now - self.drawn_at)):
            return
        plots.learning_curves(self.history, workdirs.curves_path(self.workdir))
        self.drawn_at = time.monotonic()
        self.draw_seconds, self.undrawn = self.drawn_at - now, False

    def write_results(self, results: dict) -> None:
        logging.info('%sResults: test top-1 %.2f%%, top-5 %.2f%%, loss %.4g; %d steps, %.1f s '
                     '(all in %s)', self.label, 100 * results['test_top1'],
                     100 * results['test_top5'], results['test_loss'], results['steps'],
                     results['train_seconds'], self.workdir / workdirs.RESULTS)
        workdirs.write_results(self.workdir, results)

    def close(self) -> None:
        if self.plot:
            self.draw(force=True)
        self.writer.flush()
        self.writer.close()
