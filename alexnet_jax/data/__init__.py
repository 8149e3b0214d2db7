"""What feeds the train and eval steps: TFDS sources and builders, host augmentation, the
tf.data pipeline, device-resident small data sets, and the on-device normalisation."""
