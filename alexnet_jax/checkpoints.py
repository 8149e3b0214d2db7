"""A workdir's checkpoints (orbax), their integrity, and the rule of what may resume them.

State goes in and comes out unreplicated: orbax cannot save pmap-replicated arrays as such.
A step directory (orbax `Composite`) holds `state/` (the pytree), `meta/` (the caller's JSON),
`metrics/` (keep-best's ranking) and `checkpoint_info/`, ours: the one record of what the step
fits (config fingerprint, topology, each leaf's shape, dtype and crc32; the crc32s because
orbax does not checksum array data). A step is written to `<step>.orbax-checkpoint-tmp` and
renamed when complete, so a killed save never counts as a step.
"""

import atexit
import json
import logging as pylogging
import math
import os
import time
import weakref
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util

from alexnet_jax import errors
from alexnet_jax import integrity
from alexnet_jax import workdirs

FORMAT_VERSION = 1
_INFO = 'checkpoint_info'
_ITEMS = ('state', 'meta', _INFO)


class ConfigMismatchError(errors.UserError, ValueError):
    """The workdir's checkpoints do not fit the config; the message names the fields."""


class CorruptCheckpointError(errors.UserError, RuntimeError):
    """A checkpoint (or every checkpoint in a workdir) cannot be restored."""


def config_fingerprint(config, on_device: bool | None = None) -> dict:
    """What a checkpoint must share with the config that resumes it (`check_fits`): the
    fields that shape the state (model, input, optimizer, loss scaling, frozen layers) and,
    under 'stream', the RESUME_FIXED fields and, when the run knows it, where its training data
    resolved to (`on_device`: data.device_resident='auto' decides by the data's size)."""
    model = config.model.to_dict() if hasattr(config.model, 'to_dict') else dict(config.model)
    fingerprint = {'model': _jsonable(model)}
    optim = {k: config.optim[k] for k in ('optimizer', 'loss_scale')
             if 'optim' in config and k in config.optim}
    if optim:
        fingerprint['optim'] = _jsonable(optim)
    if 'freeze' in config:
        fingerprint['freeze'] = list(config.freeze)
    if 'data' in config and 'image_size' in config.data:
        fingerprint['input_shape'] = [config.data.image_size, config.data.image_size, 3]
    fingerprint['stream'] = {field: _jsonable(_get(config, field)) for field in RESUME_FIXED}
    if on_device is not None:
        fingerprint['stream'][ON_DEVICE] = bool(on_device)
    fingerprint['recipe'] = {field: _jsonable(_get(config, field)) for field in RECIPE_FIXED}
    return fingerprint


# Fields a resumed run may not change: the data stream (which examples, in which order, in
# which batches) and the random numbers are functions of them and of the step. Everything else
# (num_steps/num_epochs, learning rate, log/eval/checkpoint intervals, ...) may change.
RESUME_FIXED = ('seed', 'train.batch_size', 'data.name', 'data.train_split', 'data.folder_root',
                'data.shuffle_buffer', 'data.fake_train_examples', 'data.device_resident')
# Fields a resumed run may not change either: the optimizer's update and the preprocessing of
# every training image are functions of them (a resume that took other values would train a
# run that its recorded config no longer describes).
RECIPE_FIXED = ('optim.schedule', 'optim.momentum', 'optim.nesterov', 'optim.weight_decay', 'optim.weight_decay_mask',
                'optim.b1', 'optim.b2', 'optim.eps', 'optim.grad_clip_norm',
                'optim.lars_trust_coefficient', 'optim.lars_eps', 'optim.lars_trust_ratio_mask',
                'data.mean_rgb', 'data.mean_image', 'data.stddev_rgb', 'data.random_flip',
                'data.train_augment',
                'data.pad', 'data.pca_lighting', 'data.crop_area_range',
                'data.aspect_ratio_range', 'data.resize_size')


ON_DEVICE = 'data.on_device'  # Not a config field: what data.device_resident resolved to.

def _get(config, field: str):
    for key in field.split('.'):
        config = config.get(key) if hasattr(config, 'get') else None
    return config


