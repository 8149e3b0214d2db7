"""alexnet-jax: a faithful, fast AlexNet in JAX/Flax with one-command ablations.

TensorFlow only decodes and augments on the host here. On CPUs with AVX-512/AMX (most cloud
hosts) it prints a oneDNN banner on stderr at import, whatever TF_CPP_MIN_LOG_LEVEL says, which
would break the promise that an error is one line. Every entry point imports this package
before TensorFlow, so the defaults are set here, once; a user's own values win.
"""

import os

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # The banner; no decode-rate loss measured.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')   # TF's INFO lines; its warnings still show.
