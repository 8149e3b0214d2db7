r"""The paper's ablations as grids: a base run plus the axes swept, in one place.

  python -m alexnet_jax.tools.sweep --config=configs/ablations.py --workdir=/tmp/ablations
  python -m alexnet_jax.tools.sweep --config=configs/ablations.py:pool --config.num_seeds=1 ...
  python -m alexnet_jax.tools.sweep --config=configs/ablations.py:fig1 --print_commands ...

Grids (the string after the colon):
  default  activation relu / tanh  x  LRN: off, on and a matched control at three strengths
           (Sec. 3.1, 3.3)
  pool     overlapping 3/2 vs non-overlapping 2/2 pooling     (Sec. 3.4)
  groups   the two-group net vs one group with half the kernels (Sec. 3.2)
  groups_columns  the same, the two-group net's columns on two devices (model_parallel=2)
  dropout  0.5 vs 0 in fc6/fc7                                 (Sec. 4.2)
  default  LRN's strength is an axis: alpha = LRN_ALPHAS (its divisor's spread p99 / p1 at init
           is measured and reported, diagnostics.py); the control `matched*` divides by LRN's own
           scale at init, a constant (models.lrn_layer), so LRN vs it isolates the normalisation
  fig1     Fig. 1 as the paper ran it: the four-layer CIFAR net (32/32/64), relu vs tanh,
           epochs to 50/25/10% training error; each activation first gets the learning rate
           that reaches 25% fastest (a search over `lr_search_rates`,
           alexnet_jax/tools/lr_search.py), then the seeds run at it; no weight decay, dropout or
           augmentation; cuda-convnet's initialisation (fig1_paper_init: the paper's N(0, 0.01)
           with biases of 1; fig1_he_init: He's). On the embedded digits (fig1_cifar10: the
           same on CIFAR-10, as in the paper)

Each axis is a tuple of (label, overrides) values; a point is one value of every axis, times
`num_seeds` seeds. Overrides are `--config.` paths of the base config, so every point is also
one `python launch.py` command (`--print_commands`).

Seed s of every point shares the data order and, where parameter shapes agree (relu/tanh, LRN
on/off), the initial weights and dropout keys (all derive from config.seed), so each effect is
paired by seed (and by test image): intervals resample seeds and test images together, epochs to
a training error count the runs that never reach it, and every grid's verdicts are
Holm-corrected (alexnet_jax/tools/report.py). An axis's effects are each value against its first
unless the grid lists its `contrasts` (ablated, baseline). More seeds narrow the intervals:
`--config.num_seeds=10`.
"""

import importlib.util
import pathlib

import ml_collections