def topology() -> dict:
    """The processes and devices a run trains on (saved in each step's checkpoint_info)."""
    return {'processes': jax.process_count(), 'devices': jax.device_count()}


def check_fits(info: dict, fingerprint: dict, where, target: dict | None = None) -> None:
    """The one answer to "may this config resume this checkpoint", from its checkpoint_info.

    Raises ConfigMismatchError with one line per differing field: a model or optimizer field
    (the state's shapes), a RESUME_FIXED field (the data stream and random numbers), a
    RECIPE_FIXED one (the update rule, the preprocessing), or, when
    the fields agree, a leaf whose shape or dtype differs from `target` (a code change). A
    change of topology is allowed and logged: the global batches do not depend on the device
    count, but dropout masks (drawn per device) and the float summation order do, and another
    host count splits the data differently too.
    """
    theirs, ours = (traverse_util.flatten_dict(d, sep='.') for d in (info['fingerprint'],
                                                                      fingerprint))
    if ours.keys() ^ theirs.keys():  # A field added or removed by a code change.
        logging.warning('Config fingerprint fields %s are in only one of the config and %s.',
                        sorted(ours.keys() ^ theirs.keys()), where)
    causes = [_cause(k, ours, theirs) for k in sorted(ours.keys() & theirs.keys())
              if ours[k] != theirs[k]]
    fix = 'Set those values back to resume, or use a new --workdir for this config.'
    if not causes and target is not None:  # Same fields, other shapes: a code change.
        causes, fix = integrity.differences(info['leaves'], target), 'Use a new --workdir.'
    if causes:  # One line (a CLI prints it so): causes by '; ', then the fix as a sentence.
        more = f'; ... and {len(causes) - 10} more' if len(causes) > 10 else ''
        raise ConfigMismatchError(f'{where} does not fit this config: '
                                  + '; '.join(causes[:10]) + more + '. ' + fix)
    was, now = info.get('topology'), topology()
    if was and was != now and (str(was), str(now)) not in _TOPOLOGY_LOGGED:
        _TOPOLOGY_LOGGED.add((str(was), str(now)))  # Once a process, not once per seed.
        what = ('the same batches; dropout masks (drawn per device) and float summation order '
                'differ' if was['processes'] == now['processes'] else
                'each host reads another share of the data, so the batches differ too; so do '
                'dropout masks and float summation order')
        logging.warning('Resuming %s on %d process(es) / %d device(s), trained on %d / %d: %s, '
                        'so the run will not match an uninterrupted one.', where,
                        now['processes'], now['devices'], was['processes'], was['devices'], what)


_TOPOLOGY_LOGGED = set()


_DEPENDS = {'stream': 'the data stream and the random numbers depend on it',
            'recipe': 'the updates or the preprocessing of the run so far depend on it'}


def _cause(key: str, ours: dict, theirs: dict) -> str:
    """One differing fingerprint field (flattened `key`) as check_fits says it."""
    section, _, field = key.partition('.')
    if field == ON_DEVICE:
        where = {True: 'device-resident data', False: 'tf.data batches'}
        return (f'config.data.device_resident={ours["stream.data.device_resident"]!r} resolves '
                f'to {where[ours[key]]} here, the run so far trained on {where[theirs[key]]} '
                f'(data.device_max_bytes and data.train_augment decide \'auto\'): '
                f'{_DEPENDS[section]}')
    if section in _DEPENDS:
        return f'config.{field}={ours[key]!r} (it was trained with {theirs[key]!r}): ' \
               f'{_DEPENDS[section]}'
    return f'{key}: workdir has {theirs[key]!r}, config has {ours[key]!r}'


class _UnrankedSaveFilter(pylogging.Filter):
    """Drops orbax's "did not provide metrics" warning: with keep-best, the periodic saves
    between evaluations are unranked on purpose (each new best is saved at its evaluation)."""

    def filter(self, record):
        return 'did not provide metrics' not in str(record.msg)


pylogging.getLogger('absl').addFilter(_UnrankedSaveFilter())  # orbax logs through absl.


def check_keep(keep) -> None:
    """config.train.keep_checkpoints' one rule (the Checkpointer's, and train's before any work)."""
    errors.check(isinstance(keep, int) and keep >= 1, 'train.keep_checkpoints',
                 f'must keep at least the latest checkpoint (>= 1), got {keep!r}.')


