"""The minimal train step the benchmarks compare the project's step against (no flags here,
so every benchmark script can import it)."""

import jax
import optax


def plain_step_fn(model, tx, donate: bool = False):
    """The minimal step: forward with dropout, cross-entropy, grads, optimizer. Nothing else."""
    def step(params, opt_state, images, labels, key):
        def loss_fn(p):
            logits = model.apply({'params': p}, images, train=True, rngs={'dropout': key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return jax.jit(step, donate_argnums=(0, 1) if donate else ())
