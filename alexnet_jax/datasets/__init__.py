"""Offline data sources. Importing this package registers the `digits` TFDS builder.

`digits` is the embedded real data set: the UCI handwritten digits that scikit-learn ships, so a
first-time user trains on real images with no download. `downsampled` is the paper's 256x256
copy of imagenet2012 or an image folder, prepared once (downsampled.py). `fake` (synthetic, any
shape) lives in `fake.py`; it is a plain tf.data source because it has nothing to prepare.
"""

from alexnet_jax.datasets.digits import Digits  # noqa: F401  (registers 'digits' with TFDS)
from alexnet_jax.datasets.downsampled import Downsampled  # noqa: F401  (registers 'downsampled')
