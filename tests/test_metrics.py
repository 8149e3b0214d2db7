"""The Recorder: metrics.jsonl as written, and learning_curves.png redrawn within its time share."""

import json
import time

from alexnet_jax import metrics
from alexnet_jax import plots
from alexnet_jax import workdirs


def test_quick_evals_redraw_the_plot_rarely_and_close_draws_the_last(tmp_path, monkeypatch):
    drawn = []  # The history each real drawing saw, as (last val step, seconds it took).

    def learning_curves(history, path):
        start = time.monotonic()
        real(history, path)
        time.sleep(0.05)  # A drawing that costs something, as on a busy machine.
        drawn.append((max(r['step'] for r in history if r['split'] == 'val'),
                      time.monotonic() - start))
    real = plots.learning_curves
    monkeypatch.setattr(plots, 'learning_curves', learning_curves)

    recorder = metrics.Recorder(tmp_path, num_steps=40, steps_per_epoch=2, batch_size=8)
    for step in range(1, 41):  # An eval every step, far quicker than DRAW_SHARE allows.
        recorder.write(step, 'val', {'loss': 1.0 / step, 'top1': 0.5, 'top5': 0.9})
    assert drawn[0][0] == 1  # The first eval is drawn at once.
    assert 1 <= len(drawn) < 40
    recorder.close()
    assert drawn[-1][0] == 40  # close() draws what the throttle skipped.
    assert (tmp_path / 'learning_curves.png').stat().st_size > 0
    records = [json.loads(l) for l in (tmp_path / workdirs.METRICS).read_text().splitlines()]
    assert [r['step'] for r in records] == list(range(1, 41))  # Every eval is still recorded.


def test_slow_evals_redraw_every_time(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, 'DRAW_SHARE', 0.5)  # Evals 2x the drawing apart: each drawn.
    count = []
    real = plots.learning_curves
    monkeypatch.setattr(plots, 'learning_curves',
                        lambda history, path: (count.append(1), real(history, path)))
    recorder = metrics.Recorder(tmp_path, num_steps=3, steps_per_epoch=1, batch_size=8)
    for step in range(1, 4):
        recorder.write(step, 'val', {'loss': 1.0, 'top1': 0.5, 'top5': 0.9})
        last = time.monotonic() - recorder.drawn_at
        time.sleep(max(0.0, recorder.draw_seconds / metrics.DRAW_SHARE - last) + 0.01)
    recorder.close()
    assert len(count) == 3  # Each eval drawn; close() has nothing left to draw.
