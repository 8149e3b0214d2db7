r"""The paper's pictures of what the net learned, as PNGs.

  python -m alexnet_jax.tools.figures --checkpoint=/tmp/digits --output_dir=/tmp/digits/figures
  python -m alexnet_jax.tools.figures --checkpoint=/tmp/bvlc --config=configs/alexnet.py \
      --max_train=50000 --output_dir=/tmp/bvlc_figures     # ImageNet from its config's data

  conv1_kernels.png   Fig. 3: every conv1 kernel, each min-max normalised on its own, as colour
                      (greyscale for 1-channel inputs); with groups=2 the two groups (the paper's
                      GPUs) as two panels side by side.
  neighbours_fc7.png  Fig. 4 (right): query images (first column) and their five nearest
                      training images by Euclidean distance between fc7 activations.

The functions take arrays, so they work (and are tested) without data; `main` wires a
checkpoint (evaluation.load) and the input pipeline to them.
"""

import math
import pathlib

from absl import app
from absl import flags
from etils import epy
import matplotlib
matplotlib.use('Agg')
import numpy as np  # pylint: disable=wrong-import-position

from alexnet_jax import cli  # pylint: disable=wrong-import-position

with epy.lazy_imports():  # Loaded on first use: --help answers before jax loads.
    import matplotlib.pyplot as plt
    from alexnet_jax import evaluation
    from alexnet_jax import plots
    from alexnet_jax.tools import features


# --- Fig. 3: conv1 kernels ---------------------------------------------------------------------

def normalise_kernels(kernel: np.ndarray) -> np.ndarray:
    """HWIO kernel -> [out, H, W, 3] in [0, 1], each kernel min-max scaled on its own.

    3 input channels are shown as RGB; any other number as grey (their mean).
    """
    k = np.moveaxis(np.asarray(kernel, np.float64), -1, 0)  # [out, H, W, in]
    if k.shape[-1] != 3:
        k = np.repeat(k.mean(-1, keepdims=True), 3, axis=-1)
    lo = k.min(axis=(1, 2, 3), keepdims=True)
    span = k.max(axis=(1, 2, 3), keepdims=True) - lo
    return (k - lo) / np.where(span > 0, span, 1.0)


def mosaic(images: np.ndarray, cols: int | None = None, gap: int = 1, fill: float = 1.0) -> np.ndarray:
    """[n, h, w, 3] -> one [rows*(h+gap)-gap, cols*(w+gap)-gap, 3] image, row-major, `fill` gaps."""
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, c), fill, images.dtype)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        out[r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = image
    return out


def conv1_panels(kernel: np.ndarray, groups: int = 1, cols: int | None = None) -> list:
    """One mosaic per group of conv1's output kernels (contiguous blocks, as grouped convs split)."""
    kernels = normalise_kernels(kernel)
    if len(kernels) % groups:
        raise ValueError(f'{len(kernels)} kernels do not split into {groups} groups.')
    per = len(kernels) // groups
    cols = cols or math.ceil(math.sqrt(per))
    return [mosaic(kernels[g * per:(g + 1) * per], cols) for g in range(groups)]


def plot_conv1(kernel: np.ndarray, path, groups: int = 1, title: str | None = None):
    """Writes Fig. 3 to `path` (one panel per group, side by side); returns the path."""
    panels = conv1_panels(kernel, groups)
    fig, axes = plt.subplots(1, groups, figsize=(4.2 * groups, 4.6), squeeze=False)
    for g, (ax, panel) in enumerate(zip(axes[0], panels)):
        ax.imshow(panel, interpolation='nearest')
        ax.set_axis_off()
        if groups > 1:
            ax.set_title(f'group {g + 1} (GPU {g + 1}): {len(kernel[0, 0, 0]) // groups} kernels',
                         fontsize=9)
    k = kernel.shape
    fig.suptitle(title or f'conv1: {k[3]} kernels of {k[0]}x{k[1]}x{k[2]}', fontsize=10)
    return _save(fig, path)


# --- Fig. 4 (right): nearest neighbours by fc7 ---------------------------------------------------

def nearest_neighbours(queries: np.ndarray, database: np.ndarray, k: int = 5,
                       exclude: np.ndarray | None = None, chunk: int = 4096):
    """(indices [q, k], distances [q, k]) of the k database rows nearest to each query (L2).

    exclude[i] (optional) is a database index never returned for query i (the query itself when
    both come from the same split). The database is scanned in chunks of `chunk` rows.
    """
    q = np.asarray(queries, np.float64).reshape(len(queries), -1)
    k = min(k, len(database) - (exclude is not None))
    best_d = np.full((len(q), 0), np.inf)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, len(database), chunk):
        d = np.asarray(database[start:start + chunk], np.float64).reshape(-1, q.shape[1])
        dist = ((q ** 2).sum(1)[:, None] - 2 * q @ d.T + (d ** 2).sum(1)[None, :]).clip(min=0)
        idx = np.arange(start, start + len(d))
        if exclude is not None:
            dist[np.asarray(exclude)[:, None] == idx[None, :]] = np.inf
        best_d = np.concatenate([best_d, dist], 1)
        best_i = np.concatenate([best_i, np.broadcast_to(idx, dist.shape)], 1)
        order = np.argsort(best_d, axis=1, kind='stable')[:, :k]
        best_d, best_i = np.take_along_axis(best_d, order, 1), np.take_along_axis(best_i, order, 1)
    return best_i, np.sqrt(best_d)


