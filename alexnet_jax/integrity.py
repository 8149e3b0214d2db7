"""Per-leaf shape, dtype and crc32 of a saved pytree, checked on restore: orbax does not
checksum array data (a flipped byte restores silently, orbax-checkpoint 0.12.8). Leaves are
named by their '/'-joined key path ('params/conv1/kernel'), as existing workdirs store them.
"""

import zlib

import jax
import numpy as np


def leaves(tree) -> list:
    """[(path string, leaf)] in tree order."""
    return [(jax.tree_util.keystr(p, simple=True, separator='/'), leaf)
            for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _is_typed_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _host_array(leaf) -> np.ndarray:
    # New-style keys (jax.random.key) are saved as their key data.
    return np.asarray(jax.random.key_data(leaf) if _is_typed_key(leaf) else leaf)


def crc32(leaf, dtype: str) -> int:
    """crc32 of the leaf's bytes as `dtype` (the dtype it was saved in)."""
    a = _host_array(leaf)
    if str(a.dtype) != dtype:
        a = a.astype(dtype)
    return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def describe(tree, checksums: bool) -> dict:
    """{path: {'shape', 'dtype'[, 'crc32']}}; `tree` may be abstract (jax.ShapeDtypeStruct)."""
    out = {}
    for path, leaf in leaves(tree):
        if _is_typed_key(leaf):
            leaf = jax.random.key_data(leaf)
        if checksums or not hasattr(leaf, 'dtype'):  # Python scalars have no shape or dtype.
            leaf = _host_array(leaf)
        out[path] = {'shape': list(leaf.shape), 'dtype': str(leaf.dtype)}
        if checksums:
            out[path]['crc32'] = crc32(leaf, out[path]['dtype'])
    return out


def differences(saved: dict, target: dict) -> list[str]:
    """What keeps `saved` (a checkpoint's description) from restoring into `target`'s."""
    problems = [f'{p}: missing from the checkpoint' for p in sorted(target.keys() - saved.keys())]
    problems += [f'{p}: in the checkpoint, not in the model'
                 for p in sorted(saved.keys() - target.keys())]
    for p in sorted(saved.keys() & target.keys()):
        s, t = saved[p], target[p]
        if s['shape'] != t['shape']:
            problems.append(f'{p}: shape {tuple(s["shape"])} in the checkpoint, '
                            f'{tuple(t["shape"])} in the model')
        elif _floatish(s['dtype']) != _floatish(t['dtype']) or (
                _floatish(t['dtype']) and s['dtype'] != t['dtype']):
            problems.append(f'{p}: dtype {s["dtype"]} in the checkpoint, {t["dtype"]} in the model')
    return problems


def mismatches(tree, saved: dict) -> list[str]:
    """Paths of `tree` (as restored) whose crc32 differs from the one `saved` records."""
    return [path for path, leaf in leaves(tree)
            if crc32(leaf, saved[path]['dtype']) != saved[path]['crc32']]


def _floatish(dtype: str) -> bool:
    try:
        return bool(jax.dtypes.issubdtype(np.dtype(dtype), np.inexact))
    except TypeError:
        return 'float' in dtype
