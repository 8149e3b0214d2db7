"""The learning-rate search of Fig. 1's protocol: each grid point gets the rate that trains fastest.

The paper: "The learning rates for each network were chosen independently to make training as
fast as possible." For every point of the grid (e.g. relu, tanh) and every rate of
`sweep.lr_search_rates` (a log grid), one run per search seed trains in
ROOT/lr_search/<point>_lr<rate>/seed<k> (ordinary run dirs: resumable, failures recorded, as the
sweep's own points). The chosen rate is the fastest at which every search run reached `sweep.threshold`
training error (the fewest mean epochs), so a rate at a cliff, where some seeds never leave
chance, is not chosen over a slower rate that trains every seed; only if no rate trained every
search run, the fewest epochs with a run that never reached it counted at the run's full length
(a restricted mean); a rate where a run diverged is ruled out; ties go to the smaller rate.
If no run of any rate reaches it, the rate with the lowest final training error is taken and the
choice says so. A choice at an edge of the rates
tried is extended past that edge until it is bracketed (`run`). The search seeds (1000, 1001, ...)
are disjoint from the grid's seeds (0, 1, ...), so no reported run is the one its rate was
picked on. The choices go to ROOT/lr_search.json and ROOT/lr_search.md.
"""

import dataclasses
import math
import pathlib
import statistics

from alexnet_jax import records
from alexnet_jax.tools import grid

SEARCH_SEED0 = grid.SEARCH_SEED0
LR_FIELD = 'optim.learning_rate'


def enabled(sweep) -> bool:
    return bool(tuple(sweep.get('lr_search_rates', ())))


def search_points(sweep, rates: dict | None = None) -> dict:
    """{grid point name: {rate: [Point per search seed]}} for `rates` {point name: [rates]}
    (default: sweep.lr_search_rates for every point); a search Point is named
    <point>_lr<rate> and runs in root_of(ROOT)/<point>_lr<rate>/seed<k>."""
    out = {}
    for cell in (p for p in grid.expand(sweep) if p.seed == 0):
        out[cell.name] = {}
        for rate in (rates or {}).get(cell.name, sweep.lr_search_rates):
            out[cell.name][float(rate)] = [
                grid.Point(cell.labels + (f'lr{rate:g}',), seed, tuple(sorted(
                    {**dict(cell.overrides), 'seed': seed, LR_FIELD: float(rate)}.items())))
                for seed in range(SEARCH_SEED0, SEARCH_SEED0 + sweep.lr_search_seeds)]
    return out


def all_search_points(sweep, rates: dict | None = None) -> list:
    return [p for by_rate in search_points(sweep, rates).values() for ps in by_rate.values()
            for p in ps]


def root_of(root) -> pathlib.Path:
    return pathlib.Path(root) / 'lr_search'


@dataclasses.dataclass(frozen=True)
class Trial:
    rate: float
    epochs: list          # Epochs to the threshold per search seed (None: not reached / failed).
    final_error: list     # Last training error (epoch average) per search seed (None: failed).
    status: list
    length: float = math.inf  # Epochs a run trains: where one that never reached is censored.


def trials(sweep, root, rates: dict | None = None) -> dict:
    """{grid point name: [Trial per rate]}, read from the search runs' directories."""
    out = {}
    for name, by_rate in search_points(sweep, rates).items():
        out[name] = []
        for rate, points in sorted(by_rate.items()):
            t = grid.point_config(sweep, points[0]).train
            length = float(t.num_epochs)
            epochs, final, status = [], [], []
            for p in points:
                workdir = root_of(root) / p.dirname
                row = grid.result_row(sweep, p, workdir)
                curve = grid.training_error_curve(workdir)
                done = row['status'] == 'done'
                epochs.append(row['epochs_to_threshold'] if done and row['epochs_to_threshold'] != ''
                              else None)
                final.append(curve[-1][2] if done and curve else None)
                status.append(row['status'])
                if done and curve and t.num_steps is not None:
                    length = curve[-1][1]
            out[name].append(Trial(rate, epochs, final, status, length))
    return out


