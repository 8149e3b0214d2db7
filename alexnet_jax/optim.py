"""Optimizers and learning-rate schedules from `config.optim` (optax).

The paper's update rule (Sec. 5), with momentum 0.9, weight decay 5e-4 and learning rate eps:

    v <- 0.9 v - 5e-4 * eps * w - eps * dL/dw        w <- w + v

is `add_decayed_weights` (on the masked parameters), then the learning rate, then the momentum
trace: eps multiplies each gradient as it enters v, so a learning-rate drop does not rescale
the old momentum. The rate is an `inject_hyperparams` hyperparameter: it lives in the optimizer
state, is checkpointed with it and read back for logging. The paper's 'plateau' schedule is
decided on the host at eval time by `Plateau`, which writes the rate into that state.
"""

import dataclasses
import re
from typing import Callable

from absl import logging
import jax
import numpy as np
import optax
from flax import traverse_util

from alexnet_jax import errors
from alexnet_jax import parallel

SCHEDULES = ('plateau', 'step', 'warmup_cosine', 'warmup_poly', 'constant')


def duration_steps(section, name: str, steps_per_epoch: int) -> int:
    """`<name>_steps` if set, else `<name>_epochs` * steps_per_epoch (rounded), as steps."""
    steps = section.get(f'{name}_steps')
    if steps is not None:
        return int(steps)
    epochs = section.get(f'{name}_epochs')
    return int(round((epochs or 0) * steps_per_epoch))


def create_schedule(o, steps_per_epoch: int, num_steps: int) -> Callable | float:
    """The learning rate as a function of the step (or a float, for 'plateau'/'constant')."""
    lr = o.learning_rate
    if o.schedule in ('plateau', 'constant'):
        return lr  # 'plateau': `Plateau` lowers it at eval time.
    if o.schedule == 'step':  # Caffe: lr * gamma ** (step // stepsize).
        return optax.exponential_decay(lr, duration_steps(o, 'decay_every', steps_per_epoch),
                                       o.decay_factor, staircase=True)
    if o.schedule == 'warmup_cosine':
        warmup = duration_steps(o, 'warmup', steps_per_epoch)
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, max(num_steps, warmup + 1), end_value=0.0)
    if o.schedule == 'warmup_poly':  # You et al.: warmup, then lr * (1 - t / T) ** poly_power.
        warmup = duration_steps(o, 'warmup', steps_per_epoch)
        decay = optax.polynomial_schedule(lr, 0.0, o.poly_power, max(num_steps - warmup, 1))
        if not warmup:
            return decay
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])
    raise errors.ConfigError(f'config.optim.schedule: {o.schedule!r} is not one of '
                             f'{list(SCHEDULES)}.')


def decay_mask(pattern: str):
    """A mask fn: True for params whose '/'-joined path matches `pattern` (e.g. 'kernel')."""
    regex = re.compile(pattern) if pattern else None

    def mask(params):
        flat = traverse_util.flatten_dict(params, sep='/')
        return traverse_util.unflatten_dict(
            {k: bool(regex and regex.search(k)) for k in flat}, sep='/')
    return mask


def _sgd(o, learning_rate, weight_decay):
    return optax.chain(
        optax.add_decayed_weights(weight_decay, decay_mask(o.weight_decay_mask)),
        optax.scale_by_learning_rate(learning_rate),
        optax.trace(decay=o.momentum, nesterov=o.nesterov),
    )


def _adam(o, learning_rate, weight_decay):  # L2 in the gradient, as the paper's SGD does.
    return optax.chain(
        optax.add_decayed_weights(weight_decay, decay_mask(o.weight_decay_mask)),
        optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
        optax.scale_by_learning_rate(learning_rate),
    )


def _adamw(o, learning_rate, weight_decay):  # Decoupled decay (Loshchilov & Hutter).
    return optax.adamw(learning_rate, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=weight_decay,
                       mask=decay_mask(o.weight_decay_mask))


def _lars(o, learning_rate, weight_decay):
    """LARS (You, Gitman & Ginsburg 2017): weight decay, then each masked layer's update scaled
    by its trust ratio trust_coefficient * ||w|| / ||g + wd * w||, then lr, then momentum."""
    return optax.lars(learning_rate, weight_decay, decay_mask(o.weight_decay_mask),
                      trust_coefficient=o.lars_trust_coefficient, eps=o.lars_eps,
                      trust_ratio_mask=decay_mask(o.lars_trust_ratio_mask),
                      momentum=o.momentum, nesterov=o.nesterov)


# name -> fn(config.optim, learning_rate, weight_decay) -> GradientTransformation.
# A new optimizer is one entry here plus its config fields ('lars': the lars_* fields).
OPTIMIZERS = {'sgd': _sgd, 'adam': _adam, 'adamw': _adamw, 'lars': _lars}


def create_optimizer(o, steps_per_epoch: int, num_steps: int,
                     freeze=()) -> optax.GradientTransformation:
    """The optimizer of `config.optim`. `freeze`'s layers get zero updates (`multi_transform`
    + `set_to_zero`): the optimizer keeps no state for them and clips only the others."""
    errors.check(o.optimizer in OPTIMIZERS, 'optim.optimizer',
                 f'{o.optimizer!r} is not one of {list(OPTIMIZERS)}.')
    build = OPTIMIZERS[o.optimizer]
    tx = optax.inject_hyperparams(lambda learning_rate, weight_decay: build(
        o, learning_rate, weight_decay))(
            learning_rate=create_schedule(o, steps_per_epoch, num_steps),
            weight_decay=o.weight_decay)
    if o.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
    frozen = frozen_layers(freeze)
    if frozen:
        tx = optax.multi_transform({'trainable': tx, 'frozen': optax.set_to_zero()},
                                   freeze_labels(frozen))
    return tx


