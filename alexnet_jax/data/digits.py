"""`digits`: the UCI handwritten digits (scikit-learn's copy) as a TFDS data set, built offline.

All 1,797 real 8x8 grayscale images are kept at their original size (0..16 rescaled to 0..255,
uint8, one channel); the pipeline resizes them to the net's input. The split into train /
validation / test is stratified by class and seeded, so it is the same on every machine, and
disjoint; `index` is the row in `sklearn.datasets.load_digits()`, so anyone can check a label.
Validation exists because the paper's schedule divides the learning rate when *validation*
error plateaus; test is held out for the final number.
"""

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

SPLIT_SEED = 0            # Fixed: the split is part of the data set's definition.
TEST_FRACTION = 0.2       # 360 of 1,797 examples.
VALIDATION_FRACTION = 0.1  # 180 examples (of the 1,797); train keeps the other 1,257.


def load_sklearn():
    """(images uint8 [1797, 8, 8, 1] in 0..255, labels int64 [1797]) from scikit-learn's copy."""
    from sklearn import datasets  # Imported here: only building the data set needs it.
    digits = datasets.load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


def split_indices(labels, seed: int = SPLIT_SEED):
    """{'train', 'validation', 'test'} -> sorted row indices; stratified, seeded, disjoint."""
    from sklearn.model_selection import train_test_split
    rows = np.arange(len(labels))
    rest, test = train_test_split(rows, test_size=TEST_FRACTION, stratify=labels,
                                  random_state=seed)
    val_size = round(VALIDATION_FRACTION * len(labels))
    train, validation = train_test_split(rest, test_size=val_size, stratify=labels[rest],
                                         random_state=seed)
    return {'train': np.sort(train), 'validation': np.sort(validation), 'test': np.sort(test)}


class Digits(tfds.core.GeneratorBasedBuilder):
    """The UCI handwritten digits (8x8, 10 classes), from scikit-learn; no download."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'All 1,797 images; stratified 1257/180/360 split, seed 0.'}

    # No checksums file: nothing is downloaded. Saying so also keeps TFDS from resolving the
    # module's resource path, which needs `importlib_resources` (an optional etils extra).
    code_path = None

    def _log_download_bytes(self) -> None:  # TFDS prints "Downloading ... Unknown size".
        logging.info('Building the embedded digits set in %s (nothing to download).',
                     self.data_dir)

    def _log_download_done(self) -> None:  # (And "downloaded and prepared": it was not.)
        pass

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=(8, 8, 1)),
                'label': tfds.features.ClassLabel(num_classes=10),
                'index': np.int64,  # Row in sklearn.datasets.load_digits().
            }),
            supervised_keys=('image', 'label'),
            homepage='https://archive.ics.uci.edu/dataset/80',
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: scikit-learn ships the data.
        images, labels = load_sklearn()
        return {name: self._generate_examples(images, labels, rows)
                for name, rows in split_indices(labels).items()}

    def _generate_examples(self, images, labels, rows):
        for row in rows:
            yield int(row), {'image': images[row], 'label': labels[row], 'index': row}