class Checkpointer:
    """orbax CheckpointManager under `workdir/checkpoints`: the last `keep` steps plus the best
    by `metrics[best_metric]`. An async save returns once the arrays are copied; the next save,
    `wait`, `close` and interpreter exit wait for it. Every process calls save and restore."""

    def __init__(self, workdir: str, *, config_fingerprint: dict, keep: int = 3,
                 best_metric: str | None = 'val_top1', async_save: bool = True,
                 best_mode: str = 'max'):
        check_keep(keep)
        if best_mode not in ('max', 'min'):
            raise ValueError(f"best_mode={best_mode!r}: must be 'max' or 'min'.")
        self.workdir = epath.Path(workdir)
        self.directory = workdirs.checkpoint_dir(self.workdir)
        self.fingerprint = _jsonable(config_fingerprint)
        self.best_metric = best_metric
        self._async = async_save
        self._closed = False
        self._barriers = 0
        self._fits_checked = False  # Against the latest step: by `restore`, or the first save.
        self._saved_once = False
        _warn_if_local_multihost(str(workdir))
        self._warn_about_unfinished_saves()

        sign = 1.0 if best_mode == 'max' else -1.0
        policies = [ocp.checkpoint_managers.LatestN(n=keep)]
        best_fn = None
        if best_metric:
            worst = -sign * math.inf   # For checkpoints ranked by another metric in the past.
            best_fn = lambda m: m.get(best_metric, worst)  # noqa: E731 (sorted with best_mode)
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: sign * best_fn(m), n=1,
                keep_checkpoints_without_metrics=False))  # Else every periodic save stays.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            best_fn=best_fn, best_mode=best_mode,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=_ITEMS)
        # Exit waits for a save in flight even if the caller forgets close().
        ref = weakref.ref(self)
        atexit.register(lambda: ref() is not None and ref().close())

    # -- queries -----------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def best_step(self) -> int | None:
        """The retained step with the best `best_metric`; None if none was saved with it."""
        return self._mgr.best_step() if self.best_metric else None

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    # -- save --------------------------------------------------------------------------------

    def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> None:
        """Saves a host pytree and a JSON dict as `step`, unless that step is saved already;
        `metrics[best_metric]`, when finite, ranks it for keep-best."""
        step = int(step)
        if step in self._mgr.all_steps():
            logging.info('Checkpoint for step %d already exists in %s; not saving again.',
                         step, self.directory)
            return
        latest = self._mgr.latest_step()
        if not self._fits_checked and latest is not None:  # Never into another config's workdir.
            try:
                info = _read_info(self._mgr, latest)
            except Exception:  # pylint: disable=broad-except  (unreadable: `restore`'s business)
                info = None
            if info is not None:
                check_fits(info, self.fingerprint, self._step_dir(latest))
        self._fits_checked = True
        self._mgr.check_for_errors()  # A failed earlier async save stops the run here.
        meta = _json_copy(meta, 'meta')   # A copy: the caller may change its dict meanwhile.
        info = {'format': FORMAT_VERSION, 'step': step, 'fingerprint': self.fingerprint,
                'topology': topology(), 'saved_at': time.time(),
                'leaves': integrity.describe(state, checksums=True)}
        saved = self._mgr.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta),
                                    **{_INFO: ocp.args.JsonSave(info)}),
            metrics=self._ranking_metrics(step, metrics))
        if not saved:
            logging.info('Skipped checkpoint for step %d (latest saved step is %s).', step,
                         self._mgr.latest_step())
        elif not self._async or not self._saved_once:
            # The first save is waited for and checked, so a save that cannot work (a bad
            # path, no permission, no space) stops the run now, not one interval later.
            self.wait()
        self._saved_once = self._saved_once or bool(saved)

    def _ranking_metrics(self, step, metrics):
        if not self.best_metric or not metrics or self.best_metric not in metrics:
            return None
        value = float(np.asarray(metrics[self.best_metric]))
        if not math.isfinite(value):
            logging.warning('Step %d: %s=%s is not finite; not ranking this checkpoint.',
                            step, self.best_metric, value)
            return None
        return {self.best_metric: value}

    def wait(self) -> None:
        """Blocks until the save in flight (if any) is on disk; raises if it failed."""
        self._mgr.wait_until_finished()
        self._mgr.check_for_errors()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._mgr.wait_until_finished()
        self._mgr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- restore -----------------------------------------------------------------------------

    def restore(self, target_state) -> tuple[Any, dict] | None:
        """(state, meta) of the newest intact step in `target_state`'s structure, or None for
        no checkpoint. A step that cannot be read or fails its checksums is moved to
        `checkpoints_corrupt/` and the previous one tried; ConfigMismatchError if the config
        does not fit (`check_fits`), CorruptCheckpointError if no step can be restored."""
        steps = sorted(self._mgr.all_steps(), reverse=True)
        if not steps:
            return None
        target = integrity.describe(target_state, checksums=False)
        failures = []
        for step in steps:
            try:
                state, meta = self._restore_step(step, target_state, target)
            except ConfigMismatchError:
                raise
            except Exception as e:  # pylint: disable=broad-except  (any failure = unusable)
                reason = f'{type(e).__name__}: {_short(e)}'
                failures.append((step, reason))
                older = [s for s in steps if s < step]
                logging.warning('Checkpoint %s is corrupt or half-written (%s); %s.',
                                self._step_dir(step), reason,
                                f'falling back to step {older[0]}' if older else
                                'no older checkpoint to fall back to')
                continue
            if failures:
                self._quarantine([s for s, _ in failures])
            logging.info('Restored checkpoint %s.', self._step_dir(step))
            return state, meta
        raise CorruptCheckpointError(
            f'None of the {len(steps)} checkpoint(s) in {self.directory} can be restored:\n  '
            + '\n  '.join(f'step {s}: {r}' for s, r in failures)
            + '\nMove that directory aside to start over, or use a new --workdir.')

    def _restore_step(self, step, target_state, target):
        info = _read_info(self._mgr, step)
        check_fits(info, self.fingerprint, self._step_dir(step), target)
        self._fits_checked = True
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
        return _restore_checked(self._mgr, step, ocp.args.StandardRestore(abstract),
                                info['leaves'], meta=True)

    def _quarantine(self, steps):
        """Moves unreadable steps (all newer than the restored one) out of orbax's sight."""
        if jax.process_index() == 0:
            dest_root = workdirs.corrupt_dir(self.workdir)
            dest_root.mkdir(parents=True, exist_ok=True)
            for step in steps:
                dest = dest_root / f'{step}-{int(time.time())}'
                try:
                    self._step_dir(step).rename(dest)
                    logging.warning('Moved corrupt checkpoint %s to %s.', self._step_dir(step), dest)
                except OSError as e:
                    logging.warning('Could not move corrupt checkpoint %s aside: %s',
                                    self._step_dir(step), e)
        self._barriers += 1  # Barrier names must be unique and equal on all processes.
        ocp.multihost.sync_global_processes(f'alexnet_jax:quarantine:{self._barriers}')
        self._mgr.reload()

    def _warn_about_unfinished_saves(self):
        """Names the tmp dirs of saves killed part way; orbax then deletes them."""
        if not self.directory.exists():
            return
        try:
            leftovers = ocp.step.all_temporary_paths(self.directory)
        except Exception as e:  # pylint: disable=broad-except  (a warning must not stop a run)
            logging.warning('Could not list unfinished checkpoint saves in %s: %s',
                            self.directory, e)
            return
        for tmp in leftovers:
            logging.warning('Ignoring %s: a checkpoint save that never completed (process '
                            'killed mid-write?). It is not a valid checkpoint and will be removed; '
                            'resuming from the latest complete one.', tmp.get())

    def _step_dir(self, step) -> epath.Path:
        return self.directory / str(step)


