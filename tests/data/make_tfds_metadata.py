"""Writes tests/data/tfds_metadata: TFDS's dataset_info.json and features.json of imagenet2012 and
cifar10 with their real split sizes, so `tfds.testing.mock_data(data_dir=...)` stands in for a
prepared copy (the pip package ships no metadata). Run once; the output is checked in.

  python tests/data/make_tfds_metadata.py
"""

import os

import tensorflow_datasets as tfds

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tfds_metadata')
SPLITS = {'imagenet2012': {'train': 1_281_167, 'validation': 50_000, 'test': 100_000},
          'cifar10': {'train': 50_000, 'test': 10_000}}

if __name__ == '__main__':
    for name, splits in SPLITS.items():
        builder = tfds.builder(name, data_dir=OUT)
        builder.info.set_splits(tfds.core.SplitDict([
            tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0, filename_template=None)
            for s, n in splits.items()]))
        directory = os.path.join(OUT, name, str(builder.version))
        os.makedirs(directory, exist_ok=True)
        builder.info.write_to_directory(directory)
        print(directory, sorted(os.listdir(directory)))