def _load_sibling(name: str):
    """A config file beside this one, by path: config files are loaded by path (config_flags,
    the sweep's base), so `configs` need not be importable from where the sweep runs."""
    spec = importlib.util.spec_from_file_location(f'_{name}_config',
                                                  pathlib.Path(__file__).with_name(f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


alexnet = _load_sibling('alexnet')

# The paper's numbers, to print beside ours (test error deltas in points; ImageNet unless noted).
PAPER = {
    'default': 'LRN: -1.4 top-1 / -1.2 top-5 points (ImageNet); 13% -> 11% CIFAR-10 test error. '
               'ReLU: ~6x fewer iterations than tanh to 25% CIFAR-10 training error (Fig. 1).',
    'pool': 'Overlapping pooling: -0.4 top-1 / -0.3 top-5 points.',
    'groups': 'Two-GPU (grouped) net vs one GPU with half the kernels: -1.7 top-1 / -1.2 top-5.',
    'dropout': 'Without dropout the net overfits substantially; dropout ~doubles the iterations '
               'to converge.',
    'fig1': 'ReLU reaches 25% training error on CIFAR-10 ~6x faster than tanh.',
}
PAPER['fig1_cifar10'] = PAPER['fig1']
# Paper deltas of ImageNet top-1 error (ablated minus baseline, points) for the bar chart,
# by the ablated value's label.
PAPER_TOP1_DELTA = {'nolrn': 1.4, 'pool2s2': 0.4, 'half': 1.7}
# Paper ratios of epochs to 25% training error (ablated / baseline; Fig. 1: tanh / ReLU ~6x).
PAPER_EPOCHS_RATIO = {'tanh': 6.0}
# Fig. 1's learning-rate search: a log grid in ~2x steps from cuda-convnet's epsW=0.001 for this
# net (layer-params-18pct.cfg / -80sec.cfg); a choice at an edge extends it (lr_search.py).
FIG1_LR_RATES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
# Fig. 1 depends on the initialisation: each of these is its own grid, `fig1` the protocol's own
# (cuda-convnet's code, with which the paper's Fig. 1 was made).
# He's init preserves the variance of a unit-variance input: its grid also divides the centred
# pixels by their standard deviation (DIGITS_FIG1_PIXEL_STD), the others feed them as cuda-convnet
# did.
FIG1_INITS = {'fig1': {'model.init_scheme': 'cuda_convnet'},
              'fig1_paper_init': {'model.init_scheme': 'paper'},
              'fig1_he_init': {'model.init_scheme': 'he',
                               'data.stddev_rgb': (alexnet.DIGITS_FIG1_PIXEL_STD,) * 3}}
# LRN's alpha on the digits' [-1, 1] pixels, strongest first. 1e-4 x 127.5^2 is the paper's
# alpha rescaled to these pixels (LRN(s a; k, alpha) = s LRN(a; k, alpha s^2) for the same
# weights); under He init the activations' scale comes from the init, so what tells how much LRN
# normalises is its divisor's measured spread, not the pixel scale. At init on the first
# evaluation batch the ReLU net's LRN1 spread p99 / p1 is 6.3 / 1.9 / 1.12 at these three (mean
# over the published grid's seeds); the paper's net at init on photos has ~1.1-1.2
# (docs/ablations.md).
LRN_ALPHA_UNIT_PIXELS = 1e-4 * 127.5 ** 2
LRN_ALPHAS = {'hi': LRN_ALPHA_UNIT_PIXELS, 'mid': LRN_ALPHA_UNIT_PIXELS / 8,
              'lo': LRN_ALPHA_UNIT_PIXELS / 64}


def _axis(*values):
    return tuple((label, tuple(sorted(overrides.items()))) for label, overrides in values)


GROUPS2 = {'model.groups': 2, 'model.conv_scale': (1.0, 1.0, 1.0, 1.0, 1.0)}
HALF = {'model.groups': 1, 'model.conv_scale': (0.5, 0.5, 0.5, 0.5, 1.0)}
GRIDS = {
    'default': (
        _axis(('relu', {'model.activation': 'relu'}), ('tanh', {'model.activation': 'tanh'})),
        # lrn<strength>: LRN at alpha LRN_ALPHAS[strength]; matched<strength>: its control, a
        # constant divisor equal to that LRN's scale at init (models.lrn_layer).
        _axis(('nolrn', {'model.lrn': False, 'model.lrn_divisor': 'local'}),
              *((f'{arm}{strength}', {'model.lrn': True, 'model.lrn_divisor': divisor,
                                      'model.lrn_alpha': alpha})
                for strength, alpha in LRN_ALPHAS.items()
                for arm, divisor in (('lrn', 'local'), ('matched', 'matched')))),
    ),
    'pool': (
        _axis(('pool3s2', {'model.pool_window': 3, 'model.pool_stride': 2}),
              ('pool2s2', {'model.pool_window': 2, 'model.pool_stride': 2})),
    ),
    'groups': (
        # Footnote 3 of the paper: the one-GPU net halves every conv layer's kernels except
        # conv5's, and keeps the FC layers, so both nets have about the same parameters.
        _axis(('groups2', GROUPS2), ('half', HALF)),
    ),
    'dropout': (
        _axis(('dropout', {'model.dropout_rate': 0.5}), ('nodropout', {'model.dropout_rate': 0.0})),
    ),
    'fig1': (
        _axis(('relu', {'model.activation': 'relu'}), ('tanh', {'model.activation': 'tanh'})),
    ),
}
# The same on two devices, the grouped net's columns one per device (config.model_parallel=2,
# as the paper's two GPUs), the half net data parallel over both: train_seconds compares them.
GRIDS['groups_columns'] = (_axis(('groups2', {**GROUPS2, 'model_parallel': 2}),
                                 ('half', {**HALF, 'model_parallel': 1})),)
PAPER['groups_columns'] = PAPER['groups'] + (' The two-GPU net "takes slightly less time to '
                                             'train than the one-GPU net".')
GRIDS['fig1_cifar10'] = GRIDS['fig1']
# The effects each grid reports, (ablated, baseline) by label, where not "each value vs the
# axis's first": LRN off vs on and the matched control vs LRN, at each strength.
CONTRASTS = {'default': tuple((other, f'lrn{strength}') for strength in LRN_ALPHAS
                              for other in ('nolrn', f'matched{strength}'))}
for _name in FIG1_INITS:
    GRIDS[_name] = GRIDS['fig1']
    PAPER[_name] = PAPER['fig1']

# A grid's digits runs evaluate once, at the end: no table or figure reads the per-epoch
# validation pass (they use the test split and the training error), the cosine schedule does not
# look at it, and on digits it and the per-run learning_curves.png were ~15% of a run's wall
# time. The training error is logged every 2 of an epoch's 19 steps (as in digits_fig1), so
# epochs to 25% training error is resolved to ~0.1 epoch.
SWEEP_RUN = {'train.eval_every_steps': 0, 'train.plot': False, 'train.log_every_steps': 2}
# The digits grids' runs: also LRN's alpha rescaled to [-1, 1] pixels (the default grid sweeps
# it). (Another base, e.g. configs/alexnet.py:cifar10 on 0-255 pixels, takes SWEEP_RUN alone:
# --config.base_overrides.)
DIGITS_RUN = {**SWEEP_RUN, 'model.lrn_alpha': LRN_ALPHA_UNIT_PIXELS}
# The base run of each grid: a config file and variant plus a few overrides.
BASES = {
    'default': ('configs/alexnet.py:digits', DIGITS_RUN),
    'pool': ('configs/alexnet.py:digits', DIGITS_RUN),
    'groups': ('configs/alexnet.py:digits', DIGITS_RUN),
    'groups_columns': ('configs/alexnet.py:digits', DIGITS_RUN),
    'dropout': ('configs/alexnet.py:digits', DIGITS_RUN),
    **{name: ('configs/alexnet.py:digits_fig1', init) for name, init in FIG1_INITS.items()},
    'fig1_cifar10': ('configs/alexnet.py:fig1_cifar10', {}),  # Needs CIFAR-10 prepared in TFDS.
}


def get_config(arg=None):
    grid = arg or 'default'
    if grid not in GRIDS:
        raise ValueError(f'Unknown ablation grid {grid!r}; choose one of {sorted(GRIDS)}.')
    c = ml_collections.ConfigDict()
    c.grid = grid
    c.base, overrides = BASES.get(grid, BASES['default'])  # A new grid: the digits base.
    c.base_overrides = tuple(sorted(overrides.items()))  # The grid's own: replaced if given.
    # Yours, on top of base_overrides (which they extend, not replace), e.g. a shorter run:
    #   --config.overrides="(('train.num_epochs', 2.0),)"
    c.overrides = ()
    c.axes = GRIDS[grid]
    c.contrasts = CONTRASTS.get(grid, ())  # () : each axis value vs the axis's first.
    c.num_seeds = 3             # Seeds first_seed .. first_seed + num_seeds - 1 for every point;
    c.first_seed = 0            # a replication takes new ones (e.g. first_seed=100).
    c.threshold = 0.25          # Training error for "steps to threshold" (Fig. 1: 25%) and the
    c.thresholds = (0.5, 0.25, 0.1)  # search; epochs to each of these are reported.
    # Fig. 1's protocol (alexnet_jax/tools/lr_search.py): each point first tries these rates with
    # lr_search_seeds seeds (1000, 1001, ...) and trains its seeds at the fastest. (): no search.
    c.lr_search_rates = FIG1_LR_RATES if grid.startswith('fig1') else ()
    # A rate chosen on a few seeds' luck is not the fastest usable rate: with 5 search seeds a
    # rate where 15% of runs fail shows a failure with probability 1 - 0.85^5 = 0.56 (2: 0.28).
    c.lr_search_seeds = 5
    c.paper = PAPER.get(grid, '')
    # The paper's numbers the report prints beside ours, by the ablated value's label.
    c.paper_top1_delta = dict(PAPER_TOP1_DELTA)
    c.paper_epochs_ratio = dict(PAPER_EPOCHS_RATIO)
    return c