def frozen_layers(freeze) -> tuple:
    """config.freeze as a tuple of names; 'conv1,conv2' (one command-line string) is split."""
    if isinstance(freeze, str):
        freeze = (freeze,)
    return tuple(n for entry in freeze or () for n in re.split(r'[,\s]+', entry) if n)


def freeze_labels(frozen: tuple):
    """params -> the same tree of 'frozen' / 'trainable' labels, by top-level layer name."""
    def labels(params):  # The one check of config.freeze's names: against the real params.
        unknown = [name for name in frozen if name not in params]
        errors.check(not unknown, 'freeze', f'{unknown} {"is" if len(unknown) == 1 else "are"} '
                     f'not a layer of this model; choose from {list(params)} '
                     '(e.g. --config.freeze=conv1,conv2).')
        return {layer: jax.tree.map(lambda _, f=layer in frozen: 'frozen' if f else 'trainable',
                                    tree) for layer, tree in params.items()}
    return labels


def _rate(_, value) -> bool:
    """The rate itself, not a schedule's step counter (a WrappedScheduleState named alike)."""
    return not isinstance(value, tuple)


def learning_rate(opt_state) -> jax.Array:
    """The `inject_hyperparams` learning rate inside `opt_state` (behind a clip or a freeze)."""
    return optax.tree_utils.tree_get(opt_state, 'learning_rate', filtering=_rate)


def set_learning_rate(opt_state, value):
    """`opt_state` with the learning rate replaced by `value` (placed as the old one was)."""
    return optax.tree_utils.tree_set(opt_state, _rate, learning_rate=value)


@dataclasses.dataclass
class Plateau:
    """The paper's schedule: the lr times `factor` when the validation error has not improved
    for `patience` evals. Ours, not optax.contrib.reduce_on_plateau: that one decides inside
    the step from a value passed at every update, while this rule sees one validation error
    per evaluation, on the host; its state goes into the checkpoint's meta."""
    factor: float = 0.1
    patience: int = 1
    min_delta: float = 0.0
    max_reductions: int = 3
    best: float = float('inf')
    num_bad: int = 0
    reductions: int = 0

    @classmethod
    def from_config(cls, o, state: dict | None = None):
        p = cls(o.plateau_factor, o.plateau_patience, o.plateau_min_delta,
                o.plateau_max_reductions)
        for k, v in (state or {}).items():
            setattr(p, k, float('inf') if k == 'best' and v is None else v)
        return p

    @property
    def scale(self) -> float:
        return self.factor ** self.reductions

    def update(self, val_error: float) -> bool:
        """Records one validation error; True if the learning rate was just lowered."""
        if val_error < self.best - self.min_delta:
            self.best, self.num_bad = float(val_error), 0
            return False
        self.num_bad += 1
        if self.num_bad >= self.patience and self.reductions < self.max_reductions:
            self.reductions += 1
            self.num_bad = 0
            return True
        return False

    def state(self) -> dict:
        best = None if self.best == float('inf') else self.best  # Strict JSON.
        return {'best': best, 'num_bad': self.num_bad, 'reductions': self.reductions}


def configured_learning_rate(state, o, plateau, steps_per_epoch: int, num_steps: int):
    """The configured rate (times the plateau reductions taken) into a restored state, for
    the schedules whose rate lives in the optimizer state: a rerun may lower it (logged). A
    schedule of the step (warmup_cosine, step, warmup_poly) that a changed rate, warmup or length
    reshaped is announced: the run goes on along the new one from here."""
    if o.schedule not in ('plateau', 'constant'):
        step = int(np.asarray(state.step))
        if step > 0:
            old = float(np.asarray(learning_rate(state.opt_state)))  # The last step's.
            new = float(create_schedule(o, steps_per_epoch, num_steps)(step - 1))
            if not np.isclose(old, new, rtol=1e-5, atol=1e-12):
                logging.warning('The %s learning-rate schedule changed: step %d trained at %g, '
                                'the config\'s schedule has %g there (a changed learning_rate, '
                                'warmup or length); the run follows the new one from here.',
                                o.schedule, step, old, new)
        return state
    old = np.asarray(learning_rate(state.opt_state))
    new = o.learning_rate * (plateau.scale if o.schedule == 'plateau' else 1.0)
    if np.isclose(old, new, rtol=1e-6, atol=0):
        return state
    logging.warning('Learning rate %g in the checkpoint -> %g (config.optim.learning_rate=%g%s).',
                    float(old), new, o.learning_rate,
                    f' x {plateau.scale:g} for {plateau.reductions} plateau reduction(s)'
                    if o.schedule == 'plateau' and plateau.reductions else '')
    return state.replace(opt_state=set_learning_rate(state.opt_state, np.asarray(new, old.dtype)))


def update_plateaus(plateaus: list, live: list, state, val: list, o, step: int,
                    replicate=parallel.replicate):
    """The paper's schedule, per seed: its lr / 10 when its validation error stops improving
    (`plateaus`: each seed's Plateau; a failed seed's, not `live`, is left alone); the rates go
    into the replicated state with a seed axis, in the same type and placement (no recompile:
    `replicate` places them as the loop placed the state)."""
    if o.schedule != 'plateau':
        return state
    lowered = [ok and p.update(1.0 - v['top1']) for p, ok, v in zip(plateaus, live, val)]
    if not any(lowered):
        return state
    lr = np.asarray([o.learning_rate * p.scale for p in plateaus], np.float32)
    logging.info('Validation error plateaued at step %d: learning rate -> %s.', step,
                 ', '.join(f'{x:g}' for x in lr))
    return state.replace(opt_state=set_learning_rate(state.opt_state, replicate(lr)))