def choose(trial_list: list, threshold: float) -> dict:
    """The fastest rate (module doc): {'rate', 'epochs', 'reached', 'why'}."""
    scored = [(_score(t), t.rate) for t in trial_list if _score(t) is not None]
    if not scored:
        return {'rate': None, 'epochs': None, 'reached': False,
                'why': 'every rate failed: widen config.lr_search_rates'}
    (missed, value), rate = min(scored)  # Ties go to the smaller rate.
    if missed < 2:
        edge = rate in (min(t.rate for t in trial_list), max(t.rate for t in trial_list))
        return {'rate': rate, 'epochs': value, 'reached': True,
                'why': f'fewest epochs to {threshold:.0%} training error'
                       + (' with every search run reaching it' if missed == 0 else
                          ' (no rate trained every search run to it: censored mean)')
                       + (' (at the edge of the grid: extend lr_search_rates)' if edge else '')}
    return {'rate': rate, 'epochs': None, 'reached': False,
            'why': f'no rate reached {threshold:.0%}: lowest final training error '
                   f'({value:.1%}); raise train.num_epochs'}


MAX_EXTENSIONS = 4  # Rates a point's search may add past an edge of the grid.


def run(sweep, root, run_seeds) -> dict:
    """Runs (or resumes) the search with `run_seeds(sweep, points, root)` (a rate's search seeds
    together, as a grid point's); returns the choices {point name: choose(...)} and writes
    lr_search.json / .md in `root`. A choice at an edge of its point's rates gets the next rate
    past it (`past_edge`) until every choice is bracketed, or MAX_EXTENSIONS rates were added."""
    rates = {name: sorted(map(float, sweep.lr_search_rates)) for name in search_points(sweep)}
    for _ in range(MAX_EXTENSIONS + 1):
        for by_rate in search_points(sweep, rates).values():
            for points in by_rate.values():
                run_seeds(sweep, points, root_of(root))
        found = trials(sweep, root, rates)
        choices = {name: choose(t, sweep.threshold) for name, t in found.items()}
        extend = {name: past_edge(found[name], c['rate']) for name, c in choices.items()}
        extend = {name: rate for name, rate in extend.items() if rate is not None}
        if not extend:
            break
        for name, rate in extend.items():
            rates[name] = sorted(rates[name] + [rate])
    write(sweep, found, choices, root)
    return choices


def past_edge(trial_list: list, chosen: float | None) -> float | None:
    """The next rate past the edge of the rates tried where `chosen` sits, at the grid's own
    ratio (at most a decade: 0.1, 0.3 -> 0.9), or None: when it lies inside them, or when it only
    ties its inner neighbour (no trend points past the edge)."""
    by_rate = {t.rate: t for t in trial_list}
    rates = sorted(by_rate)
    if chosen is None or len(rates) < 2 or rates[0] < chosen < rates[-1]:
        return None
    edge, inner = (rates[-1], rates[-2]) if chosen == rates[-1] else (rates[0], rates[1])
    here, there = _score(by_rate[edge]), _score(by_rate[inner])
    if there is not None and not here < there:
        return None
    ratio = min(max(edge / inner, inner / edge), 10.0)
    return float(f'{edge * ratio if edge > inner else edge / ratio:.2g}')


def _score(trial):
    """How good a rate is (lower is better): (0, mean epochs) if every search seed reached the
    threshold, (1, the censored mean epochs) if some did, else (2, mean final training error);
    None if a run diverged (a rate that diverges for some seeds is not one to train every seed
    at)."""
    if 'failed' in trial.status or None in trial.final_error:
        return None
    if all(e is not None for e in trial.epochs):
        return (0, censored_mean(trial))
    if any(e is not None for e in trial.epochs):
        return (1, censored_mean(trial))
    return (2, statistics.fmean(trial.final_error))


def censored_mean(trial) -> float:
    """Mean epochs to the threshold, a run that never reached it at its length."""
    return statistics.fmean(trial.length if e is None else e for e in trial.epochs)


def searched(sweep) -> dict:
    """What defines a search (beside each point's own definition): its rates and seeds."""
    return {'rates': sorted(float(r) for r in sweep.lr_search_rates),
            'seeds': int(sweep.lr_search_seeds)}


