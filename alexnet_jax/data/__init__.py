"""What feeds the train and eval steps: TFDS sources and builders, host augmentation, the
tf.data pipeline, device-resident small data sets, and the on-device normalisation.

Every function given to tf.data (map, filter, flat_map) is marked
`tf.autograph.experimental.do_not_convert`: its control flow is explicit (`tf.cond`), so
autograph has nothing to convert, and converting would write a `__autograph_generated_file*.py`
per function (and every function it calls) to the temp directory, removed only by an atexit
hook, which a killed process (or one that ends with os._exit) never runs."""