def display(image: np.ndarray) -> np.ndarray:
    """A (normalised) image -> [h, w, 3] in [0, 1] for showing (min-max; grey if 1 channel)."""
    image = np.asarray(image, np.float64)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] != 3:
        image = np.repeat(image.mean(-1, keepdims=True), 3, -1)
    span = image.max() - image.min()
    return (image - image.min()) / (span if span > 0 else 1.0)


def plot_neighbours(query_images, neighbour_images, path, distances=None, labels=None):
    """Writes Fig. 4 (right): row i = query i, then its neighbours [q, k, H, W, C] in order."""
    q, k = len(query_images), neighbour_images.shape[1]
    fig, axes = plt.subplots(q, k + 1, figsize=(1.3 * (k + 1), 1.3 * q + 0.4), squeeze=False)
    for i in range(q):
        row = [query_images[i]] + list(neighbour_images[i])
        for j, (ax, image) in enumerate(zip(axes[i], row)):
            ax.imshow(display(image), interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            text = [] if labels is None else [f'label {labels[i][j]}']
            if j and distances is not None:
                text.append(f'd={distances[i][j - 1]:.3g}')
            if text:
                ax.set_xlabel(', '.join(text), fontsize=6)
        axes[i][0].set_ylabel(f'query {i + 1}', fontsize=7)
    axes[0][0].set_title('query', fontsize=8)
    for j in range(1, k + 1):
        axes[0][j].set_title(f'#{j}', fontsize=8)
    fig.suptitle('Nearest training images by fc7 Euclidean distance', fontsize=9)
    return _save(fig, path)


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plots.save(fig, path, dpi=120, bbox_inches='tight')
    return path


# --- wiring: checkpoint + data -------------------------------------------------------------------

def gather_images(batches, indices) -> dict:
    """{index: image} for the wanted positions (padding skipped) of a pass over `batches`."""
    wanted, found, position = set(int(i) for i in indices), {}, 0
    for batch in batches:
        images = np.asarray(batch['image'])
        images = images.reshape((-1,) + images.shape[2:])
        mask = np.asarray(batch['mask']).reshape(-1).astype(bool)
        for image in images[mask]:
            if position in wanted:
                found[position] = image
            position += 1
        if len(found) == len(wanted):
            break
    return found


def neighbour_figure(config, model, variables, path, num_queries=8, k=5, query_split=None,
                     train_split=None, max_train=None, layer='fc7'):
    train_split = train_split or config.data.train_split
    query_split = query_split or config.data.test_split
    train = features.split_features(config, model, variables, train_split, layer, max_train)
    query = features.split_features(config, model, variables, query_split, layer, num_queries,
                                     keep_images=True)
    exclude = query['ids'] if query_split == train_split else None
    idx, dist = nearest_neighbours(query['features'], train['features'], k, exclude)
    images = gather_images(features.split_batches(config, train_split, max_train), idx.reshape(-1))
    neighbours = np.stack([[images[int(i)] for i in row] for row in idx])
    labels = [[q] + list(train['labels'][row]) for q, row in zip(query['labels'], idx)]
    return plot_neighbours(query['images'], neighbours, path, dist, labels)


def define_flags() -> None:
    flags.DEFINE_string('checkpoint', None, 'A converted checkpoint or a training workdir.')
    flags.DEFINE_string('output_dir', None, 'Where to write the PNGs (default: CHECKPOINT/figures).')
    flags.DEFINE_integer('num_queries', 8, 'Fig. 4: query images (the first of --query_split).')
    flags.DEFINE_string('query_split', None, 'Default: the config\'s data.test_split.')
    flags.DEFINE_string('train_split', None, 'Searched for neighbours; default data.train_split.')
    flags.DEFINE_integer('max_train', None, 'Search only the first N training examples.')
    flags.DEFINE_bool('neighbours', True, 'Fig. 4 too (needs the data); False: Fig. 3 only.')
    cli.define_config_flag(default=None)  # Optional: another data source.


@cli.one_line_errors
def main(argv):
    del argv
    FLAGS = flags.FLAGS  # pylint: disable=invalid-name
    if not FLAGS.checkpoint:
        cli.fail('--checkpoint is required: python -m alexnet_jax.tools.figures --checkpoint=DIR')
    checkpoint = cli.local_path(FLAGS.checkpoint, '--checkpoint')
    out = pathlib.Path(cli.local_path(FLAGS.output_dir, '--output_dir')
                       or pathlib.Path(checkpoint) / 'figures')
    config, model, variables = evaluation.load(checkpoint)
    if 'conv1' not in variables['params']:
        raise cli.InputError(f'{checkpoint}: the net has no conv1 layer.')
    groups = config.model.get('groups', 1)
    print('Wrote', plot_conv1(np.asarray(variables['params']['conv1']['kernel']),
                              out / 'conv1_kernels.png', groups))
    if FLAGS.neighbours:
        if FLAGS.config is not None:
            config = evaluation.with_data_from(config, cli.validated_config().data)
        print('Wrote', neighbour_figure(
            config, model, variables, out / 'neighbours_fc7.png', FLAGS.num_queries,
            query_split=FLAGS.query_split, train_split=FLAGS.train_split,
            max_train=FLAGS.max_train))


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
