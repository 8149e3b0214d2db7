"""Figures: the learning curves of one run (train / validation loss and error vs epoch)."""

from etils import epath
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


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
    with epath.Path(path).open('wb') as f:
        fig.savefig(f, format='png', dpi=100)
    plt.close(fig)