def check_recorded(sweep, root, points: list) -> None:
    """Before a search reruns: refuses (grid.DefinitionError, one line) another search than
    ROOT/lr_search.json records, and a grid point trained with another definition at the
    recorded rate; so a refused rerun rewrites no lr_search.json/md."""
    path = pathlib.Path(root) / 'lr_search.json'
    if not path.exists():
        return
    recorded = read(path)
    ours = searched(sweep)
    for name, entry in recorded.items():
        theirs = entry.get('searched')  # (Absent in a record from before this check.)
        if theirs is not None and theirs != ours:
            raise grid.DefinitionError(
                f'{path} was searched with rates {theirs["rates"]} and {theirs["seeds"]} seed(s) '
                f'for {name}; this grid asks {ours["rates"]} and {ours["seeds"]}: its chosen rates '
                f'and trained points would no longer match. Set config.lr_search_rates / '
                f'lr_search_seeds back, or use a new --workdir.')
    chosen = {name: entry['chosen'] for name, entry in recorded.items()}
    if all(c.get('rate') is not None for c in chosen.values()) and set(chosen) >= {
            p.name for p in points}:
        for p in apply(points, chosen):
            grid.check_definition(sweep, p, pathlib.Path(root) / p.name, record=False)


def apply(points: list, choices: dict) -> list:
    """The grid's points with each one's chosen rate among its overrides."""
    out = []
    for p in points:
        rate = choices[p.name]['rate']
        if rate is None:
            raise ValueError(f'learning-rate search found no usable rate for {p.name}: '
                             f'{choices[p.name]["why"]}')
        overrides = tuple(sorted({**dict(p.overrides), LR_FIELD: rate}.items()))
        out.append(grid.Point(p.labels, p.seed, overrides))
    return out


def read(path) -> dict:
    """lr_search.json: {point name: {'chosen': {'rate', ...}, 'searched', 'trials'}}."""
    recorded = records.read(path, {})
    for name, entry in recorded.items():
        records.check(entry, {'chosen': dict}, path, repr(name))
        records.check(entry['chosen'], {'rate': records.NUMBER_OR_NULL, 'why': str},
                      path, f'{name!r}/chosen')
    return recorded


def write(sweep, found: dict, choices: dict, root) -> str:
    """lr_search.json (every trial and choice) and lr_search.md (the table); returns the table."""
    root = pathlib.Path(root)
    record = {name: {'chosen': choices[name], 'searched': searched(sweep),
                     'trials': [dataclasses.asdict(t) for t in found[name]]} for name in found}
    records.write(root / 'lr_search.json', record, indent=2)
    seeds = ', '.join(str(SEARCH_SEED0 + k) for k in range(sweep.lr_search_seeds))
    text = (f'# Learning-rate search (`{sweep.grid}`, search seeds {seeds})\n\n'
            + table(sweep, found, choices))
    with records.replacing(root / 'lr_search.md') as tmp:
        tmp.write_text(text)
    return text


def from_record(recorded: dict) -> tuple:
    """(found, choices) as `write` took them, from lr_search.json's contents."""
    return ({name: [Trial(**t) for t in entry['trials']] for name, entry in recorded.items()},
            {name: entry['chosen'] for name, entry in recorded.items()})


def table(sweep, found: dict, choices: dict) -> str:
    """lr_search.md's table: epochs to the threshold per rate and search seed, the score, the
    choice."""
    by_rate = {name: {t.rate: t for t in trial_list} for name, trial_list in found.items()}
    all_rates = sorted({r for rates in by_rate.values() for r in rates})
    lines = [f'Epochs to {sweep.threshold:.0%} training error per rate and search seed ("-": '
             f'not reached in the run\'s epochs; "failed": diverged); then the score: their '
             f'mean with a run that never reached counted at its length (censored), and the '
             f'mean final training error in brackets.', '',
             '| point | ' + ' | '.join(f'lr {r:g}' for r in all_rates) + ' | chosen | why |',
             '|---|' + '---|' * (len(all_rates) + 2)]
    for name, trial_list in found.items():
        cells = []
        for t in (by_rate[name].get(r) for r in all_rates):
            if t is None:  # A rate another point's search added.
                cells.append('')
                continue
            each = ', '.join('failed' if st == 'failed' else '-' if e is None else f'{e:.2f}'
                             for e, st in zip(t.epochs, t.status))
            finals = [f for f in t.final_error if f is not None]
            f = f'{statistics.fmean(finals):.1%}' if finals else 'failed'
            cells.append(f'{each}: {censored_mean(t):.2f} ({f})')
        rate = choices[name]['rate']
        lines.append(f'| {name} | ' + ' | '.join(cells) +
                     f' | {"-" if rate is None else f"{rate:g}"} | {choices[name]["why"]} |')
    return '\n'.join(lines) + '\n'
