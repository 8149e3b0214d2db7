"""alexnet-jax: a faithful, fast AlexNet in JAX/Flax with one-command ablations."""
