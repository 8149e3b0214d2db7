"""Figures: the learning curves of one run (train / validation loss and error vs epoch), and
`save`, how every figure is written (whole or not at all)."""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from alexnet_jax import records  # noqa: E402


def learning_curves(history: list, path) -> None:
    """Plots records {'split', 'epoch', 'loss', 'top1'} of splits 'train' and 'val' to `path`."""
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (('train', '-'), ('val', 'o-')):
        rows = [r for r in history if r['split'] == split]
        if not rows:
            continue
        epochs = [r['epoch'] for r in rows]
        ax_loss.plot(epochs, [r['loss'] for r in rows], style, label=split)
        ax_err.plot(epochs, [100 * (1 - r['top1']) for r in rows], style, label=split)
    for ax, label in ((ax_loss, 'loss'), (ax_err, 'top-1 error (%)')):
        ax.set_xlabel('epoch')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save(fig, path, dpi=100)


def save(fig, path, **savefig) -> None:
    """`fig` as a PNG at `path` through records.replacing, then closed."""
    try:
        with records.replacing(path) as tmp, tmp.open('wb') as f:
            fig.savefig(f, format='png', **savefig)
    finally:
        plt.close(fig)