# -- reading a step: Checkpointer.restore and the tools' load_variables --------------------------

def _read_info(mgr, step) -> dict:
    info = mgr.restore(step, args=ocp.args.Composite(**{_INFO: ocp.args.JsonRestore()}))[_INFO]
    if info.get('format') != FORMAT_VERSION:
        raise CorruptCheckpointError(f'unknown checkpoint format {info.get("format")!r}')
    if 'topology' not in info:  # Saved before 2026-12-02: stream and topology were in meta.
        meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
        if 'fixed' in meta:
            info['fingerprint']['stream'] = meta['fixed']
        info['topology'] = meta.get('topology')
    return info


def _restore_checked(mgr, step, state_args, saved: dict, meta: bool):
    """(state, meta or None) of `step`, every array checked against its crc32 in `saved`."""
    items = {'state': state_args, **({'meta': ocp.args.JsonRestore()} if meta else {})}
    restored = mgr.restore(step, args=ocp.args.Composite(**items))
    bad = integrity.mismatches(restored['state'], saved)
    if bad:
        raise CorruptCheckpointError(
            f'checksum mismatch in {len(bad)} array(s): {", ".join(bad[:5])}')
    return restored['state'], restored['meta'] if meta else None


# -- what tools read: a training workdir or a converted checkpoint (tools/convert.py) ----------

def load_variables(directory, step: int | None = None):
    """(config, {'params'[, 'batch_stats']}) of DIR's latest (or given) step, whatever state
    was saved (a conversion's or a TrainState), checked against their crc32s."""
    config = workdirs.read_config(directory)
    ckpt_dir = workdirs.checkpoint_dir(directory)
    mgr = ocp.CheckpointManager(ckpt_dir, item_names=_ITEMS,  # Reads only: no create, no cleanup.
                                options=ocp.CheckpointManagerOptions(create=False))
    try:
        step = mgr.latest_step() if step is None else step
        if step is None:
            raise workdirs.WorkdirError(f'{directory} has no checkpoint in {ckpt_dir}; train '
                                        'there first or pass another directory.')
        wanted = {p: v for p, v in _read_info(mgr, step)['leaves'].items()
                  if p.split('/')[0] in ('params', 'batch_stats')}
        if not wanted:
            raise workdirs.WorkdirError(f'step {step} in {ckpt_dir} holds no params: not the '
                                        'checkpoint of a model; pass a training workdir or a '
                                        'converted checkpoint.')
        target = traverse_util.unflatten_dict(
            {p: jax.ShapeDtypeStruct(tuple(v['shape']), np.dtype(v['dtype']))
             for p, v in wanted.items()}, sep='/')
        state, _ = _restore_checked(mgr, step, ocp.args.PyTreeRestore(
            item=target, partial_restore=True), wanted, meta=False)
    except CorruptCheckpointError as e:
        raise CorruptCheckpointError(f'checkpoint step {step} in {ckpt_dir} is corrupt ({e}); '
                                     'pass an intact step or directory.') from None
    except errors.UserError:
        raise
    except Exception as e:  # pylint: disable=broad-except  (any failure: an unreadable step)
        raise CorruptCheckpointError(f'cannot read a checkpoint from {ckpt_dir}: '
                                     f'{type(e).__name__}: {" ".join(_short(e).split())}') from None
    finally:
        mgr.close()
    return config, jax.tree.map(np.asarray, state)


# -- small helpers ---------------------------------------------------------------------------------

def _json_default(x):
    if isinstance(x, (np.generic, jax.Array)) and np.ndim(x) == 0:
        return np.asarray(x).item()
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    raise TypeError(f'{type(x).__name__} is not JSON serializable')


def _json_copy(obj, name):
    try:
        return json.loads(json.dumps(obj, default=_json_default))
    except (TypeError, ValueError) as e:
        raise TypeError(f'Checkpoint {name} must be JSON-serializable: {e}') from e


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


def _short(e: BaseException, limit: int = 300) -> str:
    s = str(e).split('[tensorstore_spec=')[0].strip()
    return s if len(s) <= limit else s[:limit] + '...'


def _warn_if_local_multihost(workdir: str):
    if jax.process_count() > 1 and not workdirs.is_url(workdir):
        logging.warning(
            'Running on %d processes with a local workdir %r: every host must see the same '
            'checkpoint directory. Use a shared file system (NFS) mounted at this path on all '
            'hosts, or a bucket (e.g. --workdir=gs://bucket/run).', jax.process_count(), workdir)
